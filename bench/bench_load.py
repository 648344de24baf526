"""Loading a TI2V-5B checkpoint (DiT + T5 + VAE) onto the device, part by part, from a warm page cache.

    python bench/bench_load.py --ckpt /tmp/wan-bench/ti2v-5B                # on the GPU machine
    python bench/bench_load.py --ckpt /tmp/ckpt-small --device cpu --profile # CPU: where the time goes

Each variant runs in a fresh process after the files were read once (page cache warm):
  library     wan.models.Models.load as the scripts call it (--convert_model_dtype, --vae_dtype bf16),
              then the DiT and T5 placed on the device as the first denoise and encode place them;
  fp32 DiT    the same without --convert_model_dtype (the official default keeps the DiT in fp32);
  on device   the same files, each state dict moved to the device in the file's dtype before the
              strict load casts it (a prototype of loading straight onto the device: no cast on the
              CPU, no second host copy of the weights).
Prints seconds per part (the DiT's, T5's and VAE's read-and-build, then the moves to the device),
the process' peak host memory and the peak device memory. --profile adds the slowest functions
(cProfile, own time) of the library variant.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

VARIANTS = ("library", "fp32 DiT", "on device")


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_library(ckpt, device, convert_model_dtype, timer):
    from wan.configs import WAN_CONFIGS
    from wan.models import Models
    from wan.settings import LoadOptions

    config = WAN_CONFIGS["ti2v-5B"]
    options = LoadOptions(device=str(device), convert_model_dtype=convert_model_dtype, vae_dtype="bf16",
                          offload_model=False)
    for part in ("t5", "vae", "dit"):
        with timer.stage(part):
            loaded = Models.load(config, ckpt, options, parts=(part,))
        if part == "t5":
            text_encoder = loaded.text_encoder
        elif part == "dit":
            dit = loaded.experts[0]
    with timer.stage("DiT to device"):
        loaded.place(dit)  # as the first denoise step does
    with timer.stage("T5 to device"):
        text_encoder.model.to(device)  # as the first encode does


def load_on_device(ckpt, device, timer):
    """Every state dict moved to the device in its file dtype, then loaded strictly (cast there)."""
    import torch

    from wan.configs import WAN_CONFIGS
    from wan.modules.model import WanModel
    from wan.modules.t5 import T5EncoderModel
    from wan.modules.vae2_2 import Wan2_2_VAE
    from wan.utils.checkpoint import load_into, load_pth, load_safetensors_dir

    config = WAN_CONFIGS["ti2v-5B"]

    def on_device(state):
        return {k: v.to(device) for k, v in state.items()}

    with timer.stage("t5"):
        path = os.path.join(ckpt, config.t5_checkpoint)
        T5EncoderModel.from_state_dict(on_device(load_pth(path, "T5")), os.path.join(ckpt, config.t5_tokenizer),
                                       config.text_len, torch.bfloat16, device, source=path)
    with timer.stage("vae"):
        path = os.path.join(ckpt, config.vae_checkpoint)
        Wan2_2_VAE.from_state_dict(on_device(load_pth(path, "VAE")), path, torch.bfloat16, device)
    with timer.stage("dit"):
        with open(os.path.join(ckpt, "config.json")) as f:
            saved = json.load(f)
        state = on_device(load_safetensors_dir(ckpt, what="DiT"))
        fields = ("model_type", "text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "out_dim", "num_heads",
                  "num_layers", "eps")
        with torch.device("meta"):
            model = WanModel(**{k: saved[k] for k in fields}, text_dim=state["text_embedding.0.weight"].shape[1])
        load_into(model, state, ckpt, dtype=torch.bfloat16)
        del state


def child(variant, ckpt, device_name, profile):
    start = time.perf_counter()
    import torch

    from wan.report import StageTimer
    from wan.report.stages import process_peak_rss

    imported = time.perf_counter() - start
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.init()
    timer = StageTimer(device)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if variant == "on device":
        load_on_device(ckpt, device, timer)
    else:
        load_library(ckpt, device, variant == "library", timer)
    synchronize(device)
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        sys.stderr.write(text.getvalue())
    seconds = {r["stage"]: r["seconds"] for r in timer.rows()}
    result = {"imports": imported, **seconds, "host peak GB": process_peak_rss() / 1e9,
              "device peak GB": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0}
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="/tmp/wan-bench/ti2v-5B", help="checkpoint folder (written if absent)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--profile", action="store_true", help="cProfile the library variant")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.ckpt, args.device, args.profile)
    from bench_cold_start import child_env, ensure_checkpoint, warm_page_cache

    ensure_checkpoint(args.ckpt)
    gb, seconds = warm_page_cache(args.ckpt)
    print(f"# {args.ckpt}: {gb:.1f} GB, read once in {seconds:.1f} s; device {args.device}", flush=True)
    env = child_env()
    rows = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--child", variant, "--ckpt", args.ckpt, "--device", args.device]
        if args.profile and variant == "library":
            command.append("--profile")
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"variant {variant} failed")
        if args.profile and variant == "library":
            print(done.stderr[-6000:])
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    columns = ["imports", "t5", "vae", "dit", "DiT to device", "T5 to device"]
    print("| variant | " + " | ".join(columns) + " | load total | host peak GB | device peak GB |")
    print("|---" * (len(columns) + 4) + "|")
    for variant, r in rows.items():
        total = sum(r.get(c, 0.0) for c in columns[1:])
        print(f"| {variant} | " + " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in columns)
              + f" | {total:.2f} | {r['host peak GB']:.1f} | {r['device peak GB']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
