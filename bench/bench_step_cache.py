"""Step cache (opt-in, inexact) on TI2V-5B: denoise time and deviation from the exact path.

49 frames 832x1056, 50 UniPC steps, CFG 5 batched, compiled blocks, full-size random networks.
For each threshold: denoise seconds, block passes skipped, latent relative error and PSNR of the
decoded video (bf16 VAE) against the exact run with the same noise.

    python bench/bench_step_cache.py --thresholds 0.05 0.1 0.2
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from full_size import swap_in_full_size_ti2v  # noqa: E402

from wan.configs import WAN_CONFIGS  # noqa: E402
from wan.textimage2video import WanTI2V  # noqa: E402
from wan.tools.make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.05, 0.1, 0.2])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    ckpt = make_tiny_checkpoint("ti2v-5B", os.path.join(tempfile.mkdtemp(), "ckpt"))
    task = swap_in_full_size_ti2v(WanTI2V(WAN_CONFIGS["ti2v-5B"], ckpt, device=device), device, True)
    for model in (*task.experts, task.text_encoder.model):
        model.to(device)
    dit = task.experts[0]
    job = task.prepare("A dancer spins on a wooden stage", size=(832, 1056), frame_num=49, sampling_steps=args.steps,
                       guide_scale=5.0, seed=1, offload_model=False)
    task.denoise(job.__class__(**{**job.__dict__, "settings": {**job.settings, "sampling_steps": 2}}), False)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | 49f 832x1056, {args.steps} steps, CFG 5")
    print("| threshold | denoise s | block passes skipped | latent rel. error | decoded PSNR dB |")
    print("|---|---|---|---|---|")
    exact = exact_video = None
    for threshold in [0.0, *args.thresholds]:
        dit.enable_step_cache(threshold)
        torch.cuda.synchronize()
        start = time.perf_counter()
        latent = task.denoise(job, False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        video = task.decode(latent)
        skipped = 0 if dit.step_cache is None else dit.step_cache.skipped
        if exact is None:
            exact, exact_video = latent, video
            print(f"| off (exact) | {seconds:.2f} | 0 | - | - |", flush=True)
            continue
        error = ((latent - exact).norm() / exact.norm()).item()
        psnr = 10 * torch.log10(4.0 / ((video - exact_video) ** 2).mean()).item()
        print(f"| {threshold} | {seconds:.2f} | {skipped} of {args.steps} | {error:.3e} | {psnr:.1f} |", flush=True)


if __name__ == "__main__":
    main()
