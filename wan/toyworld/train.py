"""Train the toy-world TI2V model and export it in the official TI2V-5B layout.

    python -m wan.toyworld.train --stage text --out_dir RUN0       # only the text encoder (CPU, seconds)
    python -m wan.toyworld.train --stage vae --out_dir RUN [--resume DIR] [--time_budget_s 540]
    python -m wan.toyworld.train --stage dit --out_dir RUN2 --resume RUN [--dit_compile blocks]
    python -m wan.toyworld.train --stage export --out_dir RUN3 --resume RUN2
    python -m wan.toyworld.train --stage dit --out_dir X --benchmark_steps 10   # timings only

Every schedule (learning rates, the VAE curriculum, the DiT data budget) is a function of the time
elapsed since the script started (after its imports), so a call ends inside --time_budget_s whatever the step rate.
--resume takes a run folder (resume/state.json, fp32 shards) or an exported checkpoint folder.
--pack_dir copies the run folder as at most a handful of files (big files as they are, small ones
in small_files.tar) for transports that limit the file count. docs/TRAINING.md has the recipe.
"""
import copy
import os

import torch
from PIL import Image

from ..errors import WanInputError
from ..modules.model import WanModel
from ..cli import ArgumentParser, run_cli, setup_logging
from ..utils.fileio import atomic_path
from .training.benchmark import run_benchmark
from .training.common import (DIT_SHARDS, DIT_WEIGHTS, VAE_FILE, Budget, ResumeSource, RunFolder, log, new_state,
                              resolve_device)
from .training.dit_model import COMPILE_MODES, DIT_SIZE
from .training.dit_stage import log_dit_summary, run_dit_stage
from .training.export import finish_export, pack_for_transport
from .training.text import check_distinct_captions, has_text_encoder, load_text_encoder, write_text_encoder
from .training.vae_stage import log_vae_summary, run_vae_stage, unfused_norms

STAGES = ("text", "vae", "dit", "export")


def build_parser():
    parser = ArgumentParser(prog="python -m wan.toyworld.train", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", required=True, choices=STAGES, help="text: write the frozen text encoder and tokenizer only; "
        "vae: train and fold the VAE (writes the text encoder too if missing); dit: train the DiT on the frozen "
        "VAE's latents and export; export: rewrite the checkpoint's model card and provenance")
    add("--out_dir", required=True, help="run folder to write (checkpoint/ and resume/)")
    add("--resume", help="run folder or exported checkpoint folder to continue from")
    add("--seed", type=int, default=0, help="base seed of a new run (a resumed run keeps its own)")
    add("--device", help="cuda or cpu (default: cuda when available)")
    add("--time_budget_s", type=float, default=540.0,
        help="wall-clock seconds for the whole call, counted from the end of the Python imports")
    add("--max_steps", type=int, help="stop after this many steps; schedules then follow steps, not time")
    add("--pack_dir", help="also copy the run folder here as few files (see the module help)")
    add("--benchmark_steps", type=int, default=0, help="time N steps of each variant instead of training")
    add("--benchmark_compile", nargs="*", choices=COMPILE_MODES, help="DiT compile modes to benchmark (all)")
    add("--log_every_s", type=float, default=15.0)
    add("--weight_decay", type=float, default=0.01)
    add("--grad_clip", type=float, default=1.0)
    add("--resume_warmup", type=int, default=100, help="warm-up steps of the fresh AdamW after a resume")

    vae = parser.add_argument_group("VAE stage")
    vae.add_argument("--vae_dim", type=int, default=16, help="encoder base width (official 160)")
    vae.add_argument("--vae_dec_dim", type=int, default=24, help="decoder base width (official 256)")
    vae.add_argument("--vae_lr", type=float, default=1e-3)
    vae.add_argument("--vae_final_lr", type=float, default=1e-4)
    vae.add_argument("--vae_warmup", type=int, default=100)
    vae.add_argument("--kl_weight", type=float, default=1e-4)
    vae.add_argument("--edge_weight", type=float, default=4.0, help="loss weight of pixels near object edges")
    vae.add_argument("--vae_image_batch", type=int, default=64, help="batch of the single-frame phase")
    vae.add_argument("--vae_short_batch", type=int, default=16, help="batch of the 9-frame phase")
    vae.add_argument("--vae_long_batch", type=int, default=8, help="batch of the 17-frame phase")
    vae.add_argument("--vae_image_share", type=float, default=0.15, help="time share of single frames (first)")
    vae.add_argument("--vae_long_share", type=float, default=0.25, help="time share of 17-frame clips (last)")
    vae.add_argument("--vae_pool", type=int, default=256, help="rendered clips kept on the device")
    vae.add_argument("--vae_refresh", type=int, default=2, help="pool clips re-rendered per step")
    vae.add_argument("--vae_stats_clips", type=int, default=512, help="clips measured for the latent fold")
    vae.add_argument("--vae_eval_clips", type=int, default=64, help="held-out 17-frame clips for the gates")
    vae.add_argument("--vae_eval_batch", type=int, default=16)
    vae.add_argument("--vae_reserve_s", type=float, default=60.0,
                     help="seconds kept after training for the fold, export and gates")

    dit = parser.add_argument_group("DiT stage")
    dit.add_argument("--dit_dim", type=int, default=DIT_SIZE["dim"])
    dit.add_argument("--dit_ffn_dim", type=int, default=DIT_SIZE["ffn_dim"])
    dit.add_argument("--dit_heads", type=int, default=DIT_SIZE["num_heads"])
    dit.add_argument("--dit_layers", type=int, default=DIT_SIZE["num_layers"])
    dit.add_argument("--dit_lr", type=float, default=3e-4)
    dit.add_argument("--dit_final_lr", type=float, default=3e-5)
    dit.add_argument("--dit_warmup", type=int, default=300)
    dit.add_argument("--dit_batch", type=int, default=128, help="17-frame clips per step (33-frame: half)")
    dit.add_argument("--dit_shift", type=float, default=3.0, help="timestep shift of the training sigmas")
    dit.add_argument("--image_share", type=float, default=0.7, help="share of image-conditioned samples")
    dit.add_argument("--blend_share", type=float, default=0.5,
                     help="share of image-conditioned samples with a little noise in frame 0")
    dit.add_argument("--motion_share", type=float, default=0.5, help="share of captions with the motion phrase")
    dit.add_argument("--caption_dropout", type=float, default=0.1, help="share of captions -> negative prompt")
    dit.add_argument("--long_clip_share", type=float, default=0.25, help="share of steps on 33-frame clips")
    dit.add_argument("--ema_decay", type=float, default=0.9995)
    dit.add_argument("--ema_start", type=int, default=1000, help="steps before the EMA starts averaging")
    dit.add_argument("--dit_clips", type=int, default=60000, help="clips rendered and encoded per call")
    dit.add_argument("--dit_data_share", type=float, default=0.3,
                     help="at most this share of the remaining time goes to rendering and encoding")
    dit.add_argument("--dit_eval_clips", type=int, default=64, help="held-out clips for the loss by sigma")
    dit.add_argument("--dit_compile", default="auto", choices=("auto",) + COMPILE_MODES,
                     help="how the blocks are compiled for training: auto is blocks on CUDA, none on the CPU "
                          "(see --benchmark_steps); a mode that fails to compile falls back to none")
    dit.add_argument("--dit_reserve_s", type=float, default=45.0,
                     help="seconds kept after training for evaluation and export")
    parser.add_argument("--ship", default="ema", choices=("ema", "raw"),
                        help="export stage: the DiT weights the checkpoint ships (raw: when the EMA still lags a "
                             "short run; compare the held-out losses the dit stage prints)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    budget = Budget(args.time_budget_s)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls (time MLP, head)
        torch.backends.cudnn.benchmark = True  # the VAE's convolutions see a handful of fixed shapes
    with unfused_norms():
        run_stage(args, device, budget)


def run_stage(args, device, budget):
    if args.benchmark_steps:
        run_benchmark(args, device, budget)
        return
    run = RunFolder(args.out_dir)
    if args.stage == "export" and not args.resume:
        args.resume = args.out_dir  # export a finished run in place
    source = ResumeSource(args.resume) if args.resume else None
    if args.dit_compile == "auto":
        args.dit_compile = "blocks" if device.type == "cuda" else "none"
    state = copy.deepcopy(source.state) if source is not None else new_state(args.seed)
    args.seed = state["seed"]
    if source is not None:
        source.copy_checkpoint_into(run)
    lines = STAGE_RUNNERS[args.stage](run, state, source, args, device, budget)
    run.write_state(state)
    if args.pack_dir:
        pack_for_transport(run.root, args.pack_dir)
    print(f"== toyworld train: stage {args.stage} done in {budget.elapsed():.0f} s "
          f"(budget {args.time_budget_s:.0f} s), run folder {run.root}")
    for line in lines:
        print(f"   {line}")


def text_stage(run, state, source, args, device, budget):
    if not has_text_encoder(run.checkpoint):
        write_text_encoder(run.checkpoint, args.seed)
    closest = check_distinct_captions(load_text_encoder(run.checkpoint, device), device)
    return [f"text encoder: {run.checkpoint}, appearance captions distinct (closest pair {closest:.3g} apart)"]


def vae_stage(run, state, source, args, device, budget):
    lines = [] if has_text_encoder(run.checkpoint) else text_stage(run, state, source, args, device, budget)
    if state.get("dit"):
        log.warning("vae stage: the DiT of this run was trained on the old VAE's latents; it is dropped")
        drop_dit(run)
        state["dit"] = {}
    summary, strip = run_vae_stage(run, state, source, args, device, budget)
    state["vae"] = summary
    with atomic_path(os.path.join(run.root, "reports", "vae_reconstructions.png")) as tmp:
        Image.fromarray(strip.numpy()).save(tmp, format="PNG")
    log_vae_summary(summary)
    gates = summary["gates"]
    return lines + [f"vae: {summary['steps']} steps, held-out PSNR {gates['psnr_mean_db']:.2f} dB "
            f"(min {gates['psnr_min_db']:.2f}), latent |mean| <= {gates['latent_mean_abs_max']:.3f}, "
            f"std {gates['latent_std_min']:.3f}..{gates['latent_std_max']:.3f} "
            f"({summary['collapsed_channels']} collapsed), "
            f"frame-0 diff {gates['first_frame_latent_max_diff']:.1e}, frozen gains {gates['frozen_gains']}"]


def dit_stage(run, state, source, args, device, budget):
    if not (os.path.isfile(os.path.join(run.checkpoint, VAE_FILE)) and has_text_encoder(run.checkpoint)):
        raise WanInputError(f"{run.checkpoint} has no trained VAE and text encoder: run the vae stage first and "
                            "resume from its folder")
    summary = run_dit_stage(run, state, source, args, device, budget)
    state["dit"] = summary
    finish_export(run.checkpoint, state)
    log_dit_summary(summary)
    ema = summary["held_out_loss_ema"]
    return [f"dit: {summary['steps']} steps ({summary['clips_seen']} clip samples), loss curve "
            f"{[round(loss, 4) for _, _, loss in summary['loss_curve']]}",
            f"dit: held-out EMA loss by sigma {ema}",
            f"checkpoint: {run.checkpoint}"]


def export_stage(run, state, source, args, device, budget):
    if args.ship == "raw":  # the EMA lags a short run (higher held-out loss): ship the raw weights instead
        raw, _ = source.dit_weights()
        model = WanModel.from_pretrained(run.checkpoint, torch_dtype=torch.float32)
        model.load_state_dict(raw)
        model.to(torch.bfloat16).save_pretrained(run.checkpoint)
    state["dit"]["shipped"] = args.ship
    provenance = finish_export(run.checkpoint, state)
    size = sum(entry["bytes"] for entry in provenance["files"].values())
    return [f"checkpoint: {run.checkpoint}, {len(provenance['files']) + 1} files, {size / 1e6:.1f} MB"]


def drop_dit(run):
    """Remove a DiT that no longer matches the VAE: its config, weights and fp32 shards."""
    stale = [os.path.join(run.checkpoint, name) for name in ("config.json", f"{DIT_WEIGHTS}.safetensors")]
    if os.path.isdir(run.resume):
        stale += [os.path.join(run.resume, name) for name in os.listdir(run.resume) if name.startswith(DIT_SHARDS)]
    for path in stale:
        if os.path.isfile(path):
            os.remove(path)


STAGE_RUNNERS = {"text": text_stage, "vae": vae_stage, "dit": dit_stage, "export": export_stage}


if __name__ == "__main__":
    run_cli(main)
