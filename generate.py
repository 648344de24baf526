"""Generate a video with a Wan model: text-to-video, image-to-video, text+image-to-video, or the
continuation of a video (v2v: its last frame and a VLM caption condition image-to-video).

    python generate.py --task ti2v-5B --ckpt_dir ./Wan2.2-TI2V-5B --size 1280*704 --prompt "..."
    python generate.py --task v2v-5B --ckpt_dir ./Wan2.2-TI2V-5B --video in.mp4 --vlm_path ./InternVL3_5-8B-HF

Flags and defaults follow the official Wan2.2 generate.py; --device, --fps, --config and the speed,
stage and multi-GPU flags are additions."""
import logging
import os
from datetime import datetime

from wan import distributed, runner, tasks
from wan.cli import (RUN_DEFAULTS, STAGE_DEFAULTS, build_parser, check_checkpoint, check_stage, given_values,
                     load_options, merge, option, parse, resolved_settings, run_cli, run_options, sampling_options,
                     setup_logging, stage_options, start_run)
from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.report import check_report_path
from wan.report.runs import default_report_path, write_run_report
from wan.modules.vlm import DEFAULT_CAPTIONER
from wan.settings import Generation, LoadOptions, SettingsError
from wan.tasks.prompt_extension import extend_prompt
from wan.utils.fileio import write_json_atomic
from wan.utils.video_io import check_output_path, load_image, output_stem, probe_output, probe_video

log = logging.getLogger("generate")

EXAMPLE_PROMPT = {
    "t2v": "A red fox trots through fresh snow in a quiet pine forest at sunrise, its breath steaming in the cold air.",
    "i2v": "The scene comes alive: gentle camera push-in, natural motion, soft light.",
}

OPTIONS = [
    option("--task", "task", choices=sorted(tasks.TASKS), help="the task to run (default t2v-A14B)"),
    option("--size", "size", help="output WIDTH*HEIGHT (image tasks: its area is the maximum area); default per task"),
    option("--frame_num", "frame_num", type=int, help="frames to generate, 4n+1 (default per task)"),
    option("--ckpt_dir", "ckpt_dir", help="checkpoint directory (official layout); required"),
    option("--save_file", "save_file", resolved=False,
           help="output .mp4 (default: a name from task, size, prompt, time)"),
    option("--prompt", "prompt", help="the text prompt (v2v: used as is without --vlm_path, else put before the "
                                      "caption)"),
    option("--n_prompt", "n_prompt", help="negative prompt (default: the official one)"),
    option("--use_prompt_extend", "use_prompt_extend", action="store_true",
           help="rewrite the prompt with a local language model first (a vision-language one for image tasks)"),
    option("--prompt_extend_method", "prompt_extend_method", choices=["dashscope", "local_qwen"],
           help="local_qwen (default): a local model; dashscope needs network access and is refused"),
    option("--prompt_extend_model", "prompt_extend_model",
           help="folder or Hugging Face id (from the local cache) of the model (default: the official Qwen ones)"),
    option("--prompt_extend_target_lang", "prompt_extend_target_lang", choices=["zh", "en"],
           help="language of the rewritten prompt (default zh)"),
    option("--base_seed", "seed", type=int, help="random seed (-1: random; the seed used is recorded)"),
    option("--image", "image", help="input image (required for i2v-A14B and i2v-14B, optional for ti2v-5B)"),
    option("--first_frame", "first_frame", help="flf2v-14B: the first frame"),
    option("--last_frame", "last_frame", help="flf2v-14B: the last frame (resized to the output if its size differs)"),
    *sampling_options(),
    option("--video", "video", help="v2v: the video to continue (its last frame starts the output)"),
    option("--vlm_path", "load.vlm_path",
           help=f"v2v: the captioner, a folder (InternVL3.5 -HF, Qwen2.5-VL, Qwen3-VL) or a repo id in the local "
                f"Hugging Face cache (default {DEFAULT_CAPTIONER})"),
    option("--vlm_device", "load.vlm_device", help="v2v: device of the captioner (default: --device)"),
    option("--fps", "fps", type=float, help="frames per second of the mp4 (default per task)"),
    option("--report", "report", resolved=False, nargs="?", const="", metavar="PATH",
           help="write a self-contained HTML report of the run (default PATH: SAVE_FILE.report.html): the video, "
                "its first frame, the settings and checkpoint fingerprint, per-stage timings and peak memory"),
    *load_options(),
    *stage_options(),
    *run_options(),
]
DEFAULTS = {"task": "t2v-A14B", "ckpt_dir": None, "save_file": None, "prompt": "", "n_prompt": "", "seed": -1,
            "use_prompt_extend": False, "prompt_extend_method": "local_qwen", "prompt_extend_model": None,
            "prompt_extend_target_lang": "zh", "report": None, "load": {"offload_model": True}, **STAGE_DEFAULTS,
            **RUN_DEFAULTS}
GENERATION_FIELDS = ("task", "prompt", "n_prompt", "image", "video", "first_frame", "last_frame", "size", "frame_num",
                     "seed", "fps", "sampling")


def defaults(given):
    """The script's defaults and the official ones of the task (and size) asked for."""
    return merge(DEFAULTS, tasks.defaults(given.get("task", DEFAULTS["task"]), given.get("size")))


def parse_args(argv=None):
    return parse(build_parser(__doc__.split("\n\n")[0], OPTIONS), OPTIONS, defaults, argv)


def check(settings):
    """Settings objects from the merged tree, checked before any model loads."""
    check_stage(settings)
    check_checkpoint(settings)
    load = LoadOptions.from_dict(settings["load"], "load")
    if load.ulysses_size > 1 and WAN_CONFIGS[settings["task"]].num_heads % load.ulysses_size:
        raise SettingsError("load.ulysses_size", f"{load.ulysses_size} must divide the "
                            f"{WAN_CONFIGS[settings['task']].num_heads} attention heads of {settings['task']}")
    if distributed.launched_with_torchrun() and load.device:
        raise SettingsError("load.device", "cannot be set under torchrun: each process uses cuda:LOCAL_RANK")
    generation = Generation.from_dict({name: settings.get(name) for name in GENERATION_FIELDS})
    if settings["stage"] in ("all", "encode"):
        tasks.check_inputs(generation)
        tasks.common.check_on_grid(WAN_CONFIGS[generation.task], generation.size)
        warning = tasks.unsupported_size_warning(generation, settings["ckpt_dir"])
        if warning:
            log.warning("%s; quality may suffer", warning)
        for name in ("image", "first_frame", "last_frame"):
            if getattr(generation, name):
                load_image(getattr(generation, name))  # a bad image fails before models load
        if generation.video:
            probe_video(generation.video)  # so does a bad video
        if not generation.prompt and not generation.video:
            example = EXAMPLE_PROMPT["t2v" if not (generation.image or generation.first_frame) else "i2v"]
            generation = generation.replace(prompt=example)
        if generation.video and not load.vlm_path:  # the seed's captioner, from the local Hugging Face cache
            load = load.replace(vlm_path=DEFAULT_CAPTIONER)
    return generation, load


def default_save_file(generation):
    prompt = (generation.prompt or os.path.basename(generation.video or "staged")).replace(" ", "_")
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    size = f"{generation.size[0]}x{generation.size[1]}"
    suffix = ".png" if generation.frame_num == 1 else ".mp4"  # one frame (t2i) is an image
    return f"{generation.task}_{size}_{prompt.replace('/', '_')[:50]}_{stamp}{suffix}"


def main(argv=None):
    env = distributed.init_distributed()  # a no-op without torchrun
    setup_logging(env.rank)
    parsed = parse_args(argv)
    settings = parsed.settings
    generation, load = check(settings)
    distributed.make_layout(load.ulysses_size, load.cfg_parallel)
    generation = generation.replace(seed=distributed.shared_seed(generation.seed))
    load = load.replace(device=load.device or (str(env.device) if env.device else None))
    stage = settings["stage"]
    task = tasks.get_task(generation.task)
    if settings["use_prompt_extend"] and stage in ("all", "encode"):
        original = generation.prompt
        generation = extend_prompt(generation, settings["prompt_extend_method"], settings["prompt_extend_model"],
                                   settings["prompt_extend_target_lang"], load.device)
        settings = {**settings, "use_prompt_extend": False}  # the resolved settings hold the rewritten prompt
        notes = {"original prompt": original, "extended prompt": generation.prompt}
    else:
        notes = None
    log.info("task %s, size %dx%d, %d frames, %d %s steps, shift %s, guide %s", generation.task, *generation.size,
             generation.frame_num, generation.sampling.steps, generation.sampling.solver, generation.sampling.shift,
             generation.sampling.guide_scale)
    output = settings["save_file"] or default_save_file(generation)
    if stage in ("all", "decode"):
        check_output_path(output, generation.frame_num)  # before any model loads
    report = None if settings["report"] is None else check_report_path(default_report_path(output, settings["report"]))
    profile = start_run(settings, load.device)
    with profile.stage("load"):
        models = Models.load(task.config, settings["ckpt_dir"], load, parts=task.parts(stage))
    final = {**settings, **generation.to_dict(), "load": load.to_dict()}
    resolved = resolved_settings(final, OPTIONS)
    written = runner.generate(models, generation, output, stage, settings["stage_dir"], settings["save_every"],
                              settings["stop_after_steps"], given_values(parsed.given, final, GENERATION_FIELDS),
                              resolved, profile, profile.step)
    profile.finish()
    if written and notes:
        write_json_atomic(f"{output_stem(written)}.prompt.json", notes)
    if written and report:
        inputs = [(getattr(generation, name), name.replace("_", " ")) for name in ("image", "first_frame", "last_frame")
                  if getattr(generation, name)]
        write_run_report(report, f"generate.py: {generation.task}" + ("" if stage == "all" else f" ({stage} stage)"),
                         [(written, "generated")], {**resolved, "checkpoint fingerprint": models.fingerprint},
                         profile.timer,
                         prompts={"prompt": generation.prompt, **(notes or {})}, images=inputs)
        log.info("report: %s", report)
    if written:
        frames, fps, width, height = probe_output(written)
        log.info("saved %s (%d frames, %dx%d%s)", written, frames, width, height, f", {fps:g} fps" if fps else "")
    return written


if __name__ == "__main__":
    run_cli(main, OPTIONS)
