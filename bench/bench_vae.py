"""Wan2.2 VAE benchmark: encode and decode of 121 frames at 704x1280, fp32 against bf16, full-size
random weights on one GPU. The bf16 decode is compared with the fp32 decode of the same latents
(PSNR over the [-1, 1] range), the bf16 encode with the fp32 encode (relative error).

    python bench/bench_vae.py [--frames 121 --height 704 --width 1280]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dit import timed  # noqa: E402
from full_size import full_size_vae  # noqa: E402

from wan.modules.vae2_2 import MEAN, STD  # noqa: E402


def measure(fn, repeats):
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out, seconds = timed(fn, repeats)
    return out.float(), seconds, torch.cuda.max_memory_allocated() / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator(device=device).manual_seed(0)
    f, h, w = args.frames, args.height, args.width
    # A smooth random video (upsampled noise), so the codec-like VAE sees image-like content.
    video = torch.nn.functional.interpolate(torch.rand(1, 3, f, h // 16, w // 16, generator=gen, device=device),
                                            size=(f, h, w), mode="trilinear") * 2 - 1
    latent = torch.randn(1, 48, (f - 1) // 4 + 1, h // 16, w // 16, generator=gen, device=device)
    scale = [torch.tensor(MEAN, device=device), 1.0 / torch.tensor(STD, device=device)]
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | {f}f {w}x{h}")
    print("| dtype | encode s | encode peak GB | decode s | decode peak GB | vs fp32 |")
    print("|---|---|---|---|---|---|")
    reference = {}
    variants = (("fp32", torch.float32, True, False), ("bf16 (NCDHW)", torch.bfloat16, False, False),
                ("bf16", torch.bfloat16, True, False), ("bf16, compiled decoder", torch.bfloat16, True, True))
    for name, dtype, channels_last, compiled in variants:
        vae = full_size_vae(device, dtype)
        if channels_last:  # what the Wan2_2_VAE wrapper does on the GPU
            vae.use_channels_last()
        if compiled:  # what --compile adds; the first (untimed) call of `timed` compiles
            vae.compile_decoder()
        z, enc_s, enc_peak = measure(lambda: vae.encode(video.to(dtype), scale), args.repeats)
        x, dec_s, dec_peak = measure(lambda: vae.decode(latent.to(dtype), scale).clamp(-1, 1), args.repeats)
        if dtype == torch.float32:
            reference = dict(z=z, x=x)
            versus = "-"
        else:
            psnr = 10 * torch.log10(4.0 / ((x - reference["x"]) ** 2).mean()).item()
            z_error = ((z - reference["z"]).norm() / reference["z"].norm()).item()
            versus = f"decode PSNR {psnr:.1f} dB, encode rel. error {z_error:.2e}"
        print(f"| {name} | {enc_s:.2f} | {enc_peak:.1f} | {dec_s:.2f} | {dec_peak:.1f} | {versus} |", flush=True)

        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
