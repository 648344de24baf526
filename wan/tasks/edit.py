"""Training-free video editing with TI2V-5B by flow inversion.

1. The source clip is encoded; its first latent frame is the source frame.
2. Invert: the flow ODE integrates the source latent from sigma 0 up to noise (or part of the way),
   the source first frame held fixed (per-token timestep 0 on its tokens), with the source prompt.
3. Regenerate from there with the edited first frame and the target prompt (CFG with the
   negative prompt), the new first frame held fixed after every step.
The noise keeps the source's motion; the new first frame and prompt change its appearance.

`prepare_edit` returns the two jobs; wan.runner runs them through the one flow core.
"""
import hashlib
import logging
import os
from dataclasses import dataclass

import torch

from .. import flow
from ..jobs import EditJob, Inversion, InversionJob, Job, Source, file_sha256
from ..settings import Settings, SettingsError, text
from ..utils.fileio import atomic_path
from ..utils.utils import best_output_size
from ..utils.video_io import frames_4n1, from_model_range, load_image, probe_video, read_video, resize_center_crop
from ..utils.video_io import write_video
from .common import encode_prompts, grid_of, latent_shape, tokens
from .ti2v import fit_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditRequest(Settings):
    """One edit: a manifest line, or the script's flags."""

    video: str = None
    source_prompt: str = None
    target_prompt: str = None
    target_image: str = None  # the edited first frame; None: the source's own
    output: str = None

    def __post_init__(self):
        for name in ("video", "source_prompt", "target_prompt", "target_image", "output"):
            text(name, getattr(self, name), optional=True)

    def require(self, *names):
        for name in names:
            if not getattr(self, name):
                raise SettingsError(name, "is required")

    def check_files(self):
        """Before any model loads: the source and the edited frame exist."""
        for name in ("video", "target_image"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise SettingsError(name, f"file not found: {path}")


def load_source(config, path, frame_num, max_area):
    """The clip's first `frame_num` frames (its longest 4n+1 prefix if it is shorter), resized and
    cropped onto the model grid like TI2V's input image."""
    available = probe_video(path)[0]
    if available < frame_num:
        usable = frames_4n1(available)
        log.warning("%s has %d frames, fewer than the %d asked for: using the first %d", path, available, frame_num,
                    usable)
        frame_num = usable
    frames, fps = read_video(path, max_frames=frame_num)
    if frames.shape[0] < frame_num:  # the header promised more frames than decode
        frame_num = frames_4n1(frames.shape[0])
        log.warning("%s decodes to %d frames only: using the first %d", path, frames.shape[0], frame_num)
        frames = frames[:frame_num]
    return fit_source(config, frames, fps, max_area, str(path), file_sha256(path))


def fit_source(config, frames, fps, max_area, name, sha256=None):
    """A Source from uint8 frames [F, H, W, 3] (4n+1 of them) in memory, resized and cropped onto the
    model grid like a file's; `sha256` defaults to the hash of the frames' bytes."""
    step = grid_of(config)
    width, height = best_output_size(frames.shape[2], frames.shape[1], step, step, max_area)
    sha256 = sha256 or hashlib.sha256(frames.contiguous().numpy().tobytes()).hexdigest()
    return Source(name, sha256, fps, frames.shape[0], (width, height), resize_center_crop(frames, width, height))


def target_frame(request, source):
    """The edited first frame as uint8 [1, H, W, 3] on the source's grid; the source's own without one."""
    if request.target_image is None:
        return source.frames[:1]
    return fit_image(load_image(request.target_image), source.size)


def prepare_inversion(models, source, source_prompt, settings):
    """The source latent integrated up to noise with the source prompt, its first frame held fixed."""
    latent = models.encode_frames(source.frames)
    inv = settings.inversion
    context, context_null = encode_prompts(models, source_prompt, settings.n_prompt, inv.guide_scale)
    condition = flow.FirstFrameCondition(latent[:, :1].clone(), models.config.patch_size)
    return InversionJob(latent, context, context_null, condition, inv, settings.sampling.shift,
                        tokens(models, latent.shape), settings.sampling.exact_timesteps)


def prepare_regeneration(models, first_frame, target_prompt, settings, seq_len, record=None):
    """Sampling from an inverted latent (filled in later) of `seq_len` tokens with `first_frame` (a
    latent [z, 1, h, w]) held fixed and the target prompt, starting where the inversion ended."""
    gen = settings.sampling
    context, context_null = encode_prompts(models, target_prompt, settings.n_prompt, gen.guide_scale)
    sigma = inversion_top(settings.inversion, gen.shift, models.num_train_timesteps)
    start = flow.sampling_schedule(gen, models.num_train_timesteps).first_index_at_or_below(sigma)
    return Job(None, context, context_null, flow.FirstFrameCondition(first_frame, models.config.patch_size), gen,
               seq_len, start, record or {})


def prepare_edit(models, request, settings, invert=True):
    """The inversion job (source latent, source prompt) and the generation job that continues from
    its result (edited first frame, target prompt), for `request` under `settings` (EditSettings).
    invert=False leaves the inversion out (a saved one will be used): the source is not encoded."""
    source = load_source(models.config, request.video, settings.frame_num, settings.max_area)
    target = None if request.target_image is None else target_frame(request, source)
    return prepare_edit_of(models, source, target, request.source_prompt, request.target_prompt, settings,
                           request.to_dict(), invert)


def prepare_edit_of(models, source, target, source_prompt, target_prompt, settings, record=None, invert=True):
    """`prepare_edit` for a Source and an edited first frame (uint8 [1, H, W, 3] on the source's grid;
    None: the source's own) already in memory."""
    inversion = prepare_inversion(models, source, source_prompt, settings) if invert else None
    if target is None and inversion is not None:
        first_frame = inversion.latent[:, :1].clone()  # causal VAE: frame 0 of the clip's latent is frame 0 alone
    else:
        first_frame = models.encode_frames(source.frames[:1] if target is None else target)
    frames = settings.replace(frame_num=source.frame_num)
    seq_len = tokens(models, latent_shape(models, source.frame_num, *source.size))
    record = {**frames.to_dict(), **(record or {}), "source_prompt": source_prompt, "target_prompt": target_prompt,
              "output_size": list(source.size)}
    generation = prepare_regeneration(models, first_frame, target_prompt, settings, seq_len, record)
    return EditJob(inversion, generation, source, source.frames[:1] if target is None else target)


def inversion_result(job, source, source_prompt, latent, model):
    """The Inversion record of `job` run on `source` (what a later edit checks before reusing it)."""
    settings = dict(job.inversion.to_dict(), shift=job.shift, source_prompt=source_prompt, model=model)
    return Inversion(latent, inversion_top(job.inversion, job.shift), source.identity(), settings)


def inversion_top(inversion, shift, num_train_timesteps=1000):
    """The sigma an inversion with these settings reaches (1.0 for a full inversion)."""
    return float(flow.inversion_schedule(inversion.steps, shift, inversion.strength, num_train_timesteps).sigmas[0])


def write_comparison(output, source_frames, target_frame, edited, fps):
    """OUTPUT_comparison.mp4 with three panels per frame (source | target image held | edit), and
    the three first frames as PNGs beside the output."""
    from PIL import Image

    stem = os.path.splitext(output)[0]
    edited_frames = from_model_range(edited)
    frames = source_frames[: edited_frames.shape[0]]
    held = target_frame.expand(edited_frames.shape[0], -1, -1, -1)
    write_video(torch.cat([frames, held, edited_frames], dim=2), f"{stem}_comparison.mp4", fps=fps)
    for name, frame in (("source", frames[0]), ("target", target_frame[0]), ("edited", edited_frames[0])):
        with atomic_path(f"{stem}_{name}_first_frame.png") as tmp:
            Image.fromarray(frame.numpy()).save(tmp)
