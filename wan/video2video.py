"""Video-to-video continuation: the last frame of a video conditions image-to-video generation, and a
vision-language model's description of the video is the prompt.

- `WanV2V`: I2V-A14B (Wan2.1 VAE, two experts); `WanV2V5B`: TI2V-5B (Wan2.2 VAE). Both keep their
  base class's `prepare` / `generate` and add `v2v(video_path, prompt=None, ...)`.
- `continue_chain` makes a long video from many continuations, each starting from the previous
  one's last frame; it resumes, logs every prompt and seed, and stitches the chain into one mp4.
"""
import logging
import os
from typing import NamedTuple

import torch
from PIL import Image
from tqdm import tqdm

from .distributed import from_main_process
from .base import resolve_device, resolve_seed
from .errors import WanInputError
from .image2video import WanI2V
from .modules.vlm import DEFAULT_MAX_NEW_TOKENS, DEFAULT_QUESTION, VideoCaptioner
from .textimage2video import WanTI2V
from .utils.fileio import atomic_path
from .utils.utils import save_video
from .utils.video_io import probe_video, read_video, write_video

DEFAULT_CONTINUATION_PROMPT = "continue video"
PROMPTS_LOG = "prompts_log.txt"
STITCHED_VIDEO = "stitched_video.mp4"

log = logging.getLogger(__name__)


class Continuation(NamedTuple):
    video: torch.Tensor  # [3, F, H, W] in [-1, 1]; frame 0 continues the source's last frame
    prompt: str  # the prompt the video was generated with


def combine_prompt(prefix, caption):
    """`prefix. caption` on one line; either part may be empty."""
    parts = [" ".join(part.split()).rstrip(" .:") for part in (prefix or "", caption or "")]
    return ". ".join(part for part in parts if part)


class _Continuation:
    """What WanV2V and WanV2V5B add to their image-to-video base class."""

    def __init__(self, config, checkpoint_dir, vlm_path=None, vlm_device=None, vlm_question=DEFAULT_QUESTION,
                 vlm_max_new_tokens=DEFAULT_MAX_NEW_TOKENS, **kwargs):
        self.captioner = None
        if vlm_path:  # checked before the video model loads, so a bad path fails in seconds
            video_device = resolve_device(kwargs.get("device"), kwargs.get("device_id", 0))
            vlm_device = torch.device(vlm_device) if vlm_device else video_device
            # Sharing a device with the video model: park the VLM on the CPU between captions.
            shared = (vlm_device.type, vlm_device.index or 0) == (video_device.type, video_device.index or 0)
            self.captioner = VideoCaptioner(vlm_path, device=vlm_device, question=vlm_question,
                                            max_new_tokens=vlm_max_new_tokens, offload=shared)
        super().__init__(config, checkpoint_dir, **kwargs)

    def continuation_prompt(self, frames, prompt, video_path):
        """The caption of `frames` after the optional prefix `prompt`; `prompt` alone without a captioner."""
        if self.captioner is None:
            if not prompt:
                raise WanInputError(f"no prompt for continuing {video_path}: give --prompt, or --vlm_path to "
                                    "caption the video")
            return prompt
        needed = self.captioner.num_frames
        if len(frames) < needed:
            raise WanInputError(f"--video {video_path}: {len(frames)} frames, the captioner samples {needed}; "
                                f"give a clip of at least {needed} frames")
        caption = from_main_process(self.captioner.caption(frames))  # every rank conditions on rank 0's
        log.info("caption of %s: %s", video_path, caption)
        if not caption:
            log.warning("the captioner returned an empty caption for %s", video_path)
        return combine_prompt(prompt, caption) or DEFAULT_CONTINUATION_PROMPT

    def continuation_inputs(self, video_path, prompt=None):
        """(last frame as a PIL image, prompt) for continuing the video at `video_path`."""
        frames, _ = read_video(video_path)
        last_frame = Image.fromarray(frames[-1].numpy())
        return last_frame, self.continuation_prompt(frames, prompt, video_path)

    def v2v(self, video_path, prompt=None, **generate_kwargs):
        """Continue the video at `video_path`. With a captioner, `prompt` (optional) is a prefix of the
        caption; without one it is the whole prompt. `generate_kwargs` go to `generate`."""
        image, prompt = self.continuation_inputs(video_path, prompt)
        log.info("continuing %s from its last frame (%dx%d) with prompt: %s", video_path, image.width,
                 image.height, prompt)
        return Continuation(self.generate(prompt, image, **generate_kwargs), prompt)


class WanV2V(_Continuation, WanI2V):
    """Continuation with the I2V-A14B experts; `generate_kwargs` of `v2v` are WanI2V.generate's."""


class WanV2V5B(_Continuation, WanTI2V):
    """Continuation with TI2V-5B; `generate_kwargs` of `v2v` are WanTI2V.generate's."""


# --------------------------------------------------------------------------------------------
# chained continuation


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


def continue_chain(task, video, output_dir, num_videos, base_seed=42, prompt_prefix=DEFAULT_CONTINUATION_PROMPT,
                   fps=None, **generate_kwargs):
    """Generate videos 1..num_videos into `output_dir`: video 1 continues `video`, video i continues
    video i-1; video i (from 1) uses seed base_seed + i - 1. Videos already in the prompts log are kept,
    so a rerun resumes after the last finished one. Returns (video paths, stitched video path).

    `task` is a WanV2V or WanV2V5B, or a callable returning one (loaded only if something is left
    to generate)."""
    if num_videos < 1:
        raise WanInputError(f"--num_videos must be at least 1, got {num_videos}")
    base_seed = resolve_seed(base_seed)
    log_path = os.path.join(output_dir, PROMPTS_LOG)
    entries = finished_videos(output_dir)
    source = video
    for index in tqdm(range(1, num_videos + 1), desc="videos", unit="video"):
        if index in entries:
            log.info("video %d already finished (%s), skipping", index, entries[index][0])
            source = os.path.join(output_dir, entries[index][0])
            continue
        if not isinstance(task, _Continuation):
            task = task()
        seed = base_seed + index - 1
        name = f"video_{index:02d}_seed{seed}.mp4"
        log.info("video %d/%d: continuing %s (seed %d)", index, num_videos, source, seed)
        result = task.v2v(source, prompt_prefix, seed=seed, **generate_kwargs)
        save_video(result.video[None], save_file=os.path.join(output_dir, name),
                   fps=fps or task.config.sample_fps, nrow=1, normalize=True, value_range=(-1, 1))
        entries[index] = (name, seed, result.prompt)
        write_prompts_log(log_path, entries)
        source = os.path.join(output_dir, name)
    paths = [os.path.join(output_dir, entries[i][0]) for i in range(1, num_videos + 1)]
    stitched = os.path.join(output_dir, STITCHED_VIDEO)
    write_video(stitched_frames(paths), stitched, fps=probe_video(paths[0])[1])
    log.info("stitched %d videos into %s", num_videos, stitched)
    return paths, stitched
