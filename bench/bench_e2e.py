"""End-to-end TI2V-5B text-to-video benchmark: 121 frames 1280x704, 50 UniPC steps with CFG (cond and
uncond batched), on one GPU with full-size random networks (see full_size.py). Also the peak GPU
memory with --offload_model, the consumer setting.

    python bench/bench_e2e.py [--steps 50] [--no-compile] [--fp8] [--attention flash-fp8] [--skip_offload]

Two totals. "total" is what the performance target counts: text encoder, DiT and VAE decode (the
issue's official-equivalent 133 s is 100 official forwards, the fp32 decode and T5, no file
written). "total with mp4" replaces the decode with what generate.py does after denoising: decode
and write the mp4 at once, each decoded chunk encoded while the VAE decodes the next.

--fp8 and --attention flash-fp8 are the opt-in inexact options of the generation scripts; their
deviation from the exact output is measured by bench_inexact.py.
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
from wan.modules.attention import BACKENDS, attention_backend  # noqa: E402
from wan.textimage2video import WanTI2V  # noqa: E402
from wan.tools.make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402
from wan.utils.utils import save_video  # noqa: E402

PROMPT = "A red fox trots through fresh snow in a quiet pine forest at sunrise."


def run(task, steps, offload, out_path):
    """One generation; returns seconds per stage and the peak GPU memory of denoise + decode."""
    times = {}

    def mark(name, start):
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - start

    start = time.perf_counter()
    job = task.prepare(PROMPT, size=(1280, 704), frame_num=121, sampling_steps=steps, guide_scale=5.0, seed=1,
                       offload_model=offload)
    mark("text+noise", start)
    torch.cuda.reset_peak_memory_stats()  # the peak of denoise + decode (T5 may live on the CPU)
    start = time.perf_counter()
    latent = task.denoise(job, offload_model=offload)
    mark("denoise", start)
    start = time.perf_counter()
    task.decode(latent)  # timed, not kept: the overlapped decode below writes the file
    mark("decode", start)
    start = time.perf_counter()
    save_video((chunk[None] for chunk in task.decode_chunks(latent)), out_path, fps=24, nrow=1)
    mark("decode+mp4", start)
    times["total"] = times["text+noise"] + times["denoise"] + times["decode"]
    times["total with mp4"] = times["text+noise"] + times["denoise"] + times["decode+mp4"]
    times["peak GB"] = torch.cuda.max_memory_allocated() / 1e9
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--fp8", action="store_true", help="FP8 linear layers in the DiT blocks (inexact)")
    parser.add_argument("--attention", choices=BACKENDS, default=None, help="attention backend (default: the library's)")
    parser.add_argument("--skip_offload", action="store_true", help="time only the resident run")
    args = parser.parse_args()
    device = torch.device("cuda")
    work = tempfile.mkdtemp()
    ckpt = make_tiny_checkpoint("ti2v-5B", os.path.join(work, "ckpt"))
    task = WanTI2V(WAN_CONFIGS["ti2v-5B"], ckpt, device=device, attention=args.attention)
    task = swap_in_full_size_ti2v(task, device, args.compile, fp8=args.fp8)
    for model in (*task.experts, task.text_encoder.model):
        model.to(device)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | compile={args.compile} | VAE bf16 "
          f"| fp8={args.fp8} | attention {attention_backend()} | 121f 1280x704, {args.steps} steps, CFG 5", flush=True)
    run(task, 2, False, os.path.join(work, "warm.mp4"))  # compile and cuDNN plans
    rows = {"resident": run(task, args.steps, False, os.path.join(work, "a.mp4"))}
    if not args.skip_offload:
        rows["offload (5 steps)"] = run(task, 5, True, os.path.join(work, "b.mp4"))
    keys = list(rows["resident"])
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, times in rows.items():
        print(f"| {name} | " + " | ".join(f"{times[k]:.2f}" for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
