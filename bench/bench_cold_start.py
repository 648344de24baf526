"""Cold start as a command-line user lives it: whole processes of generate.py or ti2v_inversion_edit.py
on a full-size TI2V-5B checkpoint on disk (random weights, official layout), loading included.

    python bench/bench_cold_start.py --script generate    # ~7 min on an H200 (checkpoint written first)
    python bench/bench_cold_start.py --script edit

Runs, each a fresh `python` process (bench/profiled_script.py times its stages):
  eager                       without --compile
  compile, cold caches        --compile with empty inductor and Triton cache folders
  compile, warm caches        --compile again: kernels from the on-disk caches, dynamo traces again
  compile, in-process 2nd     --compile, the same run twice in one process: the second is the warm
                              in-process time the warm-cache process is compared with

The checkpoint is written once to --ckpt (bench/checkpoint_writer.py; reused if present) and read
once before the runs, so every load finds it in the page cache. Prints one table (seconds per stage;
"start" is interpreter start-up, imports and argument parsing until the first stage) and the checks:
the load time, the warm-cache process against the in-process warm run (excluding the load), and the
compile break-even (first-call cost over per-step saving) for wan.profiling.compile_pays_off.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

STAGE_ORDER = ("load", "encode", "invert", "denoise", "decode+write", "decode", "write")
SCRIPTS = {"generate": "generate.py", "edit": "ti2v_inversion_edit.py"}
PROCESS_TIMEOUT_S = 420


def ensure_checkpoint(folder):
    from checkpoint_writer import write_checkpoint

    if os.path.isfile(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")):
        return
    for part, (nbytes, seconds) in write_checkpoint(folder).items():
        print(f"# wrote {part}: {nbytes / 1e9:.1f} GB in {seconds:.1f} s", flush=True)


def warm_page_cache(folder):
    """Read every file once; returns (GB, seconds)."""
    total, start = 0, time.perf_counter()
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as f:
                while chunk := f.read(64 << 20):
                    total += len(chunk)
    return total / 1e9, time.perf_counter() - start


def area(size):
    width, height = (int(v) for v in size.split("*"))
    return width * height


def script_args(script, ckpt, work, args, compile_run):
    common = ["--ckpt_dir", ckpt, "--offload_model", "False"]
    if args.precision == "bf16":  # fp32: for a quick check on a CPU, where bf16 convolutions crawl
        common += ["--convert_model_dtype", "--vae_dtype", "bf16"]
    if compile_run:
        common.append("--compile")
    if script == "generate":
        return ["generate.py", "--task", "ti2v-5B", "--size", args.size, "--frame_num", str(args.frames),
                "--sample_steps", str(args.steps), "--base_seed", "1", "--prompt", "A red fox trots through snow",
                "--save_file", os.path.join(work, "out.mp4"), *common]
    return ["ti2v_inversion_edit.py", "--video", os.path.join(work, "source.mp4"), "--source_prompt", "a gradient",
            "--target_prompt", "a gradient in the style of van Gogh", "--frame_num", str(args.frames), "--max_area",
            str(area(args.size)), "--inversion_steps", str(args.steps),
            "--generation_steps", str(args.steps),
            "--output", os.path.join(work, "edit.mp4"), *common]


def run_process(argv, env, repeat=1):
    """One process; returns its runs, each {stage: s, "start": s, "total": s, "wall": s}."""
    out = tempfile.mktemp(suffix=".json")
    command = [sys.executable, os.path.join(HERE, "profiled_script.py"), out, "--repeat", str(repeat), *argv]
    spawned = time.time()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                              timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{argv[0]} took more than {PROCESS_TIMEOUT_S} s") from None
    wall = time.time() - spawned
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{argv[0]} failed with exit status {done.returncode}")
    with open(out) as f:
        record = json.load(f)
    runs, previous_end = [], spawned
    for run in record["runs"]:
        stages = dict(run["stages"])
        stages["start"] = run["first_stage"] - previous_end
        stages["total"] = run["ended"] - previous_end
        previous_end = run["ended"]
        runs.append(stages)
    runs[-1]["wall"] = wall
    print(f"# {argv[0]}{' --compile' if '--compile' in argv else ''}: {wall:.1f} s, stages of the last run "
          + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    return runs


def child_env(**extra):
    """This environment with the repository first on the path (wheels installed elsewhere stay on it)."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)


def cache_env(folder):
    """Environment with inductor's and Triton's on-disk caches in `folder` (empty: a cold start)."""
    return child_env(TORCHINDUCTOR_CACHE_DIR=os.path.join(folder, "inductor"),
                     TRITON_CACHE_DIR=os.path.join(folder, "triton"))


def folder_sizes(folder):
    """MB in the caches a warm start reads back: inductor's FX graph and AOTAutograd caches, its
    generated kernel sources and tuning results (the hashed sub-folders), and Triton's binaries."""
    sizes = {}
    for top in ("inductor", "triton"):
        base = os.path.join(folder, top)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, name)
            nbytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
            label = top if top == "triton" else name if name in ("fxgraph", "aotautograd") else "inductor kernels"
            sizes[label] = sizes.get(label, 0.0) + nbytes / 1e6
    return sizes


def print_table(rows):
    used = [s for s in STAGE_ORDER if any(s in r for _, r in rows)]
    columns = ["start", *used, "total"]
    print("| run | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in columns) + " |", flush=True)


def after_load(r):
    return r["total"] - r["start"] - r["load"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", choices=SCRIPTS, default="generate")
    parser.add_argument("--ckpt", default="/tmp/wan-bench/ti2v-5B", help="checkpoint folder (written if absent)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (edit: inversion and generation each)")
    parser.add_argument("--frames", type=int, help="frames, 4n+1 (default: 121 generate, 49 edit)")
    parser.add_argument("--size", help="W*H: generate's size, the edit's maximum area (default 1280*704 / 832*1056)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16: --convert_model_dtype --vae_dtype bf16 (the GPU setting); fp32: neither")
    parser.add_argument("--skip", nargs="*", default=[], choices=["eager", "cold", "compile"],
                        help="runs to leave out (compile: every compiled run; for a quick check on a CPU)")
    args = parser.parse_args()
    args.frames = args.frames or (121 if args.script == "generate" else 49)
    args.size = args.size or ("1280*704" if args.script == "generate" else "832*1056")
    ensure_checkpoint(args.ckpt)
    gb, seconds = warm_page_cache(args.ckpt)
    print(f"# checkpoint {args.ckpt}: {gb:.1f} GB read in {seconds:.1f} s (page cache now warm)", flush=True)
    work = tempfile.mkdtemp()
    if args.script == "edit":
        from bench_edit import synthetic_clip

        synthetic_clip(os.path.join(work, "source.mp4"))
    caches = tempfile.mkdtemp()
    rows = []
    if "eager" not in args.skip:
        eager = run_process(script_args(args.script, args.ckpt, work, args, False), cache_env(caches))[0]
        rows.append(("eager", eager))
    if "compile" in args.skip:
        print_table(rows)
        return
    if "cold" not in args.skip:
        rows.append(("compile, cold caches", run_process(script_args(args.script, args.ckpt, work, args, True),
                                                         cache_env(caches))[0]))
        print("# on-disk caches after the cold run (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                                      folder_sizes(caches).items()), flush=True)
    warm = run_process(script_args(args.script, args.ckpt, work, args, True), cache_env(caches))[0]
    rows.append(("compile, warm caches", warm))
    first, second = run_process(script_args(args.script, args.ckpt, work, args, True), cache_env(caches), repeat=2)
    rows.append(("compile, in-process 1st", first))
    rows.append(("compile, in-process 2nd", second))
    print(f"# {args.script}, {args.steps} steps, {args.precision}, --offload_model False")
    print_table(rows)
    print_checks(dict(rows), args.steps)


def print_checks(rows, steps):
    warm, second = rows["compile, warm caches"], rows["compile, in-process 2nd"]
    print(f"load (DiT + T5 + VAE, warm page cache): {warm['load']:.2f} s (target <= 15 s)")
    ratio = after_load(warm) / after_load(second)
    print(f"warm-cache process after the load {after_load(warm):.2f} s vs in-process warm {after_load(second):.2f} s: "
          f"{ratio:.2f}x (target <= 1.15x); fixed cost of a new process {after_load(warm) - after_load(second):.1f} s")
    if "eager" not in rows:
        return
    work_stages = ("invert", "denoise", "decode+write", "decode")
    per_step_saving = sum(rows["eager"].get(s, 0) - second.get(s, 0) for s in work_stages) / steps
    for label in ("warm", "cold"):
        run = rows.get(f"compile, {label} caches")
        if run is None:
            continue
        cost = after_load(run) - after_load(second)
        steps_to_pay = f"{cost / per_step_saving:.0f} steps of this size" if per_step_saving > 0 else "never"
        print(f"compile break-even ({label} caches): first-call cost {cost:.1f} s / saving {per_step_saving:.2f} s "
              f"per step = {steps_to_pay}")


if __name__ == "__main__":
    main()
