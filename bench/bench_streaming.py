"""Block-level weight streaming (wan.streaming) for one i2v-A14B expert: time and peak GPU memory of a
guided step (one latent, the prompt and the negative prompt: one batched forward, as the sampler
runs it), resident against streamed, at 480p and 720p, 81 frames.

    python bench/bench_streaming.py                        # both sizes, compiled blocks
    python bench/bench_streaming.py --cases 480p --no-compile

The expert has full-size random bf16 weights built on the GPU (28.6 GB). Resident runs first; then
the blocks go to pinned host memory (28.6 GB of host RAM) and the same inputs run streamed. Targets
of the performance issue: 480p peak <= 24 GB at <= 1.3x the resident time; 720p peak <= 48 GB.
"rel. diff" compares the streamed output with the resident one (0 means bit for bit).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from full_size import A14B_I2V, random_on_device  # noqa: E402

from wan.modules.attention import attention_backend  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from wan.streaming import stream_blocks  # noqa: E402

# latent [16, T, h, w] of 81 frames (Wan2.1 VAE: stride 4 in time, 8 in space)
CASES = {"480p": (16, 21, 60, 104), "720p": (16, 21, 90, 160)}
TEXT_TOKENS = (96, 126)  # the prompt's and the negative prompt's real tokens


def inputs(shape, device):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device)
    y = torch.randn((20, *shape[1:]), generator=gen, device=device)
    context = [torch.randn(n, 4096, generator=gen, device=device) for n in TEXT_TOKENS]
    seq_len = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    return x, y, context, seq_len


def guided_step(model, case, device):
    x, y, context, seq_len = inputs(CASES[case], device)
    with torch.no_grad():
        return model([x], t=torch.tensor([950.0]), context=context, seq_len=seq_len, y=[y])


def timed(model, case, device, repeats):
    """(outputs of the last run on the CPU, mean seconds, peak GB above the weights held between runs)."""
    guided_step(model, case, device)  # warm-up: compile, plans, allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        out = guided_step(model, case, device)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return [o.float().cpu() for o in out], seconds, torch.cuda.max_memory_allocated() / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda")
    with torch.device("meta"):
        model = WanModel(**A14B_I2V)
    model = random_on_device(model, device, torch.bfloat16, seed=1)
    if args.compile:
        model.compile_blocks()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | attention {attention_backend()} | "
          f"compile={args.compile} | i2v-A14B expert, 81 frames, guided step (batch 2)", flush=True)
    resident = {case: timed(model, case, device, args.repeats) for case in args.cases}
    start = time.perf_counter()
    stream_blocks(model, device, slots=args.slots)
    torch.cuda.empty_cache()
    print(f"# blocks to pinned host memory in {time.perf_counter() - start:.1f} s; device memory held between "
          f"steps: {torch.cuda.memory_allocated() / 1e9:.2f} GB", flush=True)
    print("| case | tokens | resident s | resident peak GB | streamed s | streamed peak GB | time ratio | rel. diff |")
    print("|---" * 8 + "|")
    for case in args.cases:
        expected, resident_s, resident_peak = resident[case]
        out, streamed_s, streamed_peak = timed(model, case, device, args.repeats)
        diff = max(((a - b).norm() / b.norm()).item() for a, b in zip(out, expected))
        tokens = inputs(CASES[case], "cpu")[3]
        print(f"| {case} | {tokens} | {resident_s:.2f} | {resident_peak:.1f} | {streamed_s:.2f} | {streamed_peak:.1f} "
              f"| {streamed_s / resident_s:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
