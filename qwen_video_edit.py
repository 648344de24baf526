"""Training-free video stylisation with Qwen-Image-Edit-2509 and test-time loss guidance (TTLG).

Frame by frame, the model edits [edge map of source frame i, previous output frame] with a
prompt; in the last denoising steps gradient steps on the latents pull the result toward the
source structure (edge loss), the first output's style (Gram loss) and the previous output
(temporal loss). The model comes from --model_id or, without it, the MODEL_ID environment variable.

    # edit the edge frames (without a subcommand the arguments are those of `edit`)
    python qwen_video_edit.py --init_frame key.png --edge_frames_dir work/edges --out_frames_dir work/out \\
        --num_inference_steps 10 --ttlg_edge_scale 1.0 --ttlg_gram_scale 0.3 --seed 42 --report

    # the whole video in one command; a rerun skips the finished work
    python qwen_video_edit.py video --video in.mp4 --output styled.mp4 --init_frame key.png --stride 2 \\
        --size 512*512 --report

    # or step by step
    python qwen_video_edit.py extract --video in.mp4 --out_dir work --stride 2 --size 512*512
    python qwen_video_edit.py edit --init_frame key.png --edge_frames_dir work/edges --out_frames_dir work/out
    python qwen_video_edit.py assemble --frames_dir work/out --output out.mp4 --fps 12

`edit` writes each frame as soon as it is done and resumes after the last complete frame.
--report writes a self-contained report.html (videos, init frame, per-frame losses, settings,
timings, peak memory, environment).
"""
import argparse
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from wan.errors import WanInputError
from wan.cli import ArgumentParser, parse_with_config, run_cli, setup_logging
from wan.utils.fileio import write_yaml_atomic
from wan.utils.video_io import check_output_path
from wan.settings import size

COMMANDS = ("extract", "edit", "assemble", "video")
# The library's setting names and the flags that set them, for one-line errors.
FLAGS = {**{name: f"--{name}" for name in ("stride", "max_frames", "edge_frames_dir", "frames_dir", "fps", "dtype",
                                             "num_inference_steps", "lpips_weights")},
         **{name: f"--ttlg_{name}" for name in ("edge_scale", "gram_scale", "temporal_scale", "lr", "last_steps",
                                                 "every")}}
REPORT_NAME = "report.html"


def parse_args(argv=None):
    from wan.qwen_edit.workflow import DEFAULT_PROMPT

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "edit")
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {
        "extract": commands.add_parser("extract", help="video -> init frame + Sobel edge frames"),
        "edit": commands.add_parser("edit", help="edit the edge frames one by one (resumable; the default command)"),
        "assemble": commands.add_parser("assemble", help="frames -> mp4"),
        "video": commands.add_parser("video", help="extract -> edit -> assemble in one work folder (resumable)"),
    }
    _add_extract(subparsers["extract"])
    _add_edit(subparsers["edit"], DEFAULT_PROMPT)
    _add_assemble(subparsers["assemble"])
    _add_video(subparsers["video"], DEFAULT_PROMPT)
    return parse_with_config(parser, argv, subparsers.get(argv[0]))


def _add_extract(p):
    p.add_argument("--video", required=True, help="source video")
    p.add_argument("--out_dir", required=True, help="writes OUT/init_frame.png and OUT/edges/edge_NNNNN.png")
    _add_extract_settings(p)


def _add_extract_settings(p):
    p.add_argument("--stride", type=int, default=1, help="keep every STRIDE-th frame")
    p.add_argument("--size", default=None, help="WIDTH*HEIGHT (resize + centre crop); default: the video's, "
                                                "floored to multiples of 16")
    p.add_argument("--max_frames", type=int, default=None, help="at most this many frames")


def _add_edit(p, default_prompt):
    p.add_argument("--init_frame", required=True,
                   help="stands in for the previous output of frame 0 and is its style reference "
                        "(an edited key frame sets the style)")
    p.add_argument("--edge_frames_dir", required=True, help="edge maps, one per frame, in sorted name order")
    p.add_argument("--out_frames_dir", required=True, help="output frames frame_NNNNN.png")
    p.add_argument("--metrics_out", default=None, help="metrics CSV (default OUT_FRAMES_DIR/metrics.csv)")
    p.add_argument("--size", default=None, help="output WIDTH*HEIGHT (default: the first edge frame's), "
                                                "floored to the model grid")
    p.add_argument("--max_frames", type=int, default=None,
                   help="stop once this many frames (counted from the first) are done")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="PATH",
                   help=f"write an HTML report (default PATH: OUT_FRAMES_DIR/{REPORT_NAME}, with the frames as "
                        "an mp4 of the same name beside it)")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate of the report's video")
    _add_edit_settings(p, default_prompt)


def _add_edit_settings(p, default_prompt):
    p.add_argument("--config", default=None,
                   help="a YAML or TOML file of settings (option names without dashes, e.g. configs/qwen_ttlg.yaml); "
                        "flags given here override it. OUT_FRAMES_DIR/settings.yaml holds a run's resolved ones")
    p.add_argument("--model_id", default=None,
                   help="Qwen-Image-Edit-2509 folder (diffusers layout) or a repo id already in the HF cache; "
                        "nothing is downloaded. Default: the MODEL_ID environment variable")
    p.add_argument("--prompt", default=default_prompt,
                   help=f"edit instruction; Picture 1 is the edge map, Picture 2 the previous frame. Default: "
                        f"{default_prompt!r}")
    p.add_argument("--negative_prompt", default=" ", help="negative prompt for true CFG")
    p.add_argument("--num_inference_steps", type=int, default=50)
    p.add_argument("--true_cfg_scale", type=float, default=4.0, help="true CFG scale (<= 1: off, one pass)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every frame")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="network dtype (auto: bf16 on CUDA, fp32 on CPU); latents stay fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--condition_image_size", default="384*384",
                   help="area W*H at which condition images enter the vision-language encoder (model: 384*384)")
    p.add_argument("--vae_image_size", default="1024*1024",
                   help="area W*H at which condition images are VAE-encoded (model: 1024*1024); smaller is "
                        "faster, at some cost in quality")
    p.add_argument("--ttlg_edge_scale", type=float, default=1.0, help="edge-loss weight (0: off)")
    p.add_argument("--ttlg_gram_scale", type=float, default=0.5, help="Gram (style) loss weight (0: off)")
    p.add_argument("--ttlg_temporal_scale", type=float, default=0.25, help="temporal loss weight (0: off)")
    p.add_argument("--ttlg_lr", type=float, default=0.03,
                   help="RMS size of one guidance update in latent units (0: guidance off)")
    p.add_argument("--ttlg_last_steps", type=int, default=10, help="guide only in the last K steps")
    p.add_argument("--ttlg_every", type=int, default=2, help="guide every M-th of those steps")
    p.add_argument("--lpips_weights", default=None,
                   help="local torchvision trunk file (e.g. alexnet-owt-7be5be79.pth) for an LPIPS column; "
                        "needs the lpips package. Without it the CSV reports the VAE-feature distance")
    p.add_argument("--lpips_net", default="alex", choices=["alex", "vgg", "squeeze"])


def _add_assemble(p):
    p.add_argument("--frames_dir", required=True, help="folder of frame_NNNNN.png")
    p.add_argument("--output", required=True, help="output .mp4")
    p.add_argument("--fps", type=float, default=16.0)


def _add_video(p, default_prompt):
    p.add_argument("--video", required=True, help="source video")
    p.add_argument("--output", required=True, help="edited .mp4")
    p.add_argument("--work_dir", default=None,
                   help="holds the edge maps, the edited frames and their metrics.csv (default: OUTPUT without "
                        ".mp4, plus _work); a rerun continues there")
    p.add_argument("--init_frame", default=None,
                   help="frame 0's previous output and style reference, e.g. an edited key frame "
                        "(default: the first source frame)")
    _add_extract_settings(p)
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the source's / STRIDE)")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="PATH",
                   help=f"write an HTML report (default PATH: {REPORT_NAME} in the folder of --output)")
    _add_edit_settings(p, default_prompt)


def _area(text, flag):
    width, height = size(flag, text)
    if width < 1 or height < 1:
        raise WanInputError(f"{flag} must be positive, got {text!r}")
    return width * height


def _model_id(args):
    """--model_id, else the MODEL_ID environment variable."""
    model_id = args.model_id or os.environ.get("MODEL_ID")
    if not model_id:
        raise WanInputError("no model given: pass --model_id (a Qwen-Image-Edit-2509 folder) or set MODEL_ID")
    return model_id


def _report_path(value, default):
    """None without --report; the default path for a bare --report; a given path must be in an existing folder."""
    from wan.report import check_report_path

    if value is None:
        return None
    return check_report_path(value) if value else Path(default)


def _guidance(args):
    from wan.qwen_edit import GuidanceSettings

    return GuidanceSettings(edge_scale=args.ttlg_edge_scale, gram_scale=args.ttlg_gram_scale,
                            temporal_scale=args.ttlg_temporal_scale, lr=args.ttlg_lr,
                            last_steps=args.ttlg_last_steps, every=args.ttlg_every)


SAMPLING_FLAGS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "true_cfg_scale")


def _edit_job(args, **fields):
    from wan.qwen_edit import EditJob

    return EditJob(**{name: getattr(args, name) for name in SAMPLING_FLAGS}, **fields)


def _load_editor(args, model_id, guidance):
    from wan.qwen_edit import PerceptualMetric, QwenFrameEditor
    from wan.qwen_edit.loading import resolve_dtype

    editor = QwenFrameEditor.from_pretrained(
        model_id, args.device, resolve_dtype(args.dtype, args.device), guidance=guidance,
        condition_area=_area(args.condition_image_size, "--condition_image_size"),
        vae_condition_area=_area(args.vae_image_size, "--vae_image_size"))
    return editor, PerceptualMetric(editor.features, args.lpips_weights, args.lpips_net, args.device)


def _model_fingerprint(model_id):
    """The checkpoint's identity (config files and weight sizes; no weights read), as for Wan checkpoints."""
    from wan.qwen_edit.loading import resolve_model_dir
    from wan.utils.checkpoint import checkpoint_fingerprint

    folder = resolve_model_dir(model_id)
    return str(folder), checkpoint_fingerprint(folder, "QwenImageEditPlusPipeline")


def _report_settings(args, model_id, editor):
    """Every flag as resolved, the model's identity and, when loaded, the editor's configuration."""
    folder, fingerprint = _model_fingerprint(model_id)
    model = {"model_id": model_id, "folder": folder, "fingerprint": fingerprint}
    model["config"] = editor.config() if editor is not None else "not loaded (every frame was already done)"
    return {"arguments": {**vars(args), "model_id": model_id}, "model": model}


def _prompts(args):
    return {"prompt": args.prompt, "negative prompt": args.negative_prompt}


def run_extract(args):
    from wan.qwen_edit import extract

    frame_size = size("--size", args.size) if args.size else None
    extract(args.video, args.out_dir, stride=args.stride, size=frame_size, max_frames=args.max_frames)


def run_edit(args):
    from wan.qwen_edit import assemble, edit_frames
    from wan.qwen_edit.reporting import write_edit_report
    from wan.qwen_edit.workflow import check_job
    from wan.report import StageTimer

    model_id = _model_id(args)
    report = _report_path(args.report, Path(args.out_frames_dir) / REPORT_NAME)
    timer = StageTimer(args.device)
    guidance = _guidance(args)
    job = _edit_job(args, init_frame=args.init_frame, edge_frames_dir=args.edge_frames_dir,
                    out_frames_dir=args.out_frames_dir, metrics_out=args.metrics_out, max_frames=args.max_frames,
                    size=size("--size", args.size) if args.size else None)
    check_job(job)  # before the (large) model loads
    with timer.stage("load model"):
        editor, perceptual = _load_editor(args, model_id, guidance)
    with timer.stage("edit"):
        rows = edit_frames(editor, job, perceptual)
    write_yaml_atomic(Path(args.out_frames_dir) / "settings.yaml", _resolved(args))
    if report is not None:
        video = report.with_suffix(".mp4")
        with timer.stage("report video"):
            assemble(job.out_frames_dir, video, args.fps)
        write_edit_report(report, "qwen_video_edit: edit", [("edited frames", video)], job.init_frame, rows,
                          _prompts(args), _report_settings(args, model_id, editor), timer)
        logging.info("report: %s", report)


# Where inputs and outputs are, not how frames are made: left out of the resolved settings.
PATH_OPTIONS = ("command", "config", "init_frame", "edge_frames_dir", "out_frames_dir", "metrics_out", "report",
                "video", "output", "work_dir", "out_dir", "frames_dir")


def _resolved(args):
    """The settings a rerun with --config needs to make the same frames."""
    return {name: value for name, value in vars(args).items() if name not in PATH_OPTIONS}


def run_assemble(args):
    from wan.qwen_edit import assemble

    check_output_path(args.output)
    assemble(args.frames_dir, args.output, args.fps)


def run_video(args):
    from wan.qwen_edit.reporting import write_edit_report
    from wan.qwen_edit.workflow import VideoJob, process_video
    from wan.report import StageTimer

    model_id = _model_id(args)
    output = Path(args.output)
    check_output_path(args.output)
    report = _report_path(args.report, output.parent / REPORT_NAME)
    timer = StageTimer(args.device)
    guidance = _guidance(args)
    work_dir = args.work_dir or str(output.with_suffix("")) + "_work"
    video_job = VideoJob(video=args.video, output=str(output), work_dir=work_dir, stride=args.stride,
                         size=size("--size", args.size) if args.size else None, max_frames=args.max_frames, fps=args.fps)
    edit_job = _edit_job(args, init_frame=args.init_frame, edge_frames_dir=None, out_frames_dir=None)
    # What decides the frames: a rerun with other values would mix two edits in one video.
    identity = {"model": _model_fingerprint(model_id)[1], "init_frame": args.init_frame, "dtype": args.dtype,
                "condition_image_size": args.condition_image_size, "vae_image_size": args.vae_image_size,
                **{name: getattr(args, name) for name in SAMPLING_FLAGS},
                **{f"ttlg_{key}": value for key, value in asdict(guidance).items()}}

    def load_editor():
        with timer.stage("load model"):
            return _load_editor(args, model_id, guidance)

    result = process_video(video_job, edit_job, identity, load_editor, timer)
    logging.info("edited video: %s", result.output)
    if report is not None:
        settings = {**_report_settings(args, model_id, result.editor), "work_dir": work_dir, "fps": result.fps}
        write_edit_report(report, "qwen_video_edit: video", [("edited", result.output), ("source", args.video)],
                          result.init_frame, result.rows, _prompts(args), settings, timer)
        logging.info("report: %s", report)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("qwen_video_edit %s", args.command)
    {"extract": run_extract, "edit": run_edit, "assemble": run_assemble, "video": run_video}[args.command](args)


if __name__ == "__main__":
    run_cli(main, flags=FLAGS)
