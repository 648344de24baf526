"""Stage 2: train the DiT on latents of rendered clips, encoded by the frozen stage-1 VAE.

Data: scenes from the training distribution, rendered on the device in batches, encoded with the
exported VAE file through Wan2_2_VAE, kept on the device with the text embeddings of their two
captions (appearance only, and with the motion phrase). Every step draws a batch of one clip
length (17 or 33 frames, so shapes stay static), a caption choice and dropout per sample, and the
flow-matching noise; the weights' EMA is what ships.
"""
import math
import os
import time

import torch

from ...errors import WanInputError
from ...flow import seq_len_for
from ...modules.vae2_2 import Wan2_2_VAE
from ..world import caption
from .common import (DIT_SHARDS, VAE_FILE, ProgressLog, autocast, learning_rate, log, make_optimizer, stage_rng,
                     summarize_curve)
from .data import CLIP_FRAMES, draw_scenes, render_frames, to_model_video
from .dit_model import build_dit, compile_for_training, predict_velocity, uncompile
from .flow_objective import draw_step, flow_matching_loss, noisy_latents, token_timesteps
from .text import NEGATIVE_PROMPT, TEXT_LEN, embed_captions, load_text_encoder

EVAL_SIGMAS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)
RECIPE = ("dit_dim", "dit_ffn_dim", "dit_heads", "dit_layers", "dit_lr", "dit_final_lr", "dit_warmup", "dit_batch",
          "dit_shift", "image_share", "blend_share", "motion_share", "caption_dropout", "long_clip_share", "ema_decay",
          "ema_start", "weight_decay", "grad_clip", "resume_warmup")


class LatentSet:
    """Encoded clips of one frame count on the device: latents [N, 48, T, h, w] (fp32) and the
    embeddings of their captions [N, 2, L, text_dim] (index 0: appearance only, 1: with motion)."""

    def __init__(self, latents, captions):
        self.latents, self.captions = latents, captions

    def __len__(self):
        return len(self.latents)

    def context(self, clip, motion, drop, negative):
        """Contexts [B, TEXT_LEN, text_dim]: each clip's caption (with or without its motion
        phrase), or the padded negative prompt where `drop`."""
        chosen = self.captions[clip, motion.long()]
        padded = torch.nn.functional.pad(chosen, (0, 0, 0, TEXT_LEN - chosen.shape[1]))
        return torch.where(drop[:, None, None], negative, padded)


@torch.no_grad()
def encode_clips(vae, encoder, rng, count, device, deadline, frames=None, batch=64):
    """Render and encode up to `count` training clips (all over `frames` frames if given), fewer
    if `deadline` (a time.monotonic() value) comes first. Returns {frames: LatentSet}."""
    latents, captions = {}, {}
    made, last_log = 0, time.monotonic()
    while made < count and time.monotonic() < deadline:
        scenes = draw_scenes(rng, min(batch, count - made), frames)
        for length in sorted({s.frames for s in scenes}):
            group = [s for s in scenes if s.frames == length]
            video = to_model_video(render_frames(group, device)).to(vae.dtype)
            with autocast(device):
                latents.setdefault(length, []).append(vae.model.encode(video, vae.scale).float())
            captions.setdefault(length, []).extend((caption(s), caption(s, motion=True)) for s in group)
        made += len(scenes)
        if time.monotonic() - last_log > 15:
            log.info("dit data: %d clips encoded", made)
            last_log = time.monotonic()
    sets = {}
    for length, parts in latents.items():
        texts = [text for pair in captions[length] for text in pair]
        embedded = embed_captions(encoder, texts, device)
        sets[length] = LatentSet(torch.cat(parts), embedded.unflatten(0, (-1, 2)))
    return sets


def token_counts(latents, patch_size):
    """(tokens of a sample, tokens of its first latent frame) for latents [B, C, F, H, W]."""
    shape = latents.shape[1:]
    return seq_len_for(shape, patch_size), seq_len_for((shape[0], 1, *shape[2:]), patch_size)


def dit_param_groups(model, weight_decay):
    """Weight decay on weight matrices and the patch kernel; none on biases, norms, modulation."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        (decay if param.dim() > 1 and "modulation" not in name else keep).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


class DitTrainer:
    """One optimisation step at a time: draws, forward under autocast, loss, backward, clip,
    AdamW, EMA. Used by the training loop and by the benchmark, so both time the same work."""

    def __init__(self, model, ema, args, device, warmup_steps, first_step, seed):
        self.model, self.args, self.device = model, args, torch.device(device)
        self.params = [p for p in model.parameters()]
        self.ema = ema if ema is not None else [p.detach().clone() for p in self.params]
        self.optimizer = make_optimizer(dit_param_groups(model, args.weight_decay), args.dit_lr)
        self.warmup_steps, self.first_step = warmup_steps, first_step
        self.cpu_generator = torch.Generator().manual_seed(seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(seed + 1)

    def step(self, data, batch, negative, local_step, progress):
        """One step on `batch` clips of LatentSet `data`; returns (loss tensor, lr)."""
        args = self.args
        lr = learning_rate(local_step, progress, args.dit_lr, args.dit_final_lr, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        draws = draw_step(batch, len(data), self.cpu_generator, args.dit_shift, args.image_share,
                          args.blend_share, args.motion_share, args.caption_dropout)
        on_device = draws.to(self.device)
        x0 = data.latents[on_device.clip]
        timesteps = token_timesteps(draws.sigma, draws.image, *token_counts(x0, self.model.patch_size))
        noise = torch.randn(x0.shape, generator=self.noise_generator, device=self.device)
        x = noisy_latents(x0, noise, on_device.sigma, on_device.image, on_device.blend)
        context = data.context(on_device.clip, on_device.motion, on_device.drop, negative)
        with autocast(self.device):
            prediction = predict_velocity(self.model, x, timesteps, context)
        loss = flow_matching_loss(prediction, x0, noise, on_device.image)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, args.grad_clip, foreach=True)
        self.optimizer.step()
        self.update_ema(self.first_step + local_step)
        return loss, lr

    @torch.no_grad()
    def update_ema(self, global_step):
        """EMA of the weights; before `ema_start` steps it simply follows them."""
        decay = self.args.ema_decay if global_step >= self.args.ema_start else 0.0
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)


def choose_set(sets, generator, long_share):
    """The 33-frame set with probability `long_share` (when there is one), else the 17-frame one."""
    if len(sets) == 1:
        return next(iter(sets))
    frames = sorted(sets)
    return frames[-1] if torch.rand(1, generator=generator).item() < long_share else frames[0]


def batch_for(frames, args):
    """dit_batch 17-frame clips per step, half as many of the longer clips (576 vs 320 tokens)."""
    return args.dit_batch if frames == CLIP_FRAMES else max(1, args.dit_batch // 2)


def train_dit(trainer, sets, negative, window, args):
    progress_log = ProgressLog("dit", args.log_every_s)
    step, seen, lr = 0, 0, 0.0
    choice = torch.Generator().manual_seed(args.seed + 31)
    compiled_lengths = set()
    while not window.done(step):
        frames = choose_set(sets, choice, args.long_clip_share)
        batch = batch_for(frames, args)
        if args.dit_compile != "none" and frames not in compiled_lengths:
            loss, lr = first_compiled_step(trainer, sets[frames], batch, negative, step, window.progress(step), args)
            compiled_lengths.add(frames)
        else:
            loss, lr = trainer.step(sets[frames], batch, negative, step, window.progress(step))
        progress_log.add(loss)
        step, seen = step + 1, seen + batch
        progress_log.maybe_print(trainer.first_step + step, lr, window)
    progress_log.maybe_print(trainer.first_step + step, lr, window, force=True)
    return step, seen, progress_log.history


def first_compiled_step(trainer, data, batch, negative, step, progress, args):
    """The first step of a clip length compiles it. Should the compiler fail on this machine,
    the run goes on eagerly rather than losing the call: a failed step has not touched the
    weights, the optimiser or the EMA."""
    try:
        return trainer.step(data, batch, negative, step, progress)
    except Exception as exc:  # any compiler failure; eager mode is the reference path
        log.warning("dit: compile mode %s failed (%s: %s); training eagerly", args.dit_compile,
                    exc.__class__.__name__, str(exc).splitlines()[0][:200])
        uncompile(trainer.model)
        args.dit_compile = "none"
        return trainer.step(data, batch, negative, step, progress)


@torch.no_grad()
def held_out_losses(model, data, negative, device, seed, batch=64):
    """Flow-matching loss of image-conditioned samples at fixed noise levels on held-out clips
    (appearance captions, fixed noise): comparable across calls and between raw and EMA weights."""
    generator = torch.Generator(device).manual_seed(seed)
    losses = {}
    for sigma in EVAL_SIGMAS:
        total = 0.0
        for start in range(0, len(data), batch):
            x0 = data.latents[start:start + batch]
            count = len(x0)
            clip = torch.arange(start, start + count, device=device)
            no = torch.zeros(count, dtype=torch.bool, device=device)
            image = torch.ones(count, dtype=torch.bool)
            sigmas = torch.full((count,), sigma)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            x = noisy_latents(x0, noise, sigmas.to(device), image.to(device), torch.zeros(count, device=device))
            timesteps = token_timesteps(sigmas, image, *token_counts(x0, model.patch_size))
            with autocast(device):
                prediction = predict_velocity(model, x, timesteps, data.context(clip, no, no, negative))
            total += float(flow_matching_loss(prediction, x0, noise, image.to(device))) * count
        losses[f"{sigma:g}"] = round(total / len(data), 5)
    return losses


def load_ema_into(model, ema):
    with torch.no_grad():
        for param, value in zip(model.parameters(), ema):
            param.copy_(value)
    return model


def match_dit_size(args, config):
    """A resumed DiT keeps its own size (its config.json), whatever the size arguments say."""
    found = dict(dit_dim=config["dim"], dit_ffn_dim=config["ffn_dim"], dit_heads=config["num_heads"],
                 dit_layers=config["num_layers"])
    changed = {key: value for key, value in found.items() if getattr(args, key) != value}
    if changed:
        log.info("dit: continuing a model whose size differs from the size arguments: %s", changed)
        for key, value in changed.items():
            setattr(args, key, value)


def run_dit_stage(run, state, source, args, device, budget):
    """Build the data, train (or continue), write the raw fp32 shards and the EMA checkpoint
    (config.json + one bf16 safetensors file). Returns the stage summary."""
    previous = state.get("dit", {})
    call = previous.get("calls", 0)
    vae = Wan2_2_VAE(vae_pth=os.path.join(run.checkpoint, VAE_FILE), device=device,
                     dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    encoder = load_text_encoder(run.checkpoint, device)
    negative = embed_captions(encoder, [NEGATIVE_PROMPT], device, length=TEXT_LEN)[0]

    data_deadline = time.monotonic() + args.dit_data_share * (budget.total_s - budget.elapsed())
    sets = encode_clips(vae, encoder, stage_rng(args.seed, "dit", call), args.dit_clips, device, data_deadline)
    held_out = encode_clips(vae, encoder, stage_rng(args.seed, "dit-held-out", 0), args.dit_eval_clips, device,
                            math.inf, frames=CLIP_FRAMES)[CLIP_FRAMES]
    del vae, encoder
    log.info("dit data: %s clips per frame count, %.0fs elapsed", {f: len(s) for f, s in sets.items()},
             budget.elapsed())

    if not sets:
        raise WanInputError("no training clip was encoded within dit_data_share of the time budget")
    weights = source.dit_weights() if source is not None else None
    if weights is not None:
        match_dit_size(args, source.dit_config())
    model = build_dit(args.seed + 2, args.dit_dim, args.dit_ffn_dim, args.dit_heads, args.dit_layers)
    ema = None
    if weights is not None:
        raw, ema_state = weights
        model.load_state_dict(raw)
        ema = [ema_state[name].to(device) for name, _ in model.named_parameters()]
    model.to(device).train()
    trainer = DitTrainer(model, ema, args, device, args.dit_warmup if weights is None else args.resume_warmup,
                         previous.get("steps", 0), args.seed + 41 + 1000 * call)
    compile_for_training(model, args.dit_compile)
    window = budget.window(args.dit_reserve_s, args.max_steps)
    log.info("dit: %.2f M parameters, compile %s, training until %.0fs", sum(p.numel() for p in trainer.params) / 1e6,
             args.dit_compile, budget.total_s - args.dit_reserve_s)
    steps, seen, history = train_dit(trainer, sets, negative, window, args)
    seconds = window.seconds()

    # An eager copy for evaluation and export: the compiled blocks would recompile without grad.
    frozen = build_dit(args.seed + 2, args.dit_dim, args.dit_ffn_dim, args.dit_heads, args.dit_layers).to(device)
    frozen.load_state_dict(model.state_dict())
    run.save_weights(frozen.state_dict(), DIT_SHARDS)
    raw_losses = held_out_losses(frozen.eval(), held_out, negative, device, args.seed + 51)
    load_ema_into(frozen, trainer.ema)
    ema_losses = held_out_losses(frozen, held_out, negative, device, args.seed + 51)
    frozen.to(torch.bfloat16).save_pretrained(run.checkpoint)
    return {
        "steps": previous.get("steps", 0) + steps,
        "clips_seen": previous.get("clips_seen", 0) + seen,
        "seconds": round(previous.get("seconds", 0.0) + seconds, 1),
        "calls": call + 1,
        "clips_in_data": {str(f): len(s) for f, s in sets.items()},
        "recipe": {key: getattr(args, key) for key in RECIPE},
        "compile_mode": args.dit_compile,
        "steps_per_s_this_call": round(steps / max(seconds, 1e-9), 2),
        "loss_curve": summarize_curve(history),
        "held_out_loss_raw": raw_losses,
        "held_out_loss_ema": ema_losses,
    }


def log_dit_summary(summary):
    log.info("dit summary: %d steps in %d calls, %.0fs of training, %d clip samples; this call %.2f steps/s "
             "(compile %s) on %s clips", summary["steps"], summary["calls"], summary["seconds"], summary["clips_seen"],
             summary["steps_per_s_this_call"], summary["compile_mode"], summary["clips_in_data"])
    log.info("dit loss curve (step, seconds, loss): %s", summary["loss_curve"])
    log.info("dit held-out loss by sigma, image-conditioned (raw): %s", summary["held_out_loss_raw"])
    log.info("dit held-out loss by sigma, image-conditioned (EMA, shipped): %s", summary["held_out_loss_ema"])
