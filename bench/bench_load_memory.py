"""Peak host memory of loading a TI2V-5B-shaped DiT from GGUF Q4_0, ComfyUI fp8-scaled and bf16
files, each built from random data in a temporary folder, then running one small forward.

    python bench/bench_load_memory.py              # full size (30 layers, dim 3072): ~10 GB of files
    python bench/bench_load_memory.py --scale 0.25 # dims x0.25: a CPU-sized run of a few minutes

Each load runs in a fresh process (so peaks do not mix) through wan.loading (read_dit +
build_dit, bf16 compute). The table shows the peak resident memory above the process's baseline
next to the size of the same model in bf16 and in fp32: a quantised load that stays under the bf16
size never materialised the model in fp32 (or even in bf16); its layers dequantise one at a time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FULL = dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48, text_dim=4096, freq_dim=256)


def shapes(scale):
    """Official TI2V-5B key -> shape, widths scaled (multiples of 256 for the quant blocks)."""
    from wan.modules.model import WanModel

    def scaled(value):
        return max(256, int(round(value * scale / 256)) * 256)

    dims = dict(FULL, dim=scaled(FULL["dim"]), ffn_dim=scaled(FULL["ffn_dim"]))
    dims["num_heads"] = dims["dim"] // 128
    with torch.device("meta"):
        model = WanModel(model_type="ti2v", **dims)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, dims


def is_block_linear(key, shape):
    return key.startswith("blocks.") and len(shape) == 2


def random_tensor(shape, gen):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) / fan_in ** 0.5


def write_files(folder, table):
    """bf16 safetensors, fp8-scaled safetensors and GGUF Q4_0 (random blocks) of the same random
    weights, one format at a time (the full-size bf16 dict alone is 10 GB)."""
    import gguf  # noqa: F401  (fails before the slow part when missing)
    from safetensors.torch import save_file

    from wan.tools.tiny_formats import write_gguf

    def tensors():
        gen = torch.Generator().manual_seed(0)
        for key, shape in table.items():
            yield key, shape, random_tensor(shape, gen)

    paths = {"bf16": os.path.join(folder, "wan_bf16.safetensors"),
             "fp8_scaled": os.path.join(folder, "wan_fp8_scaled.safetensors"),
             "gguf_Q4_0": os.path.join(folder, "wan-Q4_0.gguf")}
    save_file({key: value.to(torch.bfloat16) for key, _, value in tensors()}, paths["bf16"])
    fp8 = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, shape, value in tensors():
        if is_block_linear(key, shape):
            scale = value.abs().max() / 448
            fp8[key] = (value / scale).to(torch.float8_e4m3fn)
            fp8[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            fp8[key] = value.to(torch.bfloat16)
    save_file(fp8, paths["fp8_scaled"])
    del fp8
    rng = np.random.default_rng(0)
    floats, q4 = {}, {}
    for key, shape in table.items():
        if is_block_linear(key, shape):  # random Q4_0 blocks with small finite fp16 scales
            blocks = rng.integers(0, 256, (shape[0] * shape[1] // 32, 18), dtype=np.uint8)
            blocks[:, :2] = (rng.random((blocks.shape[0], 1)) * 1e-3).astype(np.float16).view(np.uint8)
            q4[key] = (blocks.reshape(shape[0], -1), "Q4_0", shape)
    floats = {key: value for key, shape, value in tensors() if key not in q4}
    write_gguf(floats, paths["gguf_Q4_0"], qtype="F32", raw_tensors=q4)
    return paths


def status_kb(field):
    """A memory figure of this process from /proc (VmRSS: now, VmHWM: peak since reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak():
    """Restart VmHWM from the current RSS (Linux >= 4.0). getrusage's ru_maxrss cannot be used:
    it survives exec, so a child started by a large parent reports the parent's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(path):
    """Load `path` in this process and print the measurements as JSON."""
    import wan.loading  # noqa: F401  (imports are part of the baseline, not of the load)
    from wan.loading import build_dit, read_dit
    from wan.loading.sources import _file_part

    baseline = status_kb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    state, config = read_dit(_file_part("DiT", path))
    model = build_dit(state, config, dtype=torch.bfloat16)
    del state
    load_s = time.perf_counter() - start
    after_load = status_kb("VmHWM")
    with torch.no_grad():
        x = [torch.randn(model.in_dim, 1, 4, 4)]
        model(x=x, t=torch.tensor([500.0]), context=[torch.randn(8, model.text_dim)], seq_len=4)
    peak = status_kb("VmHWM")
    kept = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    print(json.dumps({"baseline_kb": baseline, "load_peak_kb": after_load, "peak_kb": peak, "load_s": load_s,
                      "model_bytes": kept, "storage": config["storage"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="width factor (1.0: TI2V-5B size)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    table, dims = shapes(args.scale)
    params = sum(int(np.prod(s)) for s in table.values())
    gib = 2 ** 30
    print(f"TI2V-5B-shaped DiT, scale {args.scale}: dim {dims['dim']}, ffn {dims['ffn_dim']}, "
          f"{dims['num_layers']} layers, {params / 1e9:.2f} B parameters; "
          f"bf16 {2 * params / gib:.2f} GiB, fp32 {4 * params / gib:.2f} GiB")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_files(folder, table)
        print("peak = resident memory above the baseline (after imports), during the load and up to the "
              "end of one forward")
        print(f"{'format':<12} {'file GiB':>9} {'held GiB':>9} {'load peak':>10} {'+ forward':>12} {'load s':>7}  "
              f"peak vs bf16 / fp32 size")
        for name, path in paths.items():
            env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            result = subprocess.run([sys.executable, __file__, "--child", path], env=env, capture_output=True,
                                    text=True, check=True)
            stats = json.loads(result.stdout.strip().splitlines()[-1])
            peak = (stats["peak_kb"] - stats["baseline_kb"]) * 1024
            load_peak = (stats["load_peak_kb"] - stats["baseline_kb"]) * 1024
            print(f"{name:<12} {os.path.getsize(path) / gib:>9.2f} {stats['model_bytes'] / gib:>9.2f} "
                  f"{load_peak / gib:>10.2f} {peak / gib:>12.2f} {stats['load_s']:>7.1f}  "
                  f"{peak / (2 * params):.2f}x / {peak / (4 * params):.2f}x")


if __name__ == "__main__":
    main()
