"""Video-to-video continuation: the last frame of a clip conditions image-to-video generation, and a
vision-language model's caption of the clip is the prompt (v2v-14B on I2V-A14B, v2v-5B on TI2V-5B).

A chain of continuations (wan.runner.run_chain) keeps a prompts log here: one line per video with its
file, seed and prompt, so a rerun resumes after the last finished video.
"""
import logging
import os

from PIL import Image

from ..distributed import from_main_process
from ..settings import SettingsError
from ..utils.fileio import atomic_path
from ..utils.video_io import read_video
from .common import require
from .i2v import prepare_i2v
from .ti2v import prepare_ti2v

DEFAULT_CONTINUATION_PROMPT = "continue video"
PROMPTS_LOG = "prompts_log.txt"
STITCHED_VIDEO = "stitched_video.mp4"

log = logging.getLogger(__name__)


def combine_prompt(prefix, caption):
    """`prefix. caption` on one line; either part may be empty."""
    parts = [" ".join(part.split()).rstrip(" .:") for part in (prefix or "", caption or "")]
    return ". ".join(part for part in parts if part)


def continuation_prompt(captioner, frames, prompt, video_path):
    """The caption of `frames` after the optional prefix `prompt`; `prompt` alone without a captioner."""
    if captioner is None:
        if not prompt:
            raise SettingsError("prompt", f"is required to continue {video_path} without a captioner (vlm_path)")
        return prompt
    needed = captioner.num_frames
    if len(frames) < needed:
        raise SettingsError("video", f"{video_path} has {len(frames)} frames; the captioner samples {needed}, "
                                     f"so give a clip of at least {needed} frames")
    caption = from_main_process(captioner.caption(frames))  # every rank conditions on rank 0's
    log.info("caption of %s: %s", video_path, caption)
    if not caption:
        log.warning("the captioner returned an empty caption for %s", video_path)
    return combine_prompt(prompt, caption) or DEFAULT_CONTINUATION_PROMPT


def continuation_inputs(models, video_path, prompt=None):
    """(last frame as a PIL image, prompt) for continuing the clip at `video_path`."""
    frames, _ = read_video(video_path)
    return Image.fromarray(frames[-1].numpy()), continuation_prompt(models.captioner, frames, prompt, video_path)


def prepare_v2v(models, generation):
    """generation.video is continued; generation.prompt is the caption's prefix (the whole prompt
    without a captioner)."""
    g = generation
    image, prompt = continuation_inputs(models, require(g.video, "video", g.task), g.prompt)
    return prepare_continuation(models, g, image, prompt, g.video)


def prepare_continuation(models, generation, image, prompt, name):
    """The image-to-video job that continues the clip `name` from its last frame `image` with `prompt`
    (the captioned one); generation.prompt is kept as the caption's prefix."""
    log.info("continuing %s from its last frame (%dx%d) with the prompt: %s", name, image.width, image.height,
             prompt)
    prepare = prepare_i2v if models.config.model_type == "i2v" else prepare_ti2v
    job = prepare(models, generation.replace(prompt=prompt), image=image)
    job.record["caption_prefix"] = generation.prompt
    return job


# ---------------------------------------------------------------------------- the chain's log
def read_prompts_log(path):
    """{video index: (file name, seed, prompt)} from a prompts log (tab-separated, one line per video)."""
    entries = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                name, seed, prompt = line.rstrip("\n").split("\t", 2)
                entries[int(name.split("_")[1])] = (name, int(seed.removeprefix("seed=")),
                                                    prompt.removeprefix("prompt="))
    return entries


def write_prompts_log(path, entries):
    with atomic_path(path) as temp:
        with open(temp, "w") as f:
            for index in sorted(entries):
                name, seed, prompt = entries[index]
                f.write(f"{name}\tseed={seed}\tprompt={prompt}\n")


def finished_videos(output_dir):
    """Log entries 1..k whose video files all exist: the part of the chain a rerun keeps (a later
    video continues an earlier one, so the chain is cut at the first gap)."""
    entries = read_prompts_log(os.path.join(output_dir, PROMPTS_LOG))
    finished = {}
    while len(finished) + 1 in entries and os.path.exists(os.path.join(output_dir, entries[len(finished) + 1][0])):
        finished[len(finished) + 1] = entries[len(finished) + 1]
    return finished


def stitched_frames(paths):
    """The frames of consecutive videos, without each continuation's first frame (a repeat of the
    previous video's last frame). Reads one video at a time."""
    for number, path in enumerate(paths):
        frames, _ = read_video(path)
        yield from frames[0 if number == 0 else 1:]
