"""Multi-GPU DiT forward benchmark: Ulysses sequence parallelism (optionally with FSDP) on N GPUs
against the same forward on one GPU, full-size random bf16 weights (they time as real ones do).

    torchrun --nproc_per_node=2 bench/bench_multigpu.py
    torchrun --nproc_per_node=4 bench/bench_multigpu.py --modes ulysses ulysses+fsdp --repeats 3

Per case every rank builds the model on its GPU with the weights of bench_dit.py (generated per key
from a fixed seed, so all ranks hold identical weights); rank 0 times the plain single-GPU forward
while the others wait, then all ranks time each parallel mode. Prints one markdown table: forward
time (mean after a warm-up, slowest rank), speed-up over 1 GPU, parallel efficiency, peak memory
of rank 0 and the relative difference of the parallel output to the single-GPU one.
"""
import argparse
import gc
import os
import sys

# NVLink SHARP / multicast off before anything initialises NCCL (the lent hosts need it off).
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dit import A14B_T2V, TI2V_5B, build, inputs, timed  # noqa: E402

from wan.distributed import enable_sequence_parallel, init_distributed, shard_dit  # noqa: E402

# name: (model config, latent [C, T, H, W], first-frame conditioning as in TI2V image mode)
CASES = {
    "ti2v-5B-121f-704x1280": (TI2V_5B, (48, 31, 44, 80), True),
    "a14b-expert-81f-1280x720": (A14B_T2V, (16, 21, 90, 160), False),
}
MODES = ("ulysses", "ulysses+fsdp")


def forward_fn(model, x, context, t, seq_len):
    return lambda: model([x], t=t, context=[context], seq_len=seq_len)[0]


@torch.no_grad()
def single_gpu(model, args, repeats):
    """Rank 0 alone: (output on the CPU, seconds, peak GB); the other ranks wait at the barrier."""
    result = (None, None, None)
    if dist.get_rank() == 0:
        torch.cuda.reset_peak_memory_stats()
        out, seconds = timed(forward_fn(model, *args), repeats)
        result = (out.float().cpu(), seconds, torch.cuda.max_memory_allocated() / 1e9)
    dist.barrier()
    return result


@torch.no_grad()
def parallel(model, args, repeats):
    """All ranks: (rank 0's output on the CPU, slowest rank's seconds, rank 0's peak GB)."""
    torch.cuda.reset_peak_memory_stats()
    out, seconds = timed(forward_fn(model, *args), repeats)
    slowest = torch.tensor([seconds], device=out.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return out.float().cpu(), slowest.item(), torch.cuda.max_memory_allocated() / 1e9


def run_case(name, modes, repeats, compile_blocks, device, world):
    config, latent_shape, first_frame = CASES[name]
    args = inputs(latent_shape, first_frame, device)  # same seed on every rank: identical inputs
    seq_len = args[-1]
    model = build(config, device)
    if compile_blocks:
        model.compile_blocks()
    reference, base_seconds, base_peak = single_gpu(model, args, repeats)
    rows = [(name, 1, "single GPU", seq_len, base_seconds, base_peak, None)]
    enable_sequence_parallel(model, None)
    for mode in modes:
        if mode == "ulysses+fsdp":
            shard_dit(model, device)
            gc.collect()
            torch.cuda.empty_cache()
        out, seconds, peak = parallel(model, args, repeats)
        diff = None if reference is None else ((out - reference).norm() / reference.norm()).item()
        rows.append((name, world, mode, seq_len, seconds, peak, diff))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def print_rows(rows):
    base = rows[0][4]
    for name, gpus, mode, tokens, seconds, peak, diff in rows:
        speed = base / seconds
        diff_text = "-" if diff is None else f"{diff:.2e}"
        print(f"| {name} | {gpus} | {mode} | {tokens} | {seconds:.3f} | {speed:.2f}x | {speed / gpus:.0%} | "
              f"{peak:.1f} | {diff_text} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--modes", nargs="*", default=["ulysses"], choices=MODES,
                        help="parallel modes to time after the single-GPU forward (fsdp shards the same model)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per measurement (after a warm-up)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks first")
    args = parser.parse_args()
    env = init_distributed()
    if env.world_size < 2:
        parser.error("run under torchrun with --nproc_per_node of 2 or more")
    if env.is_main:
        print(f"# {env.world_size} x {torch.cuda.get_device_name()} | torch {torch.__version__} | "
              f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))} | compile {args.compile}")
        print("| case | GPUs | mode | tokens | forward s | speed-up vs 1 GPU | efficiency | rank-0 peak GB "
              "| rel. diff |")
        print("|---" * 9 + "|")
    for name in args.cases:
        rows = run_case(name, args.modes, args.repeats, args.compile, env.device, env.world_size)
        if env.is_main:
            print_rows(rows)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
