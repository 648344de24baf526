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

import torch

from wan.errors import WanInputError
from wan.flow import INVERSION_SCHEMES, SOLVERS
from wan.inversion_edit import Inversion, TI2VInversionEditor
from wan.utils.cli import ArgumentParser, add_speed_flags, run_cli, setup_logging, vae_dtype
from wan.utils.utils import save_video, str2bool
from wan.utils.video_io import from_model_range, write_video

log = logging.getLogger("ti2v_inversion_edit")


def parse_args(argv=None):
    p = ArgumentParser(description="Training-free video editing with Wan2.2 TI2V-5B by flow inversion.")
    p.add_argument("--ckpt_dir", required=True, help="Wan2.2-TI2V-5B checkpoint directory (official layout)")
    p.add_argument("--video", help="source video")
    p.add_argument("--source_prompt", help="prompt describing the source video")
    p.add_argument("--target_prompt", help="prompt describing the edited video")
    p.add_argument("--target_image", default=None, help="edited first frame (default: the source's first frame)")
    p.add_argument("--output", help="output .mp4")
    p.add_argument("--frame_num", type=int, default=17, help="frames to edit, 4n+1")
    p.add_argument("--inversion_steps", type=int, default=50)
    p.add_argument("--generation_steps", type=int, default=50)
    p.add_argument("--guide_scale_inv", type=float, default=1.0, help="CFG scale while inverting (1: off)")
    p.add_argument("--guide_scale_gen", type=float, default=5.0, help="CFG scale while regenerating")
    p.add_argument("--shift", type=float, default=5.0, help="noise schedule shift")
    p.add_argument("--seed", type=int, default=42, help="kept for compatibility; the edit is deterministic")
    p.add_argument("--n_prompt", default="", help="negative prompt (default: the official one)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:0 if available, else cpu)")
    p.add_argument("--offload_model", type=str2bool, default=False, help="move models to the CPU between uses")
    p.add_argument("--t5_cpu", action="store_true", help="run the T5 encoder on the CPU")
    p.add_argument("--convert_model_dtype", action="store_true", help="cast the DiT weights to bf16 on load")
    p.add_argument("--max_area", type=int, default=704 * 1280, help="output pixel area (aspect ratio kept)")
    p.add_argument("--sample_solver", default="euler", choices=SOLVERS, help="solver for the regeneration")
    p.add_argument("--inversion_scheme", default="euler", choices=INVERSION_SCHEMES,
                   help="ODE scheme for the inversion (fixed_point: Euler-exact inverse, heun/midpoint: 2nd order)")
    p.add_argument("--inversion_strength", type=float, default=1.0,
                   help="fraction of the schedule to invert; < 1 keeps more of the source, gives less freedom")
    p.add_argument("--fps", type=float, default=None, help="output fps (default: the source's)")
    p.add_argument("--save_inversion", default=None, help="write the inverted latent (safetensors) here")
    p.add_argument("--load_inversion", default=None, help="reuse an inversion saved with --save_inversion")
    p.add_argument("--comparison", action="store_true",
                   help="also write OUTPUT_comparison.mp4 (source | target image | edit) and first-frame PNGs")
    p.add_argument("--manifest", default=None, help="JSONL file of edits to run with the models loaded once")
    add_speed_flags(p)
    return p.parse_args(argv)


EDIT_FIELDS = ("video", "source_prompt", "target_prompt", "output")


def edits_from(args):
    """The edit jobs: the one described by the flags, or one per manifest line."""
    if args.manifest is None:
        missing = [f"--{name}" for name in EDIT_FIELDS if getattr(args, name) is None]
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
    if not os.path.isdir(args.ckpt_dir):
        raise WanInputError(f"--ckpt_dir: checkpoint directory not found: {args.ckpt_dir}")


def check_edit_inputs(edit):
    if not os.path.isfile(edit["video"]):
        raise WanInputError(f"--video: file not found: {edit['video']}")
    if edit.get("target_image") and not os.path.isfile(edit["target_image"]):
        raise WanInputError(f"--target_image: file not found: {edit['target_image']}")


def write_comparison(output, clip, target_frame, edited, fps):
    """Three panels per frame: source | target image (held) | edited video; plus first frames."""
    stem = os.path.splitext(output)[0]
    edited_frames = from_model_range(edited)
    frames = clip.frames[: edited_frames.shape[0]]
    held = target_frame.expand(edited_frames.shape[0], -1, -1, -1)
    write_video(torch.cat([frames, held, edited_frames], dim=2), f"{stem}_comparison.mp4", fps=fps)
    from PIL import Image

    for name, frame in (("source", frames[0]), ("target", target_frame[0]), ("edited", edited_frames[0])):
        path = f"{stem}_{name}_first_frame.png"
        Image.fromarray(frame.numpy()).save(path + ".partial.png")
        os.replace(path + ".partial.png", path)


def run_edit(editor, args, edit):
    check_edit_inputs(edit)
    clip = editor.load_source(edit["video"], args.frame_num, args.max_area)
    if args.load_inversion:
        inversion = Inversion.load(args.load_inversion)
        inversion.check_matches(dict(video_sha256=clip.sha256, size=[clip.frames.shape[2], clip.frames.shape[1]],
                                     frame_num=clip.frames.shape[0], model=editor.model_id))
        log.info("reusing inversion %s", args.load_inversion)
    else:
        inversion = editor.invert(edit["video"], edit["source_prompt"], args.frame_num, args.max_area, args.shift,
                                  args.inversion_steps, args.guide_scale_inv, args.n_prompt, args.inversion_scheme,
                                  args.inversion_strength, clip=clip)
        if args.save_inversion:
            inversion.save(args.save_inversion)
            log.info("saved inversion to %s", args.save_inversion)
    target_frame = editor.target_frame(edit.get("target_image"), clip)
    edited = editor.generate_from_inversion(inversion, edit["target_prompt"], edit.get("target_image"),
                                            args.generation_steps, args.guide_scale_gen, args.n_prompt,
                                            args.sample_solver)
    fps = args.fps or clip.fps
    save_video(edited[None], save_file=edit["output"], fps=fps, nrow=1)
    if args.comparison:
        write_comparison(edit["output"], clip, target_frame, edited, fps)
    log.info("wrote %s (%d frames, %dx%d, %.3g fps)", edit["output"], edited.shape[1], edited.shape[3],
             edited.shape[2], fps)


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    check_args(args)
    edits = edits_from(args)
    pending = [e for e in edits if args.manifest is None or not os.path.exists(e["output"])]
    if len(pending) < len(edits):
        log.info("skipping %d finished edit(s)", len(edits) - len(pending))
    if not pending:
        return []
    for edit in pending:
        check_edit_inputs(edit)
    editor = TI2VInversionEditor(args.ckpt_dir, device=args.device, offload_model=args.offload_model,
                                 t5_cpu=args.t5_cpu, convert_model_dtype=args.convert_model_dtype,
                                 compile_model=args.compile, vae_dtype=vae_dtype(args.vae_dtype))
    from tqdm import tqdm

    for edit in tqdm(pending, desc="edits", disable=len(pending) < 2):
        run_edit(editor, args, edit)
    return [e["output"] for e in pending]


if __name__ == "__main__":
    run_cli(main)
