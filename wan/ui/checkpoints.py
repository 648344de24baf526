"""Which checkpoint the web UI serves, which tasks it can run, and the UI's defaults for it.

Without a checkpoint folder the UI serves the toy-world model (assets/toyworld-ti2v, a TI2V-5B
layout trained on docs/TOYWORLD.md's procedural world at 256x256) and, while that folder does not
exist, a tiny random-weight TI2V-5B checkpoint built on the spot: every tab then runs the real
pipelines on any machine, in seconds on a CPU, and the page says which of the two it is.
"""
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from ..configs import SUPPORTED_SIZES, WAN_CONFIGS
from ..errors import CheckpointError
from ..settings import EditSettings
from ..tasks import TASKS, defaults

log = logging.getLogger(__name__)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOYWORLD_CHECKPOINT = os.path.join(REPOSITORY, "assets", "toyworld-ti2v")
TINY_TASK = "ti2v-5B"
EDIT_TASK = "ti2v-5B"  # inversion editing runs on TI2V-5B only


@dataclass(frozen=True)
class Checkpoint:
    path: str
    kind: str  # "model", "toyworld" or "tiny" (narrower than the official networks: a test checkpoint)
    tasks: tuple  # the registry's tasks this checkpoint runs, in registry order
    note: str  # what the page says about the model

    @property
    def edits(self):
        return EDIT_TASK in self.tasks

    def profile(self, task):
        """The UI's starting values for `task` on this checkpoint."""
        return profile(self.kind, task)


@dataclass(frozen=True)
class Profile:
    """Starting values of the UI's fields: what the model was trained at, at a speed that suits it."""

    sizes: tuple  # the size choices, "W*H"
    size: str
    frame_num: int
    steps: int
    fps: float
    edit: EditSettings


def profile(kind, task):
    task_defaults = defaults(task)
    if kind == "toyworld":  # docs/TOYWORLD.md: 256x256 clips of 17 frames, nominally 16 fps
        edit = EditSettings(frame_num=17, max_area=256 * 256)
        return Profile(("256*256",), "256*256", 17, task_defaults["sampling"]["steps"], 16.0, edit)
    if kind == "tiny":  # random weights: only the plumbing is on show, so keep it fast
        edit = EditSettings(frame_num=5, max_area=64 * 64,
                            sampling=dict(EditSettings().sampling.to_dict(), steps=4),
                            inversion=dict(EditSettings().inversion.to_dict(), steps=4))
        return Profile(("64*64", "128*128", "128*64", "64*128"), "64*64", 5, 4, 16.0, edit)
    sizes = SUPPORTED_SIZES[task]
    size = task_defaults["size"] if task_defaults["size"] in sizes else sizes[0]
    return Profile(sizes, size, task_defaults["frame_num"], task_defaults["sampling"]["steps"],
                   task_defaults["fps"], EditSettings())


def resolve_checkpoint(ckpt_dir=None, cache_dir=None):
    """The checkpoint to serve: `ckpt_dir`, else the toy-world model, else a tiny random one built
    under `cache_dir` (once; later starts reuse it)."""
    if ckpt_dir:
        if not os.path.isdir(ckpt_dir):
            raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
        tasks = checkpoint_tasks(ckpt_dir)
        kind = "toyworld" if is_toyworld(ckpt_dir) else "tiny" if is_reduced(ckpt_dir, tasks) else "model"
        notes = {"toyworld": TOYWORLD_NOTE, "model": f"Checkpoint: `{os.path.abspath(ckpt_dir)}`.",
                 "tiny": f"Checkpoint: `{os.path.abspath(ckpt_dir)}`, with networks narrower than the official "
                         "ones (a test checkpoint): its videos show the pipelines at work, not a trained model."}
        return Checkpoint(os.path.abspath(ckpt_dir), kind, tasks, notes[kind])
    if os.path.isdir(TOYWORLD_CHECKPOINT):
        return Checkpoint(TOYWORLD_CHECKPOINT, "toyworld", checkpoint_tasks(TOYWORLD_CHECKPOINT), TOYWORLD_NOTE)
    path = build_tiny_checkpoint(os.path.join(cache_dir or tempfile.gettempdir(), f"tiny-{TINY_TASK}"))
    note = (f"No checkpoint was given and the toy-world model ({os.path.relpath(TOYWORLD_CHECKPOINT, REPOSITORY)}) "
            f"is not there yet, so this page serves a **tiny checkpoint with random weights** (`{path}`): its "
            "videos show every pipeline at work, not a trained model. Start the UI with `--ckpt_dir` for a real one.")
    return Checkpoint(path, "tiny", checkpoint_tasks(path), note)


TOYWORLD_NOTE = ("Serving the **toy-world model**: a miniature TI2V-5B trained on a procedural world of flat shapes "
                 "bouncing over a static background (256x256, 17 frames). Prompts follow its caption grammar, "
                 "e.g. *a red circle moving quickly right on a black background.*")


def is_toyworld(folder):
    """A toy-world export: its provenance.json names the toy-world spec version."""
    try:
        with open(os.path.join(folder, "provenance.json")) as f:
            return str(json.load(f).get("spec_version", "")).startswith("toyworld")
    except (OSError, ValueError, AttributeError):
        return False


def build_tiny_checkpoint(path):
    """A tiny random TI2V-5B checkpoint at `path`, written next to it and renamed when complete."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    from ..tools.make_tiny_checkpoint import make_tiny_checkpoint

    log.info("building a tiny random %s checkpoint in %s", TINY_TASK, path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".tiny-partial-", dir=os.path.dirname(path) or ".")
    try:
        make_tiny_checkpoint(TINY_TASK, partial)
        os.replace(partial, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def is_reduced(folder, tasks):
    """The DiT is narrower than the official model of every task it runs (a test checkpoint)."""
    config = WAN_CONFIGS[tasks[0]]
    dit = _dit_config(os.path.join(folder, config.low_noise_checkpoint) if "boundary" in config else folder)
    return dit.get("dim", 0) < min(WAN_CONFIGS[name].dim for name in tasks)


def _dit_config(folder):
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def checkpoint_tasks(folder):
    """The registry's tasks whose networks `folder` holds: the DiT's model_type, the expert folders
    of the two-expert models, and the VAE file decide."""
    found = []
    for name in TASKS:
        config = WAN_CONFIGS[name]
        dit = os.path.join(folder, config.low_noise_checkpoint) if "boundary" in config else folder
        has_vae = os.path.isfile(os.path.join(folder, config.vae_checkpoint))
        if _dit_config(dit).get("model_type") == config.model_type and has_vae:
            found.append(name)
    if not found:
        raise CheckpointError(f"{folder} holds no checkpoint of a known task (expected an official layout: "
                              "config.json and the DiT weights, the VAE file and the T5 files)")
    return tuple(found)
