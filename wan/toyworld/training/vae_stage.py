"""Stage 1: train the Wan2.2 VAE (official structure, small widths) on toy-world clips, then fold
the latent statistics into it so the official MEAN/STD constants give unit latents.

Training runs through CausalVideoVAE.encode/decode themselves, i.e. the chunked streaming path
inference uses (frame 0 alone, then 4-frame chunks with the cache; one latent frame at a time in
the decoder): the temporal down/up-sampling has defined semantics only there.
"""
import contextlib
import os

import torch
import torch.nn.functional as F

from ...modules import vae_blocks
from ...modules.vae2_2 import MEAN, STD, Wan2_2_VAE, WanVAE_
from .common import (VAE_FILE, VAE_SHARDS, ProgressLog, autocast, learning_rate, log, make_optimizer, save_pth,
                     stage_rng, summarize_curve)
from .data import CLIP_FRAMES, ClipPool, draw_scenes, render_frames, to_model_video

# encode/decode `scale` that leaves the latents as the network makes them (mean 0, 1/std 1).
UNNORMALISED = (0.0, 1.0)
LOGVAR_RANGE = (-30.0, 20.0)  # the official clamp on the posterior log-variance
RECIPE = ("vae_dim", "vae_dec_dim", "vae_lr", "vae_final_lr", "vae_warmup", "kl_weight", "edge_weight",
          "vae_image_batch", "vae_short_batch", "vae_long_batch", "vae_image_share", "vae_long_share", "vae_pool",
          "vae_refresh", "vae_stats_clips", "weight_decay", "grad_clip", "resume_warmup")


def build_vae(dim=16, dec_dim=24, z_dim=48, seed=0):
    """WanVAE_ with the default PyTorch initialisation, drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanVAE_(dim=dim, dec_dim=dec_dim, z_dim=z_dim)


# ---------------------------------------------------------------------------- the fused-norm trap
def _unfused_norm_silu(norm, x, fused=None):
    return F.silu(vae_blocks.rms_normalize(x, norm.gamma))


@contextlib.contextmanager
def unfused_norms():
    """On CUDA, vae_blocks.norm_silu runs a fused compiled kernel that takes the RMS-norm gains
    detached (compiled code keeps parameter shapes static), so training through it would leave
    every gain at 1 without a word. vae_blocks offers no switch for it; while this context is
    open, every norm_silu call takes the plain differentiable form instead. The trainer keeps it
    open for its whole run: evaluation gives the same values either way, and a short-lived
    process does not win back the fused kernel's compile time (per layout and dtype)."""
    original = vae_blocks.norm_silu
    vae_blocks.norm_silu = _unfused_norm_silu
    try:
        yield
    finally:
        vae_blocks.norm_silu = original


# ---------------------------------------------------------------------------- objective
def posterior(vae, video):
    """(mu, logvar) [B, z, T, h, w] of a video [B, 3, F, H, W], through CausalVideoVAE.encode
    itself: a hook keeps the posterior convolution's output, whose second half encode drops."""
    kept = []
    hook = vae.conv1.register_forward_hook(lambda module, inputs, output: kept.append(output))
    try:
        mu = vae.encode(video, UNNORMALISED)
    finally:
        hook.remove()
    logvar = kept[0][:, vae.z_dim:].float().clamp(*LOGVAR_RANGE)
    return mu, logvar


def reconstruction_loss(recon, target, weight):
    """Mean over pixels and channels of weight * (|error| + error^2)."""
    error = recon.float() - target
    return ((error.abs() + error.square()) * weight).mean()


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)), mean per latent element."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).mean()


def vae_loss(vae, video, weight, generator, kl_weight):
    """(total, reconstruction, kl) for one batch; the decoder sees a posterior sample."""
    mu, logvar = posterior(vae, video)
    noise = torch.randn(mu.shape, generator=generator, device=mu.device)
    recon = vae.decode(mu + noise * (0.5 * logvar).exp(), UNNORMALISED)
    rec, kl = reconstruction_loss(recon, video, weight), kl_divergence(mu, logvar)
    return rec + kl_weight * kl, rec, kl


def curriculum(progress, args):
    """(frames, batch) at this point of the stage: single frames, then 9-frame, then 17-frame clips."""
    if progress < args.vae_image_share:
        return 1, args.vae_image_batch
    if progress < 1 - args.vae_long_share:
        return 9, args.vae_short_batch
    return CLIP_FRAMES, args.vae_long_batch


def vae_param_groups(vae, weight_decay):
    """Weight decay on convolution kernels only, not on biases or RMS-norm gains."""
    decay = [p for p in vae.parameters() if p.dim() > 1 and p.shape[1:].numel() > 1]
    keep = [p for p in vae.parameters() if not (p.dim() > 1 and p.shape[1:].numel() > 1)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def train_vae(vae, pool, window, args, device, first_step=0):
    """The training loop; returns (steps done, clips seen, loss history)."""
    vae.train().requires_grad_(True)
    optimizer = make_optimizer(vae_param_groups(vae, args.weight_decay), args.vae_lr)
    warmup = args.vae_warmup if first_step == 0 else args.resume_warmup
    generator = torch.Generator(device).manual_seed(args.seed + 11)
    progress_log = ProgressLog("vae", args.log_every_s)
    step = seen = 0
    lr, frames = 0.0, None
    with unfused_norms():
        while not window.done(step):
            progress = window.progress(step)
            lr = learning_rate(step, progress, args.vae_lr, args.vae_final_lr, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            frames, batch = curriculum(progress, args)
            video, weight = pool.batch(batch, frames, generator, args.edge_weight)
            with autocast(device):
                loss, _, _ = vae_loss(vae, video, weight, generator, args.kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), args.grad_clip)
            optimizer.step()
            pool.refresh(args.vae_refresh)
            progress_log.add(loss)
            step, seen = step + 1, seen + batch
            progress_log.maybe_print(first_step + step, lr, window, frames=frames)
        progress_log.maybe_print(first_step + step, lr, window, force=True, frames=frames)
    return step, seen, progress_log.history


# ---------------------------------------------------------------------------- statistics and folding
@torch.no_grad()
def latent_statistics(vae, frames, batch, device):
    """Per-channel mean and std of the posterior mean over clips (uint8 frames [N, F, H, W, 3]).
    Sums of a batch are taken in fp32 and accumulated across batches in fp64 (48 numbers)."""
    total = square = count = 0
    for start in range(0, len(frames), batch):
        with autocast(device):
            mu = vae.encode(to_model_video(frames[start:start + batch].to(device)), UNNORMALISED)
        total = total + mu.sum(dim=(0, 2, 3, 4)).double()
        square = square + mu.square().sum(dim=(0, 2, 3, 4)).double()
        count += mu.numel() // mu.shape[1]
    mean = total / count
    return mean, (square / count - mean.square()).clamp_min(0).sqrt()


def floor_collapsed(std, fraction=0.05):
    """Channels the KL term switched off (posterior mean ~constant, std far below the others')
    keep their small scale instead of being blown up to unit std: folding divides by the std, and
    would turn a collapsed channel into amplified noise the DiT must then model. Returns the std
    to fold with and how many channels were floored."""
    floor = fraction * std.median()
    return std.clamp_min(floor), int((std < floor).sum())


@torch.no_grad()
def fold_latent_statistics_(vae, mean, std, target_mean=MEAN, target_std=STD):
    """Rescale the posterior conv (conv1) and the latent conv (conv2) so that, for the same
    input, (conv1's new mu - target_mean) / target_std equals (old mu - mean) / std, and the
    decoder sees the same conv2 output as before. Exact algebra (done in fp64):
        conv1 mu rows:     W' = r W,   b' = r b + M - S m / s,   r = S / s
        conv1 logvar rows: b' = b + 2 log r
        conv2:             W2' = W2 diag(1 / r),   b2' = b2 + W2 (m - M / r)
    with m, s the measured statistics and M, S the targets (the wrapper's MEAN and STD)."""
    z = vae.z_dim
    m, s = mean.double().cpu(), std.double().cpu()
    target_m, target_s = torch.tensor(target_mean, dtype=torch.float64), torch.tensor(target_std, dtype=torch.float64)
    ratio = target_s / s
    w1, b1 = vae.conv1.weight, vae.conv1.bias
    new_w1, new_b1 = w1.double().cpu(), b1.double().cpu()
    new_w1[:z] *= ratio.view(-1, 1, 1, 1, 1)
    new_b1[:z] = ratio * new_b1[:z] + target_m - target_s * m / s
    new_b1[z:] += 2 * ratio.log()
    w2, b2 = vae.conv2.weight, vae.conv2.bias
    kernel2 = w2.double().cpu()[:, :, 0, 0, 0]
    new_b2 = b2.double().cpu() + kernel2 @ (m - target_m / ratio)
    new_w2 = w2.double().cpu() / ratio.view(1, -1, 1, 1, 1)
    for param, value in ((w1, new_w1), (b1, new_b1), (w2, new_w2), (b2, new_b2)):
        param.copy_(value.to(param.dtype))
    return vae


# ---------------------------------------------------------------------------- export and gates
def save_vae_checkpoint(vae, path):
    """The official Wan2.2_VAE.pth layout (a plain state dict), in bf16."""
    save_pth({k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in vae.state_dict().items()}, path)


def psnr(a, b):
    """PSNR in dB between uint8 videos (per clip, on the 0..255 scale)."""
    mse = (a.float() - b.float()).square().flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(255.0 ** 2 / mse)


def to_uint8(video):
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3], rounded as from_model_range does."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


@torch.no_grad()
def vae_gates(vae_path, frames, device):
    """Load the exported file through Wan2_2_VAE (the inference class, fp32) and measure, on
    held-out 17-frame clips (uint8 frames [N, F, H, W, 3]): reconstruction PSNR, per-channel latent
    mean/std (the wrapper normalises with the official constants, so ~0/1 if the fold worked),
    and whether encoding frame 0 alone gives frame 0 of the clip's latent."""
    wrapper = Wan2_2_VAE(vae_pth=vae_path, device=device, dtype=torch.float32)
    videos = [v for v in to_model_video(frames.to(device))]
    latents = wrapper.encode(videos)
    recon = torch.stack(wrapper.decode(latents))
    scores = psnr(to_uint8(recon), frames.to(device))
    stacked = torch.stack(latents)
    channel_mean = stacked.mean(dim=(0, 2, 3, 4))
    channel_std = stacked.std(dim=(0, 2, 3, 4))
    first = torch.stack(wrapper.encode([v[:, :1] for v in videos]))
    return {
        "psnr_mean_db": round(float(scores.mean()), 2),
        "psnr_min_db": round(float(scores.min()), 2),
        "latent_mean_abs_max": round(float(channel_mean.abs().max()), 4),
        "latent_std_min": round(float(channel_std.min()), 4),
        "latent_std_max": round(float(channel_std.max()), 4),
        "first_frame_latent_max_diff": float((first - stacked[:, :, :1]).abs().max()),
        "clips": len(videos),
    }, recon


def frozen_gains(vae):
    """Names of RMS-norm gains that never moved from their initial value of 1."""
    return [name for name, p in vae.named_parameters() if name.endswith("gamma") and bool((p == 1).all())]


def comparison_strip(frames, recon, clips=2, picks=(0, 8, 16)):
    """uint8 image [2 * clips * H, len(picks) * W, 3]: source rows above reconstruction rows."""
    recon = to_uint8(recon)
    rows = []
    for clip in range(min(clips, len(frames))):
        for video in (frames, recon):
            rows.append(torch.cat([video[clip, i].cpu() for i in picks], dim=1))
    return torch.cat(rows, dim=0)


def run_vae_stage(run, state, source, args, device, budget):
    """Train (or continue), fold, export the bf16 checkpoint file, measure the gates, write the
    fp32 resume shards. Returns the stage summary (also stored in state["vae"])."""
    previous = state.get("vae", {})
    weights = source.vae_weights() if source is not None else None
    if weights is not None:  # a resumed VAE keeps its own widths, read off its weights
        args.vae_dim = weights["encoder.conv1.weight"].shape[0]
        args.vae_dec_dim = weights["decoder.head.2.weight"].shape[1]
    vae = build_vae(args.vae_dim, args.vae_dec_dim, seed=args.seed + 1)
    if weights is not None:
        vae.load_state_dict(weights)
    vae.to(device)
    if device.type == "cuda":
        vae.use_channels_last()
    rng = stage_rng(args.seed, "vae", previous.get("calls", 0))
    pool = ClipPool(rng, args.vae_pool, device)
    log.info("vae: %.2f M parameters, pool of %d clips rendered, %.0fs elapsed",
             sum(p.numel() for p in vae.parameters()) / 1e6, len(pool), budget.elapsed())
    window = budget.window(args.vae_reserve_s, args.max_steps)
    steps, seen, history = train_vae(vae, pool, window, args, device, previous.get("steps", 0))
    seconds = window.seconds()
    del pool

    vae.eval().requires_grad_(False)
    stats_frames = render_frames(draw_scenes(rng, args.vae_stats_clips, CLIP_FRAMES), device)
    mean, std = latent_statistics(vae, stats_frames, args.vae_eval_batch, device)
    del stats_frames
    folded_std, collapsed = floor_collapsed(std)
    fold_latent_statistics_(vae, mean, folded_std)
    vae_path = os.path.join(run.checkpoint, VAE_FILE)
    save_vae_checkpoint(vae, vae_path)
    run.save_weights(vae.state_dict(), VAE_SHARDS)

    held_out = stage_rng(args.seed, "vae-held-out", 0)
    eval_frames = render_frames(draw_scenes(held_out, args.vae_eval_clips, CLIP_FRAMES), device)
    gates, recon = vae_gates(vae_path, eval_frames, device)
    gates["frozen_gains"] = len(frozen_gains(vae))
    summary = {
        "steps": previous.get("steps", 0) + steps,
        "clips_seen": previous.get("clips_seen", 0) + seen,
        "seconds": round(previous.get("seconds", 0.0) + seconds, 1),
        "calls": previous.get("calls", 0) + 1,
        "recipe": {key: getattr(args, key) for key in RECIPE},
        "measured_latent_mean_abs_max": round(float(mean.abs().max()), 4),
        "measured_latent_std_range": [round(float(std.min()), 4), round(float(std.max()), 4)],
        "collapsed_channels": collapsed,
        "loss_curve": summarize_curve(history),
        "gates": gates,
    }
    return summary, comparison_strip(eval_frames, recon)


def log_vae_summary(summary):
    gates = summary["gates"]
    log.info("vae summary: %d steps (%d this stage's calls), %.0fs of training, %d clips seen", summary["steps"],
             summary["calls"], summary["seconds"], summary["clips_seen"])
    log.info("vae gate: held-out 17-frame PSNR %.2f dB mean, %.2f dB min (%d clips; target >= 32)",
             gates["psnr_mean_db"], gates["psnr_min_db"], gates["clips"])
    log.info("vae gate: after folding, latent |mean| <= %.3f, std in [%.3f, %.3f] (target ~0 / ~1; %d collapsed "
             "channels keep a small std)", gates["latent_mean_abs_max"], gates["latent_std_min"],
             gates["latent_std_max"], summary["collapsed_channels"])
    log.info("vae gate: encode(frame 0) vs frame 0 of the clip latent, max diff %.2e (target < 1e-3)",
             gates["first_frame_latent_max_diff"])
    log.info("vae gate: RMS-norm gains still exactly 1: %d (target 0)", gates["frozen_gains"])
    log.info("vae loss curve (step, seconds, loss): %s", summary["loss_curve"])
