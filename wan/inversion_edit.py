"""TI2VInversionEditor: training-free video editing with Wan2.2 TI2V-5B by flow inversion.

1. Encode the source clip (X0) with the Wan2.2 VAE; its first latent frame is the source frame.
2. Invert: integrate the flow ODE from X0 (sigma 0) up to noise with the source first frame held
   fixed (per-token timestep 0 on its tokens) and the source prompt.
3. Regenerate from that noise with the edited first frame and the target prompt (CFG with the
   negative prompt), holding the new first frame fixed after every step; decode.
The noise keeps the source's motion; the new first frame and prompt change its appearance.

Both directions use the one flow core (`wan.flow`): the inversion is `flow.invert` on the same
`GuidedVelocity` that generation samples.
"""
import hashlib
import logging
import os
from dataclasses import dataclass

import torch

from . import flow
from .base import Job
from .configs import WAN_CONFIGS
from .errors import WanInputError
from .staged import checkpoint_fingerprint, read_stage_file, write_stage_file
from .textimage2video import WanTI2V
from .utils.utils import best_output_size
from .utils.fileio import atomic_path
from .utils.video_io import (frames_4n1, from_model_range, image_to_frames, load_image, probe_video, read_video,
                             resize_center_crop, to_model_range, write_video)

log = logging.getLogger(__name__)

@dataclass
class SourceClip:
    frames: torch.Tensor  # uint8 [F, H, W, 3], resized and cropped to the model grid
    fps: float
    path: str
    sha256: str


@dataclass
class Inversion:
    """An inverted source: the latent at `sigma` plus what it was made with."""

    latent: torch.Tensor  # [48, T, h, w] fp32
    source_first_frame: torch.Tensor  # [48, 1, h, w]
    settings: dict

    def save(self, path):
        tensors = {"latent": self.latent, "source_first_frame": self.source_first_frame}
        write_stage_file(path, tensors, {"kind": "inversion", "settings": self.settings})

    @classmethod
    def load(cls, path):
        tensors, header = read_stage_file(path, "--load_inversion file")
        if header.get("kind") != "inversion" or {"latent", "source_first_frame"} - tensors.keys():
            raise WanInputError(f"--load_inversion: {path} is not an inversion saved by this toolkit")
        return cls(tensors["latent"], tensors["source_first_frame"], header["settings"])

    def check_matches(self, expected):
        """Refuse an inversion made from another video, size, frame count or model."""
        for key in ("video_sha256", "size", "frame_num", "model"):
            if self.settings.get(key) != expected.get(key):
                raise WanInputError(f"--load_inversion: saved inversion has {key}={self.settings.get(key)}, "
                                    f"but this edit needs {key}={expected.get(key)}")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TI2VInversionEditor:
    """Edit videos with a Wan2.2 TI2V-5B checkpoint; load once, run many edits."""

    def __init__(self, ckpt_dir, device=None, offload_model=False, t5_cpu=False, convert_model_dtype=False,
                 config=None, compile_model=False, vae_dtype=torch.float32, load=("t5", "vae", "dit"),
                 t5_fsdp=False, dit_fsdp=False, use_sp=False, cfg_parallel=False, step_cache=0.0, fp8=False,
                 attention=None):
        self.config = config or WAN_CONFIGS["ti2v-5B"]
        self.offload_model = offload_model
        self.model = WanTI2V(self.config, ckpt_dir, device=device, t5_cpu=t5_cpu,
                             convert_model_dtype=convert_model_dtype, compile_model=compile_model,
                             vae_dtype=vae_dtype, load=load, t5_fsdp=t5_fsdp, dit_fsdp=dit_fsdp, use_sp=use_sp,
                             cfg_parallel=cfg_parallel, step_cache=step_cache, fp8=fp8, attention=attention)
        self.device = self.model.device
        self.model_id = checkpoint_fingerprint(ckpt_dir, self.config)

    # -- inputs ----------------------------------------------------------------------------
    def load_source(self, source_video, frame_num, max_area):
        """Read the clip's first `frame_num` frames (the longest 4n+1 prefix if it is shorter) and
        resize/crop them onto the model grid, as TI2V does for its input image."""
        if frame_num < 1 or frame_num % 4 != 1:
            raise WanInputError(f"--frame_num must be 4n+1 (1, 5, 9, 13, 17, ...), got {frame_num}")
        available = probe_video(source_video)[0]
        if available < frame_num:
            usable = frames_4n1(available)
            log.warning("%s has %d frames, fewer than --frame_num %d: using the first %d", source_video,
                        available, frame_num, usable)
            frame_num = usable
        frames, fps = read_video(source_video, max_frames=frame_num)
        if frames.shape[0] < frame_num:  # the header promised more frames than decode
            frame_num = frames_4n1(frames.shape[0])
            log.warning("%s decodes to %d frames only: using the first %d", source_video, frames.shape[0], frame_num)
            frames = frames[:frame_num]
        step = self.config.vae_stride[1] * self.config.patch_size[1]
        width, height = best_output_size(frames.shape[2], frames.shape[1], step, step, max_area)
        return SourceClip(resize_center_crop(frames, width, height), fps, str(source_video), file_sha256(source_video))

    def target_frame(self, target_image, clip):
        """The edited first frame as uint8 frames [1, H, W, 3], converted and resized/cropped
        exactly like the source frames; the source's own first frame when no image is given."""
        if target_image is None:
            return clip.frames[:1]
        return fit_image(target_image, (clip.frames.shape[2], clip.frames.shape[1]))

    @torch.no_grad()
    def encode(self, frames):
        return self.model.vae.encode([to_model_range(frames).to(self.device)])[0]

    def encode_target_frame(self, target_image, size):
        """Latent of the edited first frame, resized/cropped to `size` (W, H) like the source."""
        return self.encode(fit_image(target_image, size))

    def encode_text(self, prompt, n_prompt="", guide_scale=1.0):
        """(context, context_null); the negative prompt is encoded only when CFG needs it."""
        context, context_null = self.model.encode_prompts(prompt, n_prompt, self.offload_model)
        return context, (context_null if guide_scale != 1.0 else None)

    # -- the two passes over latents (no text or VAE encoder needed) ----------------------------
    def edit_job(self, latent, context, context_null, guide_scale, first_frame):
        """A job for the task's flow core: `latent` to integrate, `first_frame` held fixed."""
        settings = dict(guide_scale=guide_scale, seq_len=flow.seq_len_for(latent.shape, self.config.patch_size))
        return Job(noise=latent.to(self.device), context=context, context_null=context_null, settings=settings,
                   first_frame=first_frame.to(self.device))

    @torch.no_grad()
    def invert_latent(self, latent, context, context_null, shift=5.0, inversion_steps=50, guide_scale=1.0,
                      scheme="euler", strength=1.0):
        """Integrate the source latent from sigma 0 up the schedule (all of it, or the low-noise
        fraction `strength`), its first frame held fixed. Returns (latent at sigma, sigma)."""
        if not 0.0 < strength <= 1.0:
            raise WanInputError(f"--inversion_strength must be in (0, 1], got {strength}")
        job = self.edit_job(latent, context, context_null, guide_scale, latent[:, :1])
        schedule = flow.make_schedule("euler", inversion_steps, shift, self.config.num_train_timesteps)
        partial = schedule.tail(max(1, round(strength * inversion_steps)))
        return self.model.invert(job, partial, scheme, self.offload_model), float(partial.sigmas[0])

    def inversion_of(self, latent, source, source_prompt, context, context_null, shift, inversion_steps,
                     guide_scale, scheme, strength):
        """`invert_latent` packed as an Inversion with the settings a later edit checks; `source`
        holds the clip's video, video_sha256, fps, frame_num and size."""
        noise, sigma = self.invert_latent(latent, context, context_null, shift, inversion_steps, guide_scale, scheme,
                                          strength)
        settings = dict(source, shift=shift, inversion_steps=inversion_steps, scheme=scheme, strength=strength,
                        sigma=sigma, guide_scale_inversion=guide_scale, source_prompt=source_prompt,
                        model=self.model_id)
        # Causal VAE: the first latent frame of the clip equals encoding frame 0 alone.
        return Inversion(noise, latent[:, :1].clone(), settings)

    @torch.no_grad()
    def generate_latent(self, noise, sigma, first_frame, context, context_null, shift=5.0, generation_steps=50,
                        guide_scale=5.0, sample_solver="euler"):
        """Sample from a latent inverted up to `sigma`, with `first_frame` held fixed."""
        job = self.edit_job(noise, context, context_null, guide_scale, first_frame)
        schedule = flow.make_schedule(sample_solver, generation_steps, shift, self.config.num_train_timesteps)
        start = first_index_at_or_below(schedule.sigmas, sigma)
        return self.model.denoise(job, self.offload_model, schedule=schedule, start=start)

    # -- the public one-call API ----------------------------------------------------------------
    @torch.no_grad()
    def invert(self, source_video, source_prompt, frame_num=17, max_area=704 * 1280, shift=5.0, inversion_steps=50,
               guide_scale_inversion=1.0, n_prompt="", scheme="euler", strength=1.0, clip=None):
        """Invert the source clip to noise (or, with strength < 1, part of the way)."""
        clip = clip or self.load_source(source_video, frame_num, max_area)
        latent = self.encode(clip.frames)
        context, context_null = self.encode_text(source_prompt, n_prompt, guide_scale_inversion)
        source = dict(video=clip.path, video_sha256=clip.sha256, fps=clip.fps, frame_num=clip.frames.shape[0],
                      size=[clip.frames.shape[2], clip.frames.shape[1]])
        return self.inversion_of(latent, source, source_prompt, context, context_null, shift, inversion_steps,
                                 guide_scale_inversion, scheme, strength)

    @torch.no_grad()
    def generate_from_inversion(self, inversion, target_prompt, target_image=None, generation_steps=50,
                                guide_scale_generation=5.0, n_prompt="", sample_solver="euler", decode=True):
        """Regenerate from an inversion with a new first frame and prompt. `target_image` is a
        path or PIL image (None: the source's first frame). Returns [3, F, H, W] in [-1, 1]
        (or the latent with decode=False)."""
        if target_image is None:
            first_frame = inversion.source_first_frame
        else:
            first_frame = self.encode_target_frame(target_image, inversion.settings["size"])
        context, context_null = self.encode_text(target_prompt, n_prompt, guide_scale_generation)
        edited = self.generate_latent(inversion.latent, inversion.settings["sigma"], first_frame, context,
                                      context_null, inversion.settings["shift"], generation_steps,
                                      guide_scale_generation, sample_solver)
        return self.model.decode(edited) if decode else edited

    def edit_video(self, source_video, source_prompt, target_prompt, target_image=None, max_area=704 * 1280,
                   frame_num=17, shift=5.0, inversion_steps=50, generation_steps=50, guide_scale_inversion=1.0,
                   guide_scale_generation=5.0, n_prompt="", seed=-1, sample_solver="euler", inversion_scheme="euler",
                   inversion_strength=1.0):
        """Invert `source_video` and regenerate it from `target_image` and `target_prompt`.
        Deterministic: `seed` is accepted for API compatibility; nothing here is random."""
        inversion = self.invert(source_video, source_prompt, frame_num, max_area, shift, inversion_steps,
                                guide_scale_inversion, n_prompt, inversion_scheme, inversion_strength)
        return self.generate_from_inversion(inversion, target_prompt, target_image, generation_steps,
                                            guide_scale_generation, n_prompt, sample_solver)


EDIT_DEFAULTS = dict(frame_num=17, max_area=704 * 1280, shift=5.0, inversion_steps=50, generation_steps=50,
                     guide_scale_inv=1.0, guide_scale_gen=5.0, sample_solver="euler", inversion_scheme="euler",
                     inversion_strength=1.0, n_prompt="")


@dataclass
class EditInputs:
    """Everything the latent passes of one edit need: the encode stage's output."""

    tensors: dict  # source_latent, target_first_frame, source_context, target_context[, null_context]
    settings: dict


class StagedEdit:
    """One edit as encode -> denoise -> decode steps over an editor; `run_all` chains them in one
    process, the staged CLI runs each in its own with the files of `wan.staged` in between."""

    def __init__(self, editor):
        self.editor = editor

    @torch.no_grad()
    def encode(self, video, source_prompt, target_prompt, target_image=None, **options):
        e, o = self.editor, {**EDIT_DEFAULTS, **options}
        clip = e.load_source(video, o["frame_num"], o["max_area"])
        latent = e.encode(clip.frames)
        size = [clip.frames.shape[2], clip.frames.shape[1]]
        target = latent[:, :1] if target_image is None else e.encode_target_frame(target_image, size)
        needs_null = o["guide_scale_inv"] != 1.0 or o["guide_scale_gen"] != 1.0
        source_context, null_context = e.model.encode_prompts(source_prompt, o["n_prompt"], e.offload_model)
        target_context, _ = e.model.encode_prompts(target_prompt, o["n_prompt"], e.offload_model)
        tensors = dict(source_latent=latent, target_first_frame=target, source_context=source_context[0],
                       target_context=target_context[0])
        if needs_null:
            tensors["null_context"] = null_context[0]
        settings = dict(o, video=str(video), video_sha256=clip.sha256, fps=clip.fps, size=size,
                        frame_num=clip.frames.shape[0], source_prompt=source_prompt, target_prompt=target_prompt,
                        target_image=None if target_image is None else str(target_image))
        return EditInputs(tensors, settings)

    @torch.no_grad()
    def denoise(self, inputs, load_inversion=None, save_inversion=None):
        """Invert (or reuse a saved inversion), then regenerate: the final latent."""
        e, s, t = self.editor, inputs.settings, {k: v.to(self.editor.device) for k, v in inputs.tensors.items()}
        null = t.get("null_context")
        if load_inversion:
            inversion = Inversion.load(load_inversion)
            inversion.check_matches(dict(video_sha256=s["video_sha256"], size=s["size"], frame_num=s["frame_num"],
                                         model=e.model_id))
            log.info("reusing inversion %s", load_inversion)
        else:
            source = {key: s[key] for key in ("video", "video_sha256", "fps", "frame_num", "size")}
            inversion = e.inversion_of(t["source_latent"], source, s["source_prompt"], [t["source_context"]],
                                       [null] if s["guide_scale_inv"] != 1.0 else None, s["shift"],
                                       s["inversion_steps"], s["guide_scale_inv"], s["inversion_scheme"],
                                       s["inversion_strength"])
            if save_inversion:
                inversion.save(save_inversion)
                log.info("saved inversion to %s", save_inversion)
        return e.generate_latent(inversion.latent, inversion.settings["sigma"], t["target_first_frame"],
                                 [t["target_context"]], [null] if s["guide_scale_gen"] != 1.0 else None,
                                 inversion.settings["shift"], s["generation_steps"], s["guide_scale_gen"],
                                 s["sample_solver"])

    def decode(self, latent):
        return self.editor.model.decode(latent)


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


def fit_image(image, size):
    """A path or PIL image -> uint8 frames [1, H, W, 3] on the (W, H) grid, by the TI2V rule."""
    image = load_image(image) if isinstance(image, (str, os.PathLike)) else image
    return image_to_frames(resize_center_crop(image.convert("RGB"), *size))


def first_index_at_or_below(sigmas, sigma):
    """Index of the first grid sigma not above `sigma` (with float tolerance): where generation
    starts from a latent inverted up to `sigma`."""
    for i, s in enumerate(sigmas[:-1].tolist()):
        if s <= sigma + 1e-6:
            return i
    return len(sigmas) - 2
