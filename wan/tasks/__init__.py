"""The tasks: one registry from a task name to its configuration, its defaults and the `prepare_*`
function that turns a `Generation` into a `Job` (flux-style: preparing is separate from loading
and from running).

    models = Models.load(task.config, ckpt_dir, LoadOptions(), parts=task.parts("all"))
    job = prepare(models, Generation.from_dict({**defaults("ti2v-5B"), "prompt": "A red fox"}))
    latent = Runner(models).denoise(job)          # wan.runner; Runner.write_video decodes and writes
"""
import json
import os
from dataclasses import dataclass

from ..configs import SUPPORTED_SIZES, WAN_CONFIGS
from ..settings import SettingsError, choice
from ..settings import size as settings_size
from .continuation import prepare_v2v
from .edit import prepare_edit
from .flf2v import prepare_flf2v
from .i2v import prepare_i2v
from .t2v import prepare_t2i, prepare_t2v
from .ti2v import prepare_ti2v

__all__ = ["TASKS", "Task", "defaults", "get_task", "prepare", "prepare_edit"]


@dataclass(frozen=True)
class Task:
    name: str
    prepare: object  # (models, Generation) -> Job
    default_size: str
    inputs: tuple = ()  # Generation fields the task needs ("image"), or may take ("image?")

    @property
    def config(self):
        return WAN_CONFIGS[self.name]

    def parts(self, stage="all"):
        """The networks a stage loads: encode (text encoder, VAE, CLIP, captioner), denoise (DiT),
        decode (VAE)."""
        encode = ("t5", "vae") + (("clip",) if "clip_checkpoint" in self.config else ()) + (
            ("vlm",) if "video" in self.inputs else ())
        return {"all": (*encode, "dit"), "encode": encode, "denoise": ("dit",), "decode": ("vae",)}[stage]


TASKS = {task.name: task for task in (
    Task("t2v-A14B", prepare_t2v, "1280*720"),
    Task("t2v-14B", prepare_t2v, "1280*720"),
    Task("t2v-1.3B", prepare_t2v, "832*480"),
    Task("i2v-A14B", prepare_i2v, "1280*720", ("image",)),
    Task("ti2v-5B", prepare_ti2v, "1280*704", ("image?",)),
    Task("v2v-14B", prepare_v2v, "1280*720", ("video",)),
    Task("v2v-5B", prepare_v2v, "1280*704", ("video",)),
    Task("i2v-14B", prepare_i2v, "1280*720", ("image",)),
    Task("flf2v-14B", prepare_flf2v, "1280*720", ("first_frame", "last_frame")),
    Task("t2i-14B", prepare_t2i, "1280*720"),
)}
INPUTS = ("image", "video", "first_frame", "last_frame")


def get_task(name):
    return TASKS[choice("task", name, tuple(TASKS))]


def defaults(name, size=None):
    """The official per-task defaults as a settings dict (size, frame count, fps, sampling). The shift
    may depend on the size (`size` given: Wan2.1 i2v-14B shifts its 480P sizes less)."""
    task, config = get_task(name), WAN_CONFIGS[name]
    guide = config.sample_guide_scale
    size = size or task.default_size
    key = "*".join(str(v) for v in settings_size("size", size))
    shift = config.get("sample_shift_by_size", {}).get(key, config.sample_shift)
    return {"task": name, "size": task.default_size, "frame_num": config.frame_num, "fps": config.sample_fps,
            "sampling": {"solver": "unipc", "steps": config.sample_steps, "shift": shift,
                         "guide_scale": list(guide) if isinstance(guide, tuple) else guide}}


def check_inputs(generation):
    """Inputs a task needs or cannot use, before any model loads."""
    task = get_task(generation.task)
    for name in INPUTS:
        given = getattr(generation, name)
        if name in task.inputs and not given:
            raise SettingsError(name, f"is required for {task.name}")
        if given and name not in task.inputs and f"{name}?" not in task.inputs:
            note = ": the last frame of the video starts the output" if "video" in task.inputs else ""
            raise SettingsError(name, f"is not used by {task.name}{note}")


def trained_sizes(ckpt_dir):
    """The sizes a checkpoint declares it was trained at (our own exports record them in
    provenance.json, e.g. the toy-world model's 256*256); None for the official checkpoints."""
    path = os.path.join(ckpt_dir or "", "provenance.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("trained_sizes")


def unsupported_size_warning(generation, ckpt_dir=None):
    """A size off the ones the checkpoint was trained at works, at some cost in quality: the warning
    text, or None."""
    text = f"{generation.size[0]}*{generation.size[1]}"
    supported = trained_sizes(ckpt_dir) or SUPPORTED_SIZES[generation.task]
    if text not in supported:
        return f"size {text} is outside the sizes {generation.task} was trained at ({', '.join(supported)})"
    return None


def prepare(models, generation):
    """The job for `generation` on `models` (text encoder and VAE loaded)."""
    return get_task(generation.task).prepare(models, generation)
