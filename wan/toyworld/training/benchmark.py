"""`--benchmark_steps N`: time the training steps and the data path in one call, so that the fastest
compile variant can be chosen on the GPU that will train. Random weights and random latents time
the same as real ones; no files are written."""
import time

import numpy as np
import torch

from ...modules.vae2_2 import STD
from ..world import render_batch
from .common import autocast, log, make_optimizer
from .data import CLIP_FRAMES, ClipPool, draw_scenes, to_model_video
from .dit_model import COMPILE_MODES, LATENT_CHANNELS, build_dit, compile_for_training
from .dit_stage import DitTrainer, LatentSet, batch_for
from .text import TEXT_ENCODER, TEXT_LEN
from .vae_stage import build_vae, curriculum, unfused_norms, vae_loss, vae_param_groups


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, steps, device):
    """Seconds per call of fn() over `steps` calls, after the caller's warm-up."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def random_latent_set(clips, frames, generator, device):
    latent_frames = (frames - 1) // 4 + 1
    latents = torch.randn(clips, LATENT_CHANNELS, latent_frames, 16, 16, generator=generator, device=device)
    captions = torch.randn(clips, 2, 24, TEXT_ENCODER["dim"], generator=generator, device=device)
    return LatentSet(latents, captions.to(torch.bfloat16))


def benchmark_dit(args, device, budget, modes):
    """(mode, result line, ms per 17-frame step or None) for each compile mode; a mode is
    skipped when fewer than 90 s of the budget are left (one compile can take a minute)."""
    generator = torch.Generator(device).manual_seed(0)
    sets = {f: random_latent_set(256, f, generator, device) for f in (CLIP_FRAMES, 33)}
    negative = torch.randn(TEXT_LEN, TEXT_ENCODER["dim"], generator=generator, device=device).to(torch.bfloat16)
    rows = []
    for mode in modes:
        if budget.total_s - budget.elapsed() < 90:
            rows.append((mode, "skipped: out of time", None))
            continue
        try:
            model = build_dit(0, args.dit_dim, args.dit_ffn_dim, args.dit_heads, args.dit_layers).to(device)
            trainer = DitTrainer(model, None, args, device, warmup_steps=10, first_step=0, seed=0)
            compile_for_training(model, mode)
            results, times = [], []
            for frames, data in sets.items():
                batch = batch_for(frames, args)
                started = time.perf_counter()
                for step in range(3):  # the first steps compile
                    loss, _ = trainer.step(data, batch, negative, step, 0.0)
                _sync(device)
                warm = time.perf_counter() - started
                seconds = _timed(lambda: trainer.step(data, batch, negative, 5, 0.0), args.benchmark_steps, device)
                times.append(seconds * 1e3)
                results.append(f"{frames}f x{batch}: {seconds * 1e3:.1f} ms/step (first 3 steps {warm:.0f} s, "
                               f"loss {float(loss.detach()):.3f})")
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else 0.0
            rows.append((mode, "; ".join(results) + f"; peak {peak:.1f} GiB", times[0]))
        except Exception as exc:  # a variant that does not compile here is a result, not a crash
            rows.append((mode, f"failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}", None))
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    return rows


def benchmark_vae(args, device):
    """ms per VAE training step in each curriculum phase, and the data path's clip rates."""
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    pool = ClipPool(rng, 64, device)
    _sync(device)
    render_rate = 64 / (time.perf_counter() - started)
    vae = build_vae(args.vae_dim, args.vae_dec_dim).to(device)
    if device.type == "cuda":
        vae.use_channels_last()
    optimizer = make_optimizer(vae_param_groups(vae, args.weight_decay), 1e-4)
    generator = torch.Generator(device).manual_seed(0)
    rows = []

    def step(frames, batch):
        video, weight = pool.batch(batch, frames, generator, args.edge_weight)
        with autocast(device):
            loss, _, _ = vae_loss(vae, video, weight, generator, args.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pool.refresh(args.vae_refresh)

    with unfused_norms():
        for progress in (0.0, 0.5, 1.0):
            frames, batch = curriculum(progress, args)
            step(frames, batch)
            seconds = _timed(lambda: step(frames, batch), args.benchmark_steps, device)
            rows.append((f"vae {frames}f x{batch}", f"{seconds * 1e3:.1f} ms/step"))
    vae.eval()
    scenes = draw_scenes(rng, 64)
    plain = [s for s in scenes if s.frames == CLIP_FRAMES]
    seconds = _timed(lambda: render_batch(plain, device), 1, device)
    rows.append(("render 17f, no coverage", f"{len(plain) / seconds:.0f} clips/s (coverage too: {render_rate:.0f})"))
    video = to_model_video(render_batch(plain, device))
    scale = [torch.zeros(len(STD), device=device), torch.ones(len(STD), device=device)]
    with torch.no_grad(), autocast(device):
        vae.encode(video, scale)
        seconds = _timed(lambda: vae.encode(video, scale), 1, device)
    rows.append(("encode 17f (bf16 autocast)", f"{len(plain) / seconds:.0f} clips/s"))
    return rows


def run_benchmark(args, device, budget):
    rows = benchmark_vae(args, device)
    modes = args.benchmark_compile or COMPILE_MODES
    dit_rows = benchmark_dit(args, device, budget, modes)
    rows += [(f"dit compile={mode}", result) for mode, result, _ in dit_rows]
    timed = [(ms, mode) for mode, _, ms in dit_rows if ms is not None]
    if timed:
        rows.append(("fastest DiT step", f"--dit_compile {min(timed)[1]}"))
    log.info("benchmark done in %.0f s", budget.elapsed())
    print(f"== toyworld training benchmark ({device}, {args.benchmark_steps} timed steps each)")
    for name, result in rows:
        print(f"   {name}: {result}")
