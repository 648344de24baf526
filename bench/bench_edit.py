"""Full inversion edit benchmark: TI2V-5B, 49 frames 832x1056, 50 inversion + 50 generation steps.

Full-size random networks on one GPU: the DiT (bf16), the Wan2.2 VAE and the umt5-xxl encoder are
built on the device and swapped into a TI2VInversionEditor loaded from a tiny checkpoint (the
loading path is not what is timed; writing 20 GB of random weights to disk first would only cost
lease time). The source is a synthetic 832x1056 clip.

    python bench/bench_edit.py [--no-compile] [--vae_dtype bf16|fp32]

Prints per-stage times for a full edit (models already loaded and warmed up) and for a re-edit
from the saved inversion, plus the cold first edit (compile included).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from full_size import swap_in_full_size_ti2v  # noqa: E402

from wan.inversion_edit import Inversion, TI2VInversionEditor  # noqa: E402
from wan.tools.make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402
from wan.utils.video_io import write_video  # noqa: E402

WIDTH, HEIGHT, FRAMES = 832, 1056, 49


def synthetic_clip(path):
    """A moving colour gradient: smooth content, so the codec is not the bottleneck."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = [np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, (x + y) // 8 % 256], -1).astype(np.uint8)
              for t in range(FRAMES)]
    write_video(np.stack(frames), path, fps=16)


def full_size_editor(ckpt_dir, device, compile_model, vae_dtype):
    editor = TI2VInversionEditor(ckpt_dir, device=device)
    swap_in_full_size_ti2v(editor.model, device, compile_model, vae_dtype)
    return editor


def timed_edit(editor, video, steps, inversion=None):
    """Run one edit; returns (times per stage, inversion)."""
    times = {}

    def mark(name, start):
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - start

    start = time.perf_counter()
    clip = editor.load_source(video, FRAMES, WIDTH * HEIGHT)
    mark("read+resize", start)
    if inversion is None:
        start = time.perf_counter()
        inversion = editor.invert(video, "a colourful gradient", FRAMES, WIDTH * HEIGHT, 5.0, steps, 1.0, clip=clip)
        mark("encode+invert", start)
    start = time.perf_counter()
    latent = editor.generate_from_inversion(inversion, "a colourful gradient in the style of van Gogh", None, steps,
                                            5.0, decode=False)
    mark("generate", start)
    start = time.perf_counter()
    editor.model.decode(latent)
    mark("decode", start)
    times["total"] = sum(times.values())
    return times, inversion


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--vae_dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    vae_dtype = torch.bfloat16 if args.vae_dtype == "bf16" else torch.float32
    work = tempfile.mkdtemp()
    video = os.path.join(work, "source.mp4")
    synthetic_clip(video)
    ckpt = make_tiny_checkpoint("ti2v-5B", os.path.join(work, "ckpt"))
    editor = full_size_editor(ckpt, device, args.compile, vae_dtype)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | compile={args.compile} "
          f"| vae {args.vae_dtype} | {FRAMES}f {WIDTH}x{HEIGHT}, {args.steps}+{args.steps} steps", flush=True)
    cold, _ = timed_edit(editor, video, 2)  # compiles both the 1-sample and the CFG-batched shapes
    print(f"cold 2+2-step edit (compile and cuDNN plans included): {cold['total']:.1f} s", flush=True)
    torch.cuda.reset_peak_memory_stats()
    full, inversion = timed_edit(editor, video, args.steps)
    path = os.path.join(work, "inversion.safetensors")
    inversion.save(path)
    again, _ = timed_edit(editor, video, args.steps, Inversion.load(path))
    peak = torch.cuda.max_memory_allocated() / 1e9
    print("| run | " + " | ".join(full) + " |")
    print("|---" * (len(full) + 1) + "|")
    print("| full edit | " + " | ".join(f"{v:.2f}" for v in full.values()) + " |")
    print("| re-edit from saved inversion | " + " | ".join(f"{again.get(k, 0):.2f}" for k in full) + " |")
    print(f"peak GPU memory {peak:.1f} GB (DiT, VAE and umt5-xxl resident)")


if __name__ == "__main__":
    main()
