"""Edit a video with Wan2.2 TI2V-5B by flow inversion: source video + edited first frame + prompts
-> an edited video that keeps the source motion.

    python ti2v_inversion_edit.py --ckpt_dir ./Wan2.2-TI2V-5B --video in.mp4 \\
        --source_prompt "A kitten turning its head" --target_prompt "A dog turning its head" \\
        --target_image dog_first_frame.png --output edited.mp4 --comparison

Batch mode: --manifest edits.jsonl, one JSON object per line with video, source_prompt,
target_prompt, target_image (optional) and output; models load once, finished outputs are skipped.
"""
import json
import logging
import os

from wan.errors import WanInputError
from wan.flow import INVERSION_SCHEMES, SOLVERS
from wan import distributed, staged
from wan.inversion_edit import EDIT_DEFAULTS, EditInputs, StagedEdit, TI2VInversionEditor, write_comparison
from wan.utils.cli import ArgumentParser, add_speed_flags, run_cli, setup_logging, vae_dtype
from wan.utils.utils import save_video, str2bool

log = logging.getLogger("ti2v_inversion_edit")


def parse_args(argv=None):
    p = ArgumentParser(description="Training-free video editing with Wan2.2 TI2V-5B by flow inversion.")
    p.add_argument("--ckpt_dir", required=True, help="Wan2.2-TI2V-5B checkpoint directory (official layout)")
    p.add_argument("--video", help="source video")
    p.add_argument("--source_prompt", help="prompt describing the source video")
    p.add_argument("--target_prompt", help="prompt describing the edited video")
    p.add_argument("--target_image", default=None, help="edited first frame (default: the source's first frame)")
    p.add_argument("--output", help="output .mp4")
    p.add_argument("--frame_num", type=int, help="frames to edit, 4n+1 (default 17)")
    p.add_argument("--inversion_steps", type=int, help="default 50")
    p.add_argument("--generation_steps", type=int, help="default 50")
    p.add_argument("--guide_scale_inv", type=float, help="CFG scale while inverting (default 1: off)")
    p.add_argument("--guide_scale_gen", type=float, help="CFG scale while regenerating (default 5)")
    p.add_argument("--shift", type=float, help="noise schedule shift (default 5)")
    p.add_argument("--seed", type=int, default=42, help="kept for compatibility; the edit is deterministic")
    p.add_argument("--n_prompt", default=None, help="negative prompt (default: the official one)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:0 if available, else cpu)")
    p.add_argument("--offload_model", type=str2bool, default=False, help="move models to the CPU between uses")
    p.add_argument("--t5_cpu", action="store_true", help="run the T5 encoder on the CPU")
    p.add_argument("--convert_model_dtype", action="store_true", help="cast the DiT weights to bf16 on load")
    p.add_argument("--max_area", type=int, help="output pixel area, aspect ratio kept (default 704*1280)")
    p.add_argument("--sample_solver", choices=SOLVERS, help="solver for the regeneration (default euler)")
    p.add_argument("--inversion_scheme", choices=INVERSION_SCHEMES,
                   help="ODE scheme for the inversion (default euler; fixed_point: exact inverse of Euler "
                        "regeneration; heun/midpoint: second order)")
    p.add_argument("--inversion_strength", type=float,
                   help="fraction of the schedule to invert (default 1); < 1 keeps more of the source")
    p.add_argument("--fps", type=float, default=None, help="output fps (default: the source's)")
    p.add_argument("--save_inversion", default=None, help="write the inverted latent (safetensors) here")
    p.add_argument("--load_inversion", default=None, help="reuse an inversion saved with --save_inversion")
    p.add_argument("--comparison", action="store_true",
                   help="also write OUTPUT_comparison.mp4 (source | target image | edit) and first-frame PNGs")
    p.add_argument("--manifest", default=None, help="JSONL file of edits to run with the models loaded once")
    p.add_argument("--ulysses_size", type=int, default=1, help="Ulysses sequence-parallel size (torchrun)")
    p.add_argument("--dit_fsdp", action="store_true", help="shard the DiT over the GPUs of an edit (torchrun)")
    p.add_argument("--t5_fsdp", action="store_true", help="shard T5 over the GPUs of an edit (torchrun)")
    p.add_argument("--cfg_parallel", action="store_true", help="guidance branches on two halves of the GPUs")
    p.add_argument("--stage", default="all", choices=sorted(staged.STAGE_MODELS),
                   help="run one stage: encode (T5 + VAE), denoise (DiT), decode (VAE); default all")
    p.add_argument("--stage_dir", default=None, help="folder for the files the stages exchange")
    add_speed_flags(p)
    args = p.parse_args(argv)
    # Flags given explicitly are checked against a stage file's settings; the rest take defaults.
    args.requested = {name: getattr(args, name) for name in EDIT_DEFAULTS}
    for name, value in EDIT_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


EDIT_FIELDS = ("video", "source_prompt", "target_prompt", "output")
STAGE_FIELDS = {"all": EDIT_FIELDS, "encode": EDIT_FIELDS[:3], "denoise": (), "decode": ("output",)}


def edits_from(args):
    """The edit jobs: the one described by the flags, or one per manifest line."""
    if args.manifest is None:
        missing = [f"--{name}" for name in STAGE_FIELDS[args.stage] if getattr(args, name) is None]
        if missing:
            raise WanInputError(f"missing {', '.join(missing)} (or give --manifest)")
        return [{name: getattr(args, name) for name in (*EDIT_FIELDS, "target_image")}]
    if not os.path.isfile(args.manifest):
        raise WanInputError(f"--manifest: file not found: {args.manifest}")
    edits = []
    with open(args.manifest) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                edit = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WanInputError(f"--manifest {args.manifest} line {number}: not JSON ({exc.msg})") from None
            missing = [name for name in EDIT_FIELDS if not edit.get(name)]
            if missing:
                raise WanInputError(f"--manifest {args.manifest} line {number}: missing {', '.join(missing)}")
            edits.append(edit)
    if not edits:
        raise WanInputError(f"--manifest {args.manifest} lists no edits")
    return edits


def check_args(args):
    if args.frame_num < 1 or args.frame_num % 4 != 1:
        raise WanInputError(f"--frame_num must be 4n+1 (1, 5, 9, 13, 17, ...), got {args.frame_num}")
    for flag in ("inversion_steps", "generation_steps"):
        if getattr(args, flag) < 1:
            raise WanInputError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.load_inversion and args.manifest:
        raise WanInputError("--load_inversion applies to a single edit, not to --manifest")
    if args.stage != "all" and (args.manifest or not args.stage_dir):
        raise WanInputError(f"--stage {args.stage} needs --stage_dir and a single edit (no --manifest)")
    if not os.path.isdir(args.ckpt_dir):
        raise WanInputError(f"--ckpt_dir: checkpoint directory not found: {args.ckpt_dir}")


def check_edit_inputs(edit):
    """Before any model loads: the source and the edited frame exist."""
    if not os.path.isfile(edit["video"]):
        raise WanInputError(f"--video: file not found: {edit['video']}")
    if edit.get("target_image") and not os.path.isfile(edit["target_image"]):
        raise WanInputError(f"--target_image: file not found: {edit['target_image']}")


def stage_path(args, name):
    return os.path.join(args.stage_dir, name)


def run_edit(staged_edit, args, edit, fingerprint):
    """One edit, whole or as the stage `--stage` names; stages exchange files in --stage_dir."""
    options = {name: getattr(args, name) for name in EDIT_DEFAULTS}
    if args.stage in ("all", "encode"):
        inputs = staged_edit.encode(edit["video"], edit["source_prompt"], edit["target_prompt"],
                                    edit.get("target_image"), **options)
        if args.stage == "encode":
            if args.writes_outputs:
                staged.write_stage_file(stage_path(args, staged.ENCODED), inputs.tensors,
                                        {"settings": inputs.settings, "fingerprint": fingerprint})
                log.info("encoded; next: --stage denoise --stage_dir %s", args.stage_dir)
            return
    else:
        path = stage_path(args, staged.ENCODED)
        tensors, header = staged.read_stage_file(path, "encoded stage file")
        staged.check_model(header, fingerprint, path)
        staged.check_requested(header["settings"], {k: v for k, v in args.requested.items() if k in options}, path)
        inputs = EditInputs(tensors, header["settings"])
    if args.stage in ("all", "denoise"):
        latent = staged_edit.denoise(inputs, args.load_inversion, args.save_inversion if args.writes_outputs else None)
        if args.stage == "denoise":
            if args.writes_outputs:
                staged.save_latent(latent, inputs.settings, fingerprint, stage_path(args, staged.LATENT))
                log.info("denoised; next: --stage decode --stage_dir %s", args.stage_dir)
            return
    else:
        latent, _ = staged.load_latent(stage_path(args, staged.LATENT), fingerprint)
    write_outputs(staged_edit, args, edit, inputs.settings, latent)


def write_outputs(staged_edit, args, edit, settings, latent):
    if not args.writes_outputs:
        return
    edited = staged_edit.decode(latent)
    fps = args.fps or settings["fps"]
    output = edit["output"]
    save_video(edited[None], save_file=output, fps=fps, nrow=1)
    if args.comparison:
        editor = staged_edit.editor
        clip = editor.load_source(settings["video"], settings["frame_num"], settings["max_area"])
        write_comparison(output, clip.frames, editor.target_frame(settings["target_image"], clip), edited, fps)
    log.info("wrote %s (%d frames, %dx%d, %.3g fps)", output, edited.shape[1], edited.shape[3], edited.shape[2], fps)


def main(argv=None):
    env = distributed.init_distributed()  # a no-op without torchrun
    setup_logging(env.rank)
    args = parse_args(argv)
    check_args(args)
    # Under torchrun with --manifest and no other parallel flag, each GPU takes its share of edits.
    layout = distributed.make_layout(args.ulysses_size, args.cfg_parallel, data_parallel=args.manifest is not None)
    args.writes_outputs = layout.writes_outputs
    edits = edits_from(args)
    if args.manifest is None:
        pending = edits
    else:
        pending = distributed.my_pending_jobs(edits, lambda e: os.path.exists(e["output"]), layout)
        log.info("%d of %d edits to run here", len(pending), len(edits))
    if not pending:
        return []
    if args.stage in ("all", "encode"):
        for edit in pending:
            check_edit_inputs(edit)
    editor = TI2VInversionEditor(args.ckpt_dir, device=args.device or env.device, offload_model=args.offload_model,
                                 t5_cpu=args.t5_cpu, convert_model_dtype=args.convert_model_dtype,
                                 compile_model=args.compile, vae_dtype=vae_dtype(args.vae_dtype),
                                 load=staged.STAGE_MODELS[args.stage], t5_fsdp=args.t5_fsdp, dit_fsdp=args.dit_fsdp,
                                 use_sp=args.ulysses_size > 1, cfg_parallel=args.cfg_parallel,
                                 step_cache=args.step_cache, fp8=args.fp8, attention=args.attention)
    for edit in distributed.main_tqdm(pending, desc="edits", disable=len(pending) < 2):
        run_edit(StagedEdit(editor), args, edit, editor.model_id)
    return [e["output"] for e in pending]


if __name__ == "__main__":
    run_cli(main)
