"""Typed settings: one vocabulary from the configuration files and the command line to the core.

Every setting is a field of a frozen dataclass, checked once when the object is built: numbers
must be finite and in range, frame counts 4n+1, choices known. A bad value raises
`SettingsError(field, problem)`, whose message names the field ("sampling.shift must be > 0, got
-1"); the command-line layer (wan.cli) maps field names to its flags, so a script's user reads
"--sample_shift must be > 0". Settings nest (`EditSettings.sampling` is a `Sampling`) and convert
to and from plain dicts (`to_dict`, `from_dict`), which is the format of configs/*.yaml and of the
resolved settings written beside every output.
"""
import dataclasses
import math
from dataclasses import dataclass, field

from .errors import WanInputError

SOLVERS = ("unipc", "dpm++", "euler")
INVERSION_SCHEMES = ("euler", "midpoint", "heun", "fixed_point")
ATTENTION_BACKENDS = ("sdpa", "flash", "flash-fp8")
VAE_DTYPES = ("fp32", "bf16")
MAX_SEED = 2 ** 63 - 1


class SettingsError(WanInputError):
    """A setting with a bad value. `field` is its dotted name, `problem` the rest of the sentence."""

    def __init__(self, field_name, problem):
        self.field, self.problem = field_name, problem
        super().__init__(f"{field_name} {problem}")

    def under(self, prefix):
        """The same error for the field seen from an enclosing setting (`sampling` + `shift`)."""
        return SettingsError(f"{prefix}.{self.field}", self.problem)


class SettingsMismatch(SettingsError):
    """A later stage asked for a setting that differs from the one its input file was made with."""

    def __init__(self, field_name, given, recorded, path):
        self.given, self.recorded, self.path = given, recorded, path
        super().__init__(field_name, f"{given} disagrees with {path}, which was made with {recorded}")


def flatten(settings, prefix=""):
    """{"sampling": {"shift": 5}} -> {"sampling.shift": 5}."""
    out = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def check_agrees(recorded, requested, path, ignore=()):
    """Every setting in `requested` (a partial settings dict) must equal the one `recorded` in the
    file at `path`; `ignore` lists dotted names that may differ."""
    recorded = flatten(recorded)
    for name, value in flatten(requested).items():
        if name in ignore or value is None:
            continue
        if _comparable(value) != _comparable(recorded.get(name)):
            raise SettingsMismatch(name, value, recorded.get(name), path)


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# ---------------------------------------------------------------------------- value checks
def number(name, value, low=None, high=None, low_open=False, high_open=False):
    """`value` as a finite float within [low, high] (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(name, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SettingsError(name, f"must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise SettingsError(name, f"must be {_interval(low, high, low_open, high_open)}, got {value:g}")
    return value


def integer(name, value, low=None, high=None):
    """`value` as an int within [low, high] (a float with an integer value is accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise SettingsError(name, f"must be a whole number, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingsError(name, f"must be {_interval(low, high)}, got {value}")
    return value


def choice(name, value, choices, optional=False):
    if value is None and optional:
        return None
    if value not in choices:
        raise SettingsError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def flag(name, value):
    if not isinstance(value, bool):
        raise SettingsError(name, f"must be true or false, got {value!r}")
    return value


def text(name, value, optional=False):
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SettingsError(name, f"must be text, got {value!r}")
    return value


def text_list(name, value):
    """A tuple of strings (a list from YAML, a repeated flag)."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SettingsError(name, f"must be a list of text, got {value!r}")
    return tuple(value)


def frame_count(name, value):
    """Wan's causal VAE folds frames 1.. in groups of four: 4n+1 frames."""
    value = integer(name, value, low=1)
    if value % 4 != 1:
        raise SettingsError(name, f"must be 4n+1 (1, 5, 9, ..., 81, 121), got {value}")
    return value


def size(name, value):
    """(width, height) from 'W*H', 'WxH' or a pair; positive."""
    if isinstance(value, str):
        try:
            value = tuple(int(part) for part in value.lower().replace("x", "*").split("*"))
        except ValueError:
            raise SettingsError(name, f"must look like WIDTH*HEIGHT (e.g. 1280*704), got {value!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SettingsError(name, f"must be WIDTH*HEIGHT, got {value!r}")
    width, height = (integer(name, v, low=1, high=1 << 15) for v in value)
    return width, height


def on_grid(name, width_height, grid, model):
    """Sizes must fall on the DiT's token grid (VAE stride x patch size)."""
    width, height = width_height
    if width % grid or height % grid:
        raise SettingsError(name, f"{width}*{height}: width and height must be positive multiples of {grid} "
                                  f"for {model}")


def guide_scale(name, value):
    """A classifier-free guidance scale, or a (low-noise, high-noise) pair for two experts."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise SettingsError(name, f"must be one number or a pair (low-noise, high-noise), got {value!r}")
        return tuple(number(name, v, low=0, high=100) for v in value)
    return number(name, value, low=0, high=100)


def _interval(low, high, low_open=False, high_open=False):
    """'>= 1', '< 5' or 'in (0, 100]'."""
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


# ---------------------------------------------------------------------------- settings objects
class Settings:
    """Shared plumbing: conversion to / from plain dicts with field-named errors."""

    def to_dict(self):
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Settings) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, data, prefix=""):
        """Build from a (possibly partial) dict; unknown keys and bad values name the dotted field."""
        if not isinstance(data, dict):
            raise SettingsError(prefix or cls.__name__, f"must be a mapping of settings, got {data!r}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else key
            if key not in known:
                raise SettingsError(name, f"is not a setting (known: {', '.join(known)})")
            nested = _nested_class(known[key])
            values[key] = nested.from_dict(value, name) if nested and not isinstance(value, Settings) else value
        try:
            return cls(**values)
        except SettingsError as err:
            raise (err.under(prefix) if prefix else err) from None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _nested_class(f):
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default) if isinstance(default, Settings) else None


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _set(obj, name, value):
    object.__setattr__(obj, name, value)


def _nested(obj, name, cls):
    """Accept a nested setting as an object or a dict (checked, named under `name`)."""
    value = getattr(obj, name)
    if isinstance(value, dict):
        _set(obj, name, cls.from_dict(value, name))
    elif not isinstance(value, cls):
        raise SettingsError(name, f"must be {cls.__name__} settings, got {value!r}")


@dataclass(frozen=True)
class LoadOptions(Settings):
    """How the networks are loaded and placed; none of it changes what a job computes, except the
    inexact speed options fp8, attention='flash-fp8' and step_cache."""

    device: str = None  # None: cuda:0 when available, else the CPU
    # Move each network to the CPU after use (GPU memory); "blocks": the DiT's blocks also wait in pinned
    # host memory and reach the GPU one at a time, just ahead of use (A14B on a 24 GB card).
    offload_model: object = True
    t5_cpu: bool = False
    convert_model_dtype: bool = False  # store the DiT in bf16
    vae_dtype: str = "fp32"
    compile: bool = False
    fp8: bool = False
    attention: str = None  # None: FlashAttention-3 when installed, else SDPA
    step_cache: float = 0.0
    t5_fsdp: bool = False
    dit_fsdp: bool = False
    ulysses_size: int = 1
    cfg_parallel: bool = False
    vlm_path: str = None  # the captioner of the continuation tasks (a transformers VLM folder)
    vlm_device: str = None  # None: the device above
    # Single files that replace or supply a checkpoint's parts (ComfyUI files, GGUF, ...)
    dit: str = None
    dit_high: str = None
    dit_low: str = None
    vae: str = None
    t5: str = None
    clip: str = None
    tokenizer: str = None
    # LoRAs, "FILE" or "FILE:STRENGTH": for every DiT, or for one A14B expert
    lora: tuple = ()
    lora_high: tuple = ()
    lora_low: tuple = ()

    def __post_init__(self):
        for name in ("device", "vlm_path", "vlm_device", "dit", "dit_high", "dit_low", "vae", "t5", "clip",
                     "tokenizer"):
            text(name, getattr(self, name), optional=True)
        for name in ("lora", "lora_high", "lora_low"):
            _set(self, name, text_list(name, getattr(self, name)))
        for name in ("t5_cpu", "convert_model_dtype", "compile", "fp8", "t5_fsdp", "dit_fsdp", "cfg_parallel"):
            flag(name, getattr(self, name))
        if self.offload_model != "blocks":
            flag("offload_model", self.offload_model)
        choice("vae_dtype", self.vae_dtype, VAE_DTYPES)
        choice("attention", self.attention, ATTENTION_BACKENDS, optional=True)
        _set(self, "step_cache", number("step_cache", self.step_cache, low=0, high=10))
        _set(self, "ulysses_size", integer("ulysses_size", self.ulysses_size, low=1, high=1024))
        if self.t5_fsdp and self.t5_cpu:
            raise SettingsError("t5_fsdp", "shards T5 over the GPUs; it cannot be combined with t5_cpu")


@dataclass(frozen=True)
class Sampling(Settings):
    """How generation integrates the flow ODE from noise to data."""

    solver: str = "unipc"
    steps: int = 50
    shift: float = 5.0
    guide_scale: object = 5.0  # a float, or (low-noise, high-noise) for two experts
    # Model timesteps 1000 sigma as floats (the step-distilled LoRAs' recipe) instead of the official
    # truncated integers.
    exact_timesteps: bool = False

    def __post_init__(self):
        choice("solver", self.solver, SOLVERS)
        flag("exact_timesteps", self.exact_timesteps)
        _set(self, "steps", integer("steps", self.steps, low=1, high=1000))
        _set(self, "shift", number("shift", self.shift, low=0, high=100, low_open=True))
        _set(self, "guide_scale", guide_scale("guide_scale", self.guide_scale))


@dataclass(frozen=True)
class InversionSettings(Settings):
    """How an edit integrates the source latent from data up to noise."""

    scheme: str = "euler"
    steps: int = 50
    guide_scale: float = 1.0
    strength: float = 1.0  # the low-noise fraction of the schedule to invert

    def __post_init__(self):
        choice("scheme", self.scheme, INVERSION_SCHEMES)
        _set(self, "steps", integer("steps", self.steps, low=1, high=1000))
        _set(self, "guide_scale", number("guide_scale", self.guide_scale, low=0, high=100))
        _set(self, "strength", number("strength", self.strength, low=0, high=1, low_open=True))

    @property
    def inverted_steps(self):
        """How many of the schedule's final steps are inverted (at least one)."""
        return max(1, round(self.strength * self.steps))


@dataclass(frozen=True)
class Generation(Settings):
    """One video to generate: the task, its inputs and how it is sampled."""

    task: str = "t2v-A14B"
    prompt: str = ""
    n_prompt: str = ""  # empty: the model's default negative prompt
    image: str = None  # the first frame (image tasks), a path
    video: str = None  # the clip to continue (v2v tasks), a path
    first_frame: str = None  # flf2v: the first and the last frame, paths
    last_frame: str = None
    size: object = None  # (width, height); image tasks: its area is the maximum area. None: the task's default
    max_area: int = None  # image tasks: the output's pixel area at most; None: the area of `size`
    frame_num: int = None  # None: the task's default
    seed: int = -1  # < 0: a random seed (the one used is recorded)
    fps: float = None  # of the written video; None: the task's
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self):
        text("task", self.task)
        text("prompt", self.prompt)
        text("n_prompt", self.n_prompt)
        for name in ("image", "video", "first_frame", "last_frame"):
            text(name, getattr(self, name), optional=True)
        if self.size is not None:
            _set(self, "size", size("size", self.size))
        if self.max_area is not None:
            _set(self, "max_area", integer("max_area", self.max_area, low=16 * 16, high=1 << 26))
        if self.frame_num is not None:
            _set(self, "frame_num", frame_count("frame_num", self.frame_num))
        _set(self, "seed", integer("seed", self.seed, low=-1, high=MAX_SEED))
        if self.fps is not None:
            _set(self, "fps", number("fps", self.fps, low=0, high=1000, low_open=True))
        _nested(self, "sampling", Sampling)


@dataclass(frozen=True)
class EditSettings(Settings):
    """What every edit of a run shares: the clip length and area, and both integrations."""

    frame_num: int = 17
    max_area: int = 704 * 1280
    n_prompt: str = ""
    fps: float = None  # of the written video; None: the source's
    sampling: Sampling = field(default_factory=lambda: Sampling(solver="euler", steps=50, shift=5.0,
                                                                guide_scale=5.0))
    inversion: InversionSettings = field(default_factory=InversionSettings)

    def __post_init__(self):
        _set(self, "frame_num", frame_count("frame_num", self.frame_num))
        _set(self, "max_area", integer("max_area", self.max_area, low=16 * 16, high=1 << 26))
        text("n_prompt", self.n_prompt)
        if self.fps is not None:
            _set(self, "fps", number("fps", self.fps, low=0, high=1000, low_open=True))
        _nested(self, "sampling", Sampling)
        _nested(self, "inversion", InversionSettings)
