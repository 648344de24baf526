"""Full inversion edit benchmark: TI2V-5B, 49 frames 832x1056, 50 inversion + 50 generation steps.

Full-size random networks on one GPU: the DiT (bf16), the Wan2.2 VAE and the umt5-xxl encoder are
built on the device as `Models` (bench/full_size.py; the loading path is not what is timed). The
source is a synthetic 832x1056 clip held in memory (no video file, so PyAV is not needed; reading
an mp4 of it took ~0.3 s in earlier runs), fitted onto the model grid with wan.tasks.edit.fit_source;
the edit runs through wan.tasks.edit.prepare_edit_of and wan.runner as the script does, and the
re-edit skips encoding the source as the script does with a saved inversion.

    python bench/bench_edit.py [--no-compile] [--vae_dtype bf16|fp32]

Prints per-stage times for a full edit (models already loaded and warmed up) and for a re-edit
from the saved inversion, plus the cold first edit (compile included), and how many graphs
torch.compile made during each edit (0 once warm; run with TORCH_LOGS=recompiles to see why one
recompiled).
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

from full_size import full_size_ti2v_models  # noqa: E402

from wan.runner import Runner  # noqa: E402
from wan.settings import EditSettings, InversionSettings, Sampling  # noqa: E402
from wan.tasks.edit import fit_source, prepare_edit_of  # noqa: E402

WIDTH, HEIGHT, FRAMES = 832, 1056, 49


def synthetic_frames():
    """A moving colour gradient, uint8 [F, H, W, 3]: smooth content, so a codec is not the bottleneck."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = [np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, (x + y) // 8 % 256], -1).astype(np.uint8)
              for t in range(FRAMES)]
    return np.stack(frames)


def synthetic_clip(path):
    """The synthetic clip as an mp4 (for the scripts, bench_cold_start.py)."""
    from wan.utils.video_io import write_video

    write_video(synthetic_frames(), path, fps=16)


def timed_edit(models, frames, steps, load_inversion=None, save_inversion=None):
    """Run one edit; returns the times per stage and the graphs torch.compile made during it."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    times = {}

    def mark(name, start):
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - start

    settings = EditSettings(frame_num=FRAMES, max_area=WIDTH * HEIGHT, sampling=Sampling("euler", steps, 5.0, 5.0),
                            inversion=InversionSettings(steps=steps))
    start = time.perf_counter()
    source = fit_source(models.config, frames, 16.0, WIDTH * HEIGHT, "synthetic")
    job = prepare_edit_of(models, source, None, "a colourful gradient", "a colourful gradient in the style of van Gogh",
                          settings, invert=load_inversion is None)
    mark("frames+encode", start)
    start = time.perf_counter()
    latent = Runner(models).edit(job, load_inversion, save_inversion)
    mark("invert+generate" if load_inversion is None else "generate", start)
    start = time.perf_counter()
    models.decode(latent)
    mark("decode", start)
    times["total"] = sum(times.values())
    times["graphs compiled"] = counters["stats"]["unique_graphs"] - graphs
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--vae_dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    vae_dtype = torch.bfloat16 if args.vae_dtype == "bf16" else torch.float32
    work = tempfile.mkdtemp()
    frames = torch.from_numpy(synthetic_frames())
    models = full_size_ti2v_models(device, args.compile, vae_dtype)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | compile={args.compile} "
          f"| vae {args.vae_dtype} | {FRAMES}f {WIDTH}x{HEIGHT}, {args.steps}+{args.steps} steps", flush=True)
    cold = timed_edit(models, frames, 2)  # compiles both the 1-sample and the CFG-batched shapes
    print(f"cold 2+2-step edit (compile and cuDNN plans included): {cold['total']:.1f} s, "
          f"{cold['graphs compiled']} graphs compiled", flush=True)
    torch.cuda.reset_peak_memory_stats()
    path = os.path.join(work, "inversion.safetensors")
    full = timed_edit(models, frames, args.steps, save_inversion=path)
    again = timed_edit(models, frames, args.steps, load_inversion=path)
    peak = torch.cuda.max_memory_allocated() / 1e9
    print("| run | frames+encode | invert+generate or generate | decode | total | graphs compiled |")
    print("|---|---|---|---|---|---|")
    for name, times in (("full edit", full), ("re-edit from saved inversion", again)):
        cells = (f"{v:.2f}" if isinstance(v, float) else str(v) for v in times.values())
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"peak GPU memory {peak:.1f} GB (DiT, VAE and umt5-xxl resident)")


if __name__ == "__main__":
    main()
