"""Training-free video editing with Wan2.2 TI2V-5B by flow inversion.

    python ti2v_inversion_edit.py --ckpt_dir ./Wan2.2-TI2V-5B --video in.mp4 \\
        --source_prompt "A kitten turning its head" --target_prompt "A dog turning its head" \\
        --target_image dog_first_frame.png --output edited.mp4 --comparison

Batch mode: --manifest edits.jsonl, one JSON object per line with video, source_prompt,
target_prompt, target_image (optional) and output; models load once, finished outputs are skipped.
"""
import json
import logging
import os

from wan import distributed, runner
from wan.cli import (RUN_DEFAULTS, STAGE_DEFAULTS, build_parser, check_checkpoint, check_stage,
                     exact_timesteps_option, given_values, load_options, option, parse, resolved_settings, run_cli,
                     run_options, setup_logging, stage_options, start_run)
from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.report import check_report_path
from wan.report.runs import default_report_path, video_psnr, write_run_report
from wan.settings import INVERSION_SCHEMES, SOLVERS, EditSettings, LoadOptions, SettingsError
from wan.tasks import get_task
from wan.tasks.edit import EditRequest, load_source
from wan.utils.video_io import check_output_path, output_stem, read_video

log = logging.getLogger("ti2v_inversion_edit")

OPTIONS = [
    option("--ckpt_dir", "ckpt_dir", help="Wan2.2-TI2V-5B checkpoint directory (official layout); required"),
    option("--video", "video", help="source video"),
    option("--source_prompt", "source_prompt", help="prompt describing the source video"),
    option("--target_prompt", "target_prompt", help="prompt describing the edited video"),
    option("--target_image", "target_image", help="edited first frame (default: the source's first frame)"),
    option("--output", "output", resolved=False, help="output .mp4"),
    option("--frame_num", "frame_num", type=int, help="frames to edit, 4n+1 (default 17)"),
    option("--inversion_steps", "inversion.steps", type=int, help="default 50"),
    option("--generation_steps", "sampling.steps", type=int, help="default 50"),
    option("--guide_scale_inv", "inversion.guide_scale", type=float, help="CFG scale while inverting (default 1: off)"),
    option("--guide_scale_gen", "sampling.guide_scale", type=float, help="CFG scale while regenerating (default 5)"),
    option("--shift", "sampling.shift", type=float, help="noise schedule shift (default 5)"),
    exact_timesteps_option(),
    option("--seed", "seed", type=int, help="kept for compatibility; the edit is deterministic"),
    option("--n_prompt", "n_prompt", help="negative prompt (default: the official one)"),
    option("--max_area", "max_area", type=int, help="output pixel area, aspect ratio kept (default 704*1280)"),
    option("--sample_solver", "sampling.solver", choices=SOLVERS, help="solver for the regeneration (default euler)"),
    option("--inversion_scheme", "inversion.scheme", choices=INVERSION_SCHEMES,
           help="ODE scheme for the inversion (default euler; fixed_point: exact inverse of Euler regeneration; "
                "heun/midpoint: second order)"),
    option("--inversion_strength", "inversion.strength", type=float,
           help="fraction of the schedule to invert (default 1); < 1 keeps more of the source"),
    option("--fps", "fps", type=float, help="output fps (default: the source's)"),
    option("--save_inversion", "save_inversion", resolved=False, help="write the inverted latent (safetensors) here"),
    option("--load_inversion", "load_inversion", help="reuse an inversion saved with --save_inversion"),
    option("--comparison", "comparison", action="store_true",
           help="also write OUTPUT_comparison.mp4 (source | target image | edit) and first-frame PNGs"),
    option("--manifest", "manifest", help="JSONL file of edits to run with the models loaded once"),
    option("--report", "report", resolved=False, nargs="?", const="", metavar="PATH",
           help="write a self-contained HTML report (default PATH: OUTPUT.report.html, or MANIFEST.report.html for a "
                "manifest): the edits, comparisons and first frames, PSNR against the source, settings, timings"),
    *load_options(),
    *stage_options(),
    *run_options(),
]
DEFAULTS = {"ckpt_dir": None, "seed": 42, "save_inversion": None, "load_inversion": None, "comparison": False,
            "manifest": None, "report": None, "load": {"offload_model": False}, **EditSettings().to_dict(),
            **STAGE_DEFAULTS, **RUN_DEFAULTS}
REQUEST_FIELDS = tuple(EditRequest().to_dict())
SETTINGS_FIELDS = tuple(EditSettings().to_dict())
STAGE_FIELDS = {"all": REQUEST_FIELDS[:3] + ("output",), "encode": REQUEST_FIELDS[:3], "denoise": (),
                "decode": ("output",)}


def requests_from(settings):
    """The edits: the one described by the flags, or one per manifest line."""
    if settings["manifest"] is None:
        request = EditRequest.from_dict({name: settings.get(name) for name in REQUEST_FIELDS})
        request.require(*STAGE_FIELDS[settings["stage"]])
        return [request]
    path = settings["manifest"]
    if not os.path.isfile(path):
        raise SettingsError("manifest", f"file not found: {path}")
    requests = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as exc:
            raise SettingsError("manifest", f"{path} is not UTF-8 text (byte {exc.start}): one JSON object per "
                                            "line expected") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            request = EditRequest.from_dict(json.loads(line))
            request.require("video", "source_prompt", "target_prompt", "output")
        except json.JSONDecodeError as exc:
            raise SettingsError("manifest", f"{path} line {number}: not JSON ({exc.msg})") from None
        except SettingsError as err:
            raise SettingsError("manifest", f"{path} line {number}: {err}") from None
        requests.append(request)
    if not requests:
        raise SettingsError("manifest", f"{path} lists no edits")
    return requests


def check(settings):
    check_stage(settings)
    if settings["load_inversion"] and settings["manifest"]:
        raise SettingsError("load_inversion", "applies to a single edit, not to a manifest")
    if settings["stage"] != "all" and settings["manifest"]:
        raise SettingsError("stage", f"{settings['stage']} runs a single edit (no manifest)")
    check_checkpoint(settings)
    return EditSettings.from_dict({name: settings[name] for name in SETTINGS_FIELDS}), \
        LoadOptions.from_dict(settings["load"], "load")


def main(argv=None):
    env = distributed.init_distributed()  # a no-op without torchrun
    setup_logging(env.rank)
    parsed = parse(build_parser(__doc__.split("\n\n")[0], OPTIONS), OPTIONS, DEFAULTS, argv)
    settings = parsed.settings
    edit_settings, load = check(settings)
    # Under torchrun with a manifest and no other parallel flag, each GPU takes its share of edits.
    layout = distributed.make_layout(load.ulysses_size, load.cfg_parallel,
                                     data_parallel=settings["manifest"] is not None)
    load = load.replace(device=load.device or (str(env.device) if env.device else None))
    requests = requests_from(settings)
    report = None
    if settings["report"] is not None:
        report = check_report_path(default_report_path(settings["manifest"] or requests[0].output, settings["report"]))
    if settings["manifest"] is None:
        pending = requests
    else:
        pending = distributed.my_pending_jobs(requests, lambda r: os.path.exists(r.output), layout)
        log.info("%d of %d edits to run here", len(pending), len(requests))
    if not pending:
        return []
    stage = settings["stage"]
    for request in pending:
        if stage in ("all", "encode"):
            request.check_files()
        if stage in ("all", "decode"):
            check_output_path(request.output, edit_settings.frame_num)
    task = get_task("ti2v-5B")
    profile = start_run(settings, load.device)
    with profile.stage("load"):
        models = Models.load(WAN_CONFIGS["ti2v-5B"], settings["ckpt_dir"], load, parts=task.parts(stage))
    final = {**settings, **edit_settings.to_dict(), "load": load.to_dict()}
    requested = given_values(parsed.given, final, SETTINGS_FIELDS)
    written = []
    for request in distributed.main_tqdm(pending, desc="edits", disable=len(pending) < 2):
        resolved = resolved_settings({**final, **request.to_dict()}, OPTIONS)
        if runner.edit(models, request, edit_settings, stage, settings["stage_dir"], settings["save_every"],
                       settings["stop_after_steps"], settings["load_inversion"], settings["save_inversion"],
                       settings["comparison"], requested, resolved, profile, profile.step):
            written.append(request)
    profile.finish()
    if report and written:
        write_edit_report(report, models, written, edit_settings, settings["comparison"],
                          {**resolved_settings(final, OPTIONS), "checkpoint fingerprint": models.fingerprint},
                          profile.timer)
    return [request.output for request in pending]


def write_edit_report(path, models, requests, edit_settings, comparison, settings, timer):
    """The edits (and their comparisons), the prompts and the PSNR of each edit against its source."""
    videos, rows = [], []
    for request in requests:
        videos.append((request.output, f"edit: {request.target_prompt}"))
        if comparison:
            videos.append((f"{output_stem(request.output)}_comparison.mp4",
                           "comparison: source | edited first frame | edit"))
        source = load_source(models.config, request.video, edit_settings.frame_num, edit_settings.max_area)
        rows.append({"output": request.output, "source": request.video, "source prompt": request.source_prompt,
                     "target prompt": request.target_prompt,
                     "PSNR vs source (dB)": round(video_psnr(read_video(request.output)[0], source.frames), 2)})
    title = "ti2v_inversion_edit.py: " + (f"{len(requests)} edits" if len(requests) > 1 else "edit")
    write_run_report(path, title, videos, settings, timer, tables=[(rows, "edits (the PSNR measures how much of the "
                                                                          "source a no-op edit reconstructs)")])
    log.info("report: %s", path)


if __name__ == "__main__":
    run_cli(main, OPTIONS)
