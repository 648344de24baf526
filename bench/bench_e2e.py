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

from full_size import full_size_ti2v_models  # noqa: E402

from wan import tasks  # noqa: E402
from wan.modules.attention import BACKENDS, attention_backend  # noqa: E402
from wan.runner import Runner  # noqa: E402
from wan.settings import Generation, Sampling  # noqa: E402

PROMPT = "A red fox trots through fresh snow in a quiet pine forest at sunrise."


def run(models, steps, offload, out_path):
    """One generation; returns seconds per stage and the peak GPU memory of denoise + decode."""
    times = {}

    def mark(name, start):
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - start

    models.offload_model = offload
    runner = Runner(models)
    generation = Generation(task="ti2v-5B", prompt=PROMPT, size=(1280, 704), frame_num=121, seed=1,
                            sampling=Sampling(steps=steps, guide_scale=5.0))
    start = time.perf_counter()
    job = tasks.prepare(models, generation)
    mark("text+noise", start)
    torch.cuda.reset_peak_memory_stats()  # the peak of denoise + decode (T5 may live on the CPU)
    start = time.perf_counter()
    latent = runner.denoise(job)
    mark("denoise", start)
    start = time.perf_counter()
    models.decode(latent)  # timed, not kept: the overlapped decode below writes the file
    mark("decode", start)
    start = time.perf_counter()
    runner.write_video(latent, out_path, 24)
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
    models = full_size_ti2v_models(device, args.compile, fp8=args.fp8, attention=args.attention)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | compile={args.compile} | VAE bf16 "
          f"| fp8={args.fp8} | attention {attention_backend()} | 121f 1280x704, {args.steps} steps, CFG 5", flush=True)
    run(models, 2, False, os.path.join(work, "warm.mp4"))  # compile and cuDNN plans
    rows = {"resident": run(models, args.steps, False, os.path.join(work, "a.mp4"))}
    if not args.skip_offload:
        rows["offload (5 steps)"] = run(models, 5, True, os.path.join(work, "b.mp4"))
    keys = list(rows["resident"])
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, times in rows.items():
        print(f"| {name} | " + " | ".join(f"{times[k]:.2f}" for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
