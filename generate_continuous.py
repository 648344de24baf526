"""Make a long video by chained continuation: each video starts from the previous one's last frame,
with a VLM caption of the previous video as its prompt.

    python generate_continuous.py --video start.mp4 --ckpt_dir ./Wan2.2-I2V-A14B \\
        --vlm_path ./InternVL3_5-8B-HF --num_videos 12 --output_dir ./continuous_outputs

Writes video_01_seed<S>.mp4 ... , prompts_log.txt (file, seed and prompt of every video) and
stitched_video.mp4 (the whole chain, each boundary frame once). A rerun keeps the finished videos
and continues after the last one."""
import logging
import os

from wan import runner, tasks
from wan.cli import (RUN_DEFAULTS, build_parser, check_checkpoint, load_options, merge, option, parse,
                     resolved_settings, run_cli, run_options, sampling_options, setup_logging, start_run)
from wan.models import Models
from wan.modules.vlm import DEFAULT_CAPTIONER
from wan.report import check_report_path
from wan.report.runs import write_run_report
from wan.settings import Generation, LoadOptions, SettingsError, integer
from wan.tasks.continuation import DEFAULT_CONTINUATION_PROMPT, PROMPTS_LOG, read_prompts_log
from wan.utils.checkpoint import checkpoint_fingerprint
from wan.utils.hub import local_folder
from wan.utils.video_io import probe_video

log = logging.getLogger("generate_continuous")

OPTIONS = [
    option("--video", "video", help="the video to continue; required"),
    option("--num_videos", "num_videos", type=int, help="videos in the chain (default 12)"),
    option("--output_dir", "output_dir", resolved=False,
           help="folder for videos, log, stitched video (default ./continuous_outputs)"),
    option("--ckpt_dir", "ckpt_dir", help="checkpoint directory of the base model (official layout); required"),
    option("--task", "task", choices=["v2v-14B", "v2v-5B"], help="v2v-14B (I2V-A14B, default) or v2v-5B"),
    option("--size", "size", help="maximum output area as WIDTH*HEIGHT (aspect ratio of the video)"),
    option("--frame_num", "frame_num", type=int, help="frames per video, 4n+1 (default 81)"),
    *sampling_options(),
    option("--base_seed", "seed", type=int, help="video i (from 1) uses base_seed + i - 1 (default 42)"),
    option("--custom_prompt", "prompt",
           help=f"text put before every caption (default {DEFAULT_CONTINUATION_PROMPT!r})"),
    option("--n_prompt", "n_prompt", help="negative prompt (default: the official one)"),
    option("--vlm_path", "load.vlm_path",
           help=f"captioner: a folder (InternVL3.5 -HF, Qwen2.5-VL, Qwen3-VL) or a repo id in the local Hugging Face "
                f"cache (default {DEFAULT_CAPTIONER})"),
    option("--vlm_device", "load.vlm_device", help="device of the captioner (default: --device)"),
    option("--report", "report", resolved=False, nargs="?", const="", metavar="PATH",
           help="write a self-contained HTML report (default PATH: OUTPUT_DIR/report.html): every video with its "
                "prompt and seed, the stitched video, settings, per-stage timings and peak memory"),
    *load_options(),
    *run_options(),
]
DEFAULTS = {"task": "v2v-14B", "num_videos": 12, "output_dir": "./continuous_outputs", "ckpt_dir": None,
            "frame_num": 81, "seed": 42, "prompt": DEFAULT_CONTINUATION_PROMPT, "n_prompt": "", "report": None,
            "load": {"offload_model": True, "vlm_path": DEFAULT_CAPTIONER}, **RUN_DEFAULTS}
GENERATION_FIELDS = ("task", "prompt", "n_prompt", "video", "size", "frame_num", "seed", "fps", "sampling")


def defaults(given):
    task_defaults = tasks.defaults(given.get("task", DEFAULTS["task"]))
    return merge(merge(task_defaults, DEFAULTS), {"task": given.get("task", DEFAULTS["task"])})


def check(settings):
    integer("num_videos", settings["num_videos"], low=1)
    if not settings.get("video"):
        raise SettingsError("video", "is required")
    check_checkpoint(settings)
    if not settings["load"].get("vlm_path"):
        raise SettingsError("load.vlm_path", "is required: the captioner writes every video's prompt")
    local_folder(settings["load"]["vlm_path"], "captioner")  # before anything loads
    probe_video(settings["video"])  # a missing or unreadable video fails before any model loads
    return Generation.from_dict({name: settings.get(name) for name in GENERATION_FIELDS}), \
        LoadOptions.from_dict(settings["load"], "load")


def main(argv=None):
    setup_logging()
    parsed = parse(build_parser(__doc__.split("\n\n")[0], OPTIONS), OPTIONS, defaults, argv)
    settings = parsed.settings
    generation, load = check(settings)
    task = tasks.get_task(generation.task)
    report = None
    if settings["report"] is not None:  # the default is in the output folder, which the chain makes
        report = check_report_path(settings["report"]) if settings["report"] else \
            os.path.join(settings["output_dir"], "report.html")
    final = {**settings, **generation.to_dict(), "load": load.to_dict()}
    resolved, profile = resolved_settings(final, OPTIONS), start_run(settings, load.device)
    paths, stitched = runner.run_chain(lambda: Models.load(task.config, settings["ckpt_dir"], load, task.parts()),
                                       generation, settings["output_dir"], settings["num_videos"], resolved, profile,
                                       profile.step)
    profile.finish()
    log.info("chain of %d videos in %s; stitched: %s", len(paths), settings["output_dir"], stitched)
    if report:
        log_entries = read_prompts_log(os.path.join(settings["output_dir"], PROMPTS_LOG))
        rows = [{"video": name, "seed": seed, "prompt": prompt}
                for _, (name, seed, prompt) in sorted(log_entries.items())]
        fingerprint = checkpoint_fingerprint(local_folder(settings["ckpt_dir"])) if settings["ckpt_dir"] else None
        write_run_report(report, f"generate_continuous.py: a chain of {len(paths)} videos",
                         [(stitched, "stitched chain")] + [(path, os.path.basename(path)) for path in paths],
                         {**resolved, "checkpoint fingerprint": fingerprint}, profile.timer,
                         prompts={"prefix": generation.prompt}, tables=[(rows, "videos")])
        log.info("report: %s", report)
    return paths, stitched


if __name__ == "__main__":
    run_cli(main, OPTIONS)
