"""End to end i2v-A14B on one GPU: 1280x720, 81 frames, 40 UniPC steps with guidance (shift 5, guide
3.5, the high-noise expert for the 15 steps with t >= 900, the low-noise one for the other 25).

    python bench/bench_a14b_e2e.py            # exact: bf16 weights, compiled blocks, default attention
    python bench/bench_a14b_e2e.py --fp8      # FP8 linear layers (inexact, opt-in)

Both experts (28.6 GB each in bf16), umt5-xxl (11.4 GB) and the Wan2.1 VAE stay resident on one
H200 (about 75 GB with activations; no expert moves between steps). Full-size random weights
(bench/full_size.py). A whole 40-step run takes about 15 minutes, more than one device call allows,
so the stages are timed one by one through the code the scripts run (tasks.prepare_i2v, the guided
velocity of wan.runner, the VAE decode): encode (T5 and the VAE encode of the conditioning video)
once, --repeats guided steps on each expert after a warm-up step, the decode once; the 40-step
total is encode + 15 x high-noise step + 25 x low-noise step + decode (the sampler's own work per
step is negligible, docs/PERFORMANCE.md). The official-equivalent is two expert forwards per step
(conditional and unconditional) at --reference_forward_s.
"""
import argparse
import functools
import os
import sys
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from full_size import full_size_a14b_models  # noqa: E402

from wan import flow  # noqa: E402
from wan.modules.attention import BACKENDS, attention_backend  # noqa: E402
from wan.runner import Runner  # noqa: E402
from wan.settings import Generation, Sampling  # noqa: E402
from wan.tasks.i2v import prepare_i2v  # noqa: E402

STEPS, SHIFT = 40, 5.0
PROMPT = "The scene comes alive: gentle camera push-in, natural motion, soft light."


def seconds(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp8", action="store_true", help="FP8 linear layers in the DiT blocks (inexact)")
    parser.add_argument("--attention", choices=BACKENDS, default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--repeats", type=int, default=2, help="timed guided steps per expert")
    parser.add_argument("--reference_forward_s", type=float, default=12.14,
                        help="seconds of one reference A14B forward at 720p (the performance issue's figure)")
    args = parser.parse_args()
    device = torch.device("cuda")
    models = full_size_a14b_models(device, args.compile, fp8=args.fp8, attention=args.attention)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | compile={args.compile} | fp8={args.fp8} "
          f"| attention {attention_backend()} | i2v-A14B 1280x720 81f, {STEPS} steps, both experts resident",
          flush=True)
    image = Image.new("RGB", (1280, 720), (90, 140, 200))
    generation = Generation(task="i2v-A14B", prompt=PROMPT, size=(1280, 720), frame_num=81, seed=1,
                            sampling=Sampling(steps=STEPS, shift=SHIFT, guide_scale=(3.5, 3.5)))
    job, encode_s = seconds(lambda: prepare_i2v(models, generation, image))
    schedule = flow.make_schedule("unipc", STEPS, SHIFT, models.num_train_timesteps)
    field = Runner(models).field(job, job.sampling.guide_scale)
    timesteps = schedule.timesteps[:-1].tolist()
    high = [t for t in timesteps if field.expert_index(t) == 1]
    low = [t for t in timesteps if field.expert_index(t) == 0]
    x = job.latent.to(device)
    per_step = {}
    with torch.no_grad(), models.autocast():
        for name, ts in (("high-noise", high), ("low-noise", low)):
            field(x, ts[0])  # warm-up: compile, plans
            times = [seconds(functools.partial(field, x, t))[1] for t in ts[1:1 + args.repeats]]
            per_step[name] = sum(times) / len(times)
            print(f"# {name} expert: {len(ts)} steps, guided step {per_step[name]:.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
    peak_after_steps = torch.cuda.max_memory_allocated() / 1e9
    latent = job.latent.to(device)
    models.decode(latent)  # warm-up: the compiled decoder
    _, decode_s = seconds(lambda: models.decode(latent))
    denoise = len(high) * per_step["high-noise"] + len(low) * per_step["low-noise"]
    total = encode_s + denoise + decode_s
    reference = 2 * STEPS * args.reference_forward_s
    print("| run | encode | high-noise step | low-noise step | denoise (40 steps) | decode | total | "
          f"official-equivalent denoise (80 x {args.reference_forward_s:.2f} s) | speed-up | peak GB |")
    print("|---" * 10 + "|")
    name = "--fp8" if args.fp8 else "exact"
    print(f"| {name} | {encode_s:.2f} | {per_step['high-noise']:.2f} | {per_step['low-noise']:.2f} | {denoise:.1f} | "
          f"{decode_s:.2f} | {total:.1f} | {reference:.1f} | {reference / denoise:.2f}x | {peak_after_steps:.1f} |",
          flush=True)


if __name__ == "__main__":
    main()
