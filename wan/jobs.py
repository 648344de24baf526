"""Jobs: what the DiT stage needs, as typed values, and the one file format they travel in.

- `Job`: one generation: the latent to start from (noise), the text embeddings, the `Condition`,
  the `Sampling` settings, the token count and where on the schedule to start; `record` holds what
  made it (task, prompt, seed, size...), for the stages after it and for reports.
- `InversionJob`: the same for integrating a clean latent up to noise (`InversionSettings`).
- `EditJob`: an edit = an inversion job, a generation job that starts from its result, and the
  `Source` record (the clip it came from).
- `Inversion`: an inverted source, kept to run many edits from one inversion.

`save(path, kind, value, fingerprint)` / `load(path, kind, fingerprint)` write and read any of them
as safetensors with a JSON header that names the kind: handing a file of one kind to a stage that
expects another is a one-line error naming both.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from . import flow
from .errors import WanInputError
from .settings import InversionSettings, Sampling
from .utils.fileio import save_safetensors_atomic

FORMAT = "wan-job/2"
KINDS = ("generation", "edit", "inversion", "latent", "checkpoint")
KIND_NAMES = {"generation": "a generation job", "edit": "an edit job", "inversion": "a saved inversion",
              "latent": "a denoised latent", "checkpoint": "a denoise checkpoint"}


@dataclass
class Job:
    latent: torch.Tensor  # where sampling starts: noise, or an inverted latent (None until it exists)
    context: torch.Tensor  # [L, text_dim] prompt embedding
    context_null: torch.Tensor  # negative prompt embedding; None: no guidance
    condition: flow.Condition
    sampling: Sampling
    seq_len: int
    start: int = 0  # index on the sampling schedule where integration begins
    record: dict = field(default_factory=dict)


@dataclass
class InversionJob:
    latent: torch.Tensor  # the clean source latent (sigma 0)
    context: torch.Tensor
    context_null: torch.Tensor
    condition: flow.Condition
    inversion: InversionSettings
    shift: float
    seq_len: int
    exact_timesteps: bool = False  # as the generation that follows (wan.settings.Sampling)


@dataclass
class Source:
    """The clip an edit starts from, as the editor saw it."""

    path: str
    sha256: str
    fps: float
    frame_num: int
    size: tuple  # (width, height) on the model grid
    frames: torch.Tensor = None  # uint8 [F, H, W, 3], resized and cropped (kept in memory only)

    def identity(self):
        return {"video": self.path, "video_sha256": self.sha256, "fps": self.fps, "frame_num": self.frame_num,
                "size": list(self.size)}


@dataclass
class EditJob:
    inversion: InversionJob
    generation: Job  # its latent is the inversion's result
    source: Source
    target_frame: torch.Tensor = None  # uint8 [1, H, W, 3]: the edited first frame (for the comparison)

    @property
    def record(self):
        """The settings the edit was made with (those of its regeneration, which hold the edit's)."""
        return self.generation.record


@dataclass
class Inversion:
    """An inverted source: the latent at `sigma` and what it was made from."""

    latent: torch.Tensor
    sigma: float
    source: dict  # Source.identity()
    settings: dict  # InversionSettings, shift, source prompt

    def check_matches(self, source, model):
        """Refuse an inversion made from another clip, size, frame count or model."""
        for key in ("video_sha256", "size", "frame_num"):
            if self.source.get(key) != source.identity()[key]:
                raise WanInputError(f"load_inversion: the saved inversion has {key}={self.source.get(key)}, but "
                                    f"this edit needs {key}={source.identity()[key]}")
        if self.settings.get("model") != model:
            raise WanInputError(f"load_inversion: the saved inversion was made with another model "
                                f"({self.settings.get('model')}, this one is {model})")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- conditions as tensors
def _condition_tensors(condition, prefix):
    if isinstance(condition, flow.ConcatCondition):
        tensors = {f"{prefix}y": condition.y}
        if condition.clip_fea is not None:
            tensors[f"{prefix}clip_fea"] = condition.clip_fea
        return tensors, "concat"
    if isinstance(condition, flow.FirstFrameCondition):
        return {f"{prefix}first_frame": condition.first_frame}, "first_frame"
    return {}, "none"


def _condition_from(kind, tensors, prefix, patch_size):
    if kind == "concat":
        return flow.ConcatCondition(tensors[f"{prefix}y"], tensors.get(f"{prefix}clip_fea"))
    if kind == "first_frame":
        return flow.FirstFrameCondition(tensors[f"{prefix}first_frame"], patch_size)
    return flow.Condition()


def _job_parts(job, prefix):
    """(tensors, header) of a Job or InversionJob, names prefixed (an edit holds two)."""
    tensors, condition = _condition_tensors(job.condition, prefix)
    tensors[f"{prefix}context"] = job.context
    if job.latent is not None:
        tensors[f"{prefix}latent"] = job.latent
    if job.context_null is not None:
        tensors[f"{prefix}context_null"] = job.context_null
    header = {"condition": condition, "seq_len": job.seq_len}
    if isinstance(job, Job):
        header.update(sampling=job.sampling.to_dict(), start=job.start, record=job.record)
    else:
        header.update(inversion=job.inversion.to_dict(), shift=job.shift, exact_timesteps=job.exact_timesteps)
    return tensors, header


def _job_from(tensors, header, prefix, patch_size):
    common = dict(latent=tensors.get(f"{prefix}latent"), context=tensors[f"{prefix}context"],
                  context_null=tensors.get(f"{prefix}context_null"),
                  condition=_condition_from(header["condition"], tensors, prefix, patch_size),
                  seq_len=header["seq_len"])
    if "sampling" in header:
        return Job(sampling=Sampling.from_dict(header["sampling"], "sampling"), start=header["start"],
                   record=header["record"], **common)
    return InversionJob(inversion=InversionSettings.from_dict(header["inversion"], "inversion"),
                        shift=header["shift"], exact_timesteps=header.get("exact_timesteps", False), **common)


def to_tensors(kind, value):
    """(tensors, header) for any kind of value this module writes."""
    if kind == "generation":
        return _job_parts(value, "")
    if kind == "edit":
        tensors, inversion = _job_parts(value.inversion, "inversion.")
        generation_tensors, generation = _job_parts(value.generation, "generation.")
        tensors.update(generation_tensors)
        if value.target_frame is not None:
            tensors["target_frame"] = value.target_frame
        return tensors, {"inversion": inversion, "generation": generation, "source": value.source.identity()}
    if kind == "inversion":
        return {"latent": value.latent}, {"sigma": value.sigma, "source": value.source, "settings": value.settings}
    raise ValueError(f"unknown job kind {kind!r}")


def from_tensors(kind, tensors, header, patch_size=(1, 2, 2)):
    if kind == "generation":
        return _job_from(tensors, header, "", patch_size)
    if kind == "edit":
        source = header["source"]
        return EditJob(_job_from(tensors, header["inversion"], "inversion.", patch_size),
                       _job_from(tensors, header["generation"], "generation.", patch_size),
                       Source(source["video"], source["video_sha256"], source["fps"], source["frame_num"],
                              tuple(source["size"])),
                       tensors.get("target_frame"))
    if kind == "inversion":
        return Inversion(tensors["latent"], header["sigma"], header["source"], header["settings"])
    raise ValueError(f"unknown job kind {kind!r}")


# ---------------------------------------------------------------------------- files
def write(path, kind, tensors, header, fingerprint=None):
    """Atomically write `tensors` (as fp32 for float tensors) with a header that names `kind`."""
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "kind": kind, "fingerprint": fingerprint or "", "header": json.dumps(header, sort_keys=True)}
    save_safetensors_atomic(tensors, path, meta)


def read(path, kind, fingerprint=None):
    """(tensors, header) of a file of `kind`; a missing, truncated or foreign file, another kind or
    another model's file is a one-line error."""
    if not os.path.isfile(path):
        raise WanInputError(f"{path} not found: it is written by an earlier stage or run ({KIND_NAMES[kind]})")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise WanInputError(f"{path} is truncated or not a safetensors file ({exc.__class__.__name__})") from None
    if meta.get("format") != FORMAT:
        raise WanInputError(f"{path} is not a job file of this toolkit (format {meta.get('format')!r})")
    if meta.get("kind") != kind:
        found = KIND_NAMES.get(meta.get("kind"), repr(meta.get("kind")))
        raise WanInputError(f"{path} holds {found}, but this step needs {KIND_NAMES[kind]}")
    if fingerprint is not None and meta.get("fingerprint") not in ("", fingerprint):
        raise WanInputError(f"{path} was made with another model (fingerprint {meta.get('fingerprint')}, this "
                            f"checkpoint is {fingerprint})")
    try:
        return tensors, json.loads(meta["header"])
    except (KeyError, json.JSONDecodeError):
        raise WanInputError(f"{path} has a damaged header") from None


def save(path, kind, value, fingerprint=None):
    tensors, header = to_tensors(kind, value)
    write(path, kind, tensors, header, fingerprint)


def load(path, kind, fingerprint=None, patch_size=(1, 2, 2)):
    tensors, header = read(path, kind, fingerprint)
    try:
        check_header(kind, header)
        return from_tensors(kind, tensors, header, patch_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise WanInputError(f"{path}: a damaged {kind} file ({exc.__class__.__name__}: {exc})") from None


# The types of a job file's header values: wrong ones mean a damaged file, refused on load.
_JOB_TYPES = {"condition": str, "seq_len": int, "start": int, "record": dict, "sampling": dict, "inversion": dict,
              "shift": (int, float), "exact_timesteps": bool}
_HEADER_TYPES = {"inversion": {"sigma": (int, float), "source": dict, "settings": dict},
                 "edit": {"inversion": dict, "generation": dict, "source": dict}}


def check_header(kind, header):
    """TypeError / ValueError naming the first header value of the wrong type."""
    if not isinstance(header, dict):
        raise TypeError(f"the header is a {type(header).__name__}, not a mapping")
    if kind == "generation":
        _check_types(header, _JOB_TYPES, "")
    elif kind == "edit":
        _check_types(header, _HEADER_TYPES["edit"], "")
        _check_types(header["inversion"], _JOB_TYPES, "inversion.")
        _check_types(header["generation"], _JOB_TYPES, "generation.")
    elif kind == "inversion":
        _check_types(header, _HEADER_TYPES["inversion"], "")


def _check_types(values, types, prefix):
    for name, kind in types.items():
        if name in values and (not isinstance(values[name], kind) or isinstance(values[name], bool) and kind is int):
            raise TypeError(f"{prefix}{name} is {values[name]!r}")
    for name in ("seq_len", "start"):
        if name in values and values[name] < 0:
            raise ValueError(f"{prefix}{name} is {values[name]}")
