"""The opt-in inexact options on TI2V-5B: denoise time and deviation from the exact path.

49 frames 832x1056, 50 UniPC steps, CFG 5 batched, compiled blocks, full-size random networks.
For each variant: denoise seconds, block passes skipped (step cache), latent relative error and
PSNR of the decoded video (bf16 VAE) against the exact run with the same noise. Variants:
"cache:T" (step cache at threshold T), "fp8-attention" (FlashAttention-3 with fp8 q/k/v),
"fp8" (FP8 linear layers), "fp8+fp8-attention". FP8 linears cannot be undone, so they run last.

    python bench/bench_inexact.py --variants cache:0.05 cache:0.1 cache:0.2 fp8-attention fp8 fp8+fp8-attention
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dit import apply_variant  # noqa: E402
from full_size import full_size_ti2v_models  # noqa: E402

from wan import tasks  # noqa: E402
from wan.modules.attention import attention_backend  # noqa: E402
from wan.step_cache import enable_step_cache  # noqa: E402
from wan.runner import Runner  # noqa: E402
from wan.settings import Generation, Sampling  # noqa: E402


def settings(variant):
    """'cache:0.2' / 'fp8' / 'fp8-attention' / 'fp8+fp8-attention' -> (threshold, fp8 linears, attention)."""
    parts = variant.split("+")
    threshold = next((float(p.split(":")[1]) for p in parts if p.startswith("cache:")), 0.0)
    return threshold, "fp8" in parts, "flash-fp8" if "fp8-attention" in parts else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="*", default=["cache:0.05", "cache:0.1", "cache:0.2"])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    models = full_size_ti2v_models(device)
    runner = Runner(models)
    dit = models.experts[0]
    exact_attention = attention_backend()  # FlashAttention-3 when installed, else SDPA: both exact
    generation = Generation(task="ti2v-5B", prompt="A dancer spins on a wooden stage", size=(832, 1056),
                            frame_num=49, seed=1, sampling=Sampling(steps=args.steps, guide_scale=5.0))
    job = tasks.prepare(models, generation)
    warm_up = dataclasses.replace(job, sampling=job.sampling.replace(steps=2))
    runner.denoise(warm_up)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | 49f 832x1056, {args.steps} steps, CFG 5 "
          f"| exact attention: {exact_attention}")
    print("| variant | denoise s | block passes skipped | latent rel. error | decoded PSNR dB |")
    print("|---|---|---|---|---|")
    exact = exact_video = None
    for variant in ["exact", *args.variants]:
        threshold, fp8, attention = settings(variant)
        if apply_variant(dit, dict(fp8=fp8, attention=attention or exact_attention)):  # already compiled
            enable_step_cache(dit, 0.0)
            runner.denoise(warm_up)  # retrace outside the timing
        cache = enable_step_cache(dit, threshold)
        torch.cuda.synchronize()
        start = time.perf_counter()
        latent = runner.denoise(job)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        video = models.decode(latent)
        skipped = 0 if cache is None else cache.skipped
        if exact is None:
            exact, exact_video = latent, video
            print(f"| exact | {seconds:.2f} | 0 | - | - |", flush=True)
            continue
        error = ((latent - exact).norm() / exact.norm()).item()
        psnr = 10 * torch.log10(4.0 / ((video - exact_video) ** 2).mean()).item()
        print(f"| {variant} | {seconds:.2f} | {skipped} of {args.steps} | {error:.3e} | {psnr:.1f} |", flush=True)


if __name__ == "__main__":
    main()
