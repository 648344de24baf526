"""What every training stage shares: the run folder, resume state, the time budget and schedules.

A run folder holds
    checkpoint/   the official TI2V-5B layout (what ships; see export.py)
    resume/       state.json (step counts, seeds, spec version) and fp32 weight shards
Shards stay under 16 MiB each so that a device call can bring them back; no optimiser state is
kept: a resumed stage starts a fresh AdamW with a short warm-up.
"""
import contextlib
import glob
import io
import json
import logging
import math
import os
import shutil
import time

import numpy as np
import torch

from ...configs import WAN_CONFIGS
from ...errors import WanInputError
from ...utils.checkpoint import load_pth, load_safetensors_dir, save_sharded_safetensors
from ...utils.fileio import atomic_path, write_json_atomic
from ..world import SPEC_VERSION

log = logging.getLogger("wan.toyworld.train")

CHECKPOINT_DIR = "checkpoint"
RESUME_DIR = "resume"
STATE_FILE = "state.json"
PROVENANCE_FILE = "provenance.json"
MODEL_CARD_FILE = "README.md"
SHARD_BYTES = 15 * 2 ** 20  # a device call brings back files of at most 16 MiB
VAE_FILE = WAN_CONFIGS["ti2v-5B"].vae_checkpoint  # Wan2.2_VAE.pth
DIT_WEIGHTS = "diffusion_pytorch_model"  # .safetensors, next to config.json
VAE_SHARDS = "vae_fp32"
DIT_SHARDS = "dit_fp32"


# ---------------------------------------------------------------------------- run folders
def new_state(seed):
    """The resume state of a run that starts from nothing."""
    return {"spec_version": SPEC_VERSION, "seed": seed, "vae": {}, "dit": {}}


class RunFolder:
    """Paths inside a run folder (see the module docstring)."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.checkpoint = os.path.join(self.root, CHECKPOINT_DIR)
        self.resume = os.path.join(self.root, RESUME_DIR)

    def write_state(self, state):
        write_json_atomic(os.path.join(self.resume, STATE_FILE), state)

    def save_weights(self, state_dict, prefix):
        """fp32 master weights as safetensors shards under SHARD_BYTES (old shards removed first)."""
        for old in glob.glob(os.path.join(self.resume, f"{prefix}*.safetensors*")):
            os.remove(old)
        os.makedirs(self.resume, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in state_dict.items()}
        save_sharded_safetensors(tensors, self.resume, prefix, SHARD_BYTES)


class ResumeSource:
    """A folder a stage can continue from: a run folder (resume/state.json) or an exported
    checkpoint folder (provenance.json next to the official files). Weights come from the fp32
    shards when the run folder has them, else from the checkpoint's bf16 files."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        run = RunFolder(path)
        if os.path.isfile(os.path.join(run.resume, STATE_FILE)):
            self.checkpoint, self.resume = run.checkpoint, run.resume
            self.state = _read_json(os.path.join(run.resume, STATE_FILE))
        elif os.path.isfile(os.path.join(self.path, PROVENANCE_FILE)):
            self.checkpoint, self.resume = self.path, None
            self.state = _read_json(os.path.join(self.path, PROVENANCE_FILE)).get("training")
        else:
            raise WanInputError(f"resume folder {path} holds neither {RESUME_DIR}/{STATE_FILE} (a training run) "
                                f"nor {PROVENANCE_FILE} (an exported checkpoint)")
        version = (self.state or {}).get("spec_version")
        if version != SPEC_VERSION:
            raise WanInputError(f"resume folder {path} was trained on toy world {version!r}; this trainer renders "
                                f"{SPEC_VERSION!r}, so it cannot continue that run")

    def shards(self, prefix):
        """fp32 weights saved under `prefix`, or None when this source has none."""
        if self.resume is None or not glob.glob(os.path.join(self.resume, f"{prefix}*.safetensors")):
            return None
        return load_safetensors_dir(self.resume, prefix, what=f"{prefix} resume weights")

    def vae_weights(self):
        """fp32 VAE weights: the run's fp32 shards, else the checkpoint's bf16 file; None when
        this source has no VAE yet (a run of the text stage only)."""
        shards = self.shards(VAE_SHARDS)
        if shards is not None:
            return shards
        path = os.path.join(self.checkpoint, VAE_FILE)
        if not os.path.isfile(path):
            return None
        state = load_pth(path, "VAE checkpoint")
        return {k: v.float() for k, v in state.items()}

    def dit_weights(self):
        """(raw, ema) fp32 DiT weights, or None when this source has no DiT yet. An exported
        checkpoint ships only the EMA, which then serves as both."""
        if not os.path.isfile(os.path.join(self.checkpoint, f"{DIT_WEIGHTS}.safetensors")):
            return None
        ema = {k: v.float() for k, v in load_safetensors_dir(self.checkpoint, DIT_WEIGHTS, "DiT weights").items()}
        raw = self.shards(DIT_SHARDS)
        return (ema if raw is None else raw), ema

    def dit_config(self):
        return _read_json(os.path.join(self.checkpoint, "config.json"))

    def copy_checkpoint_into(self, run):
        """Copy the checkpoint files (text encoder, VAE, DiT) into `run`, unless it is this folder.
        The model card and provenance are rewritten by the export, so they are left behind."""
        if os.path.realpath(self.checkpoint) == os.path.realpath(run.checkpoint):
            return
        for folder, _, files in os.walk(self.checkpoint):
            for name in files:
                if folder == self.checkpoint and name in (PROVENANCE_FILE, MODEL_CARD_FILE):
                    continue
                source = os.path.join(folder, name)
                target = os.path.join(run.checkpoint, os.path.relpath(source, self.checkpoint))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(source, target)


def save_pth(state_dict, path):
    """torch.save a state dict atomically with the same bytes for the same tensors. Saved through
    a buffer: torch.save names the archive inside the file after the path it writes to, and the
    atomic writer's temporary names are random."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise WanInputError(f"{path} could not be read as JSON: {exc}") from None


# ---------------------------------------------------------------------------- time
class Budget:
    """The wall-clock budget of one process. Every stage ends its training loop `reserve_s`
    before the end, so that evaluation and export still fit."""

    def __init__(self, total_s, start=None):
        self.total_s = total_s
        self.start = time.monotonic() if start is None else start

    def elapsed(self):
        return time.monotonic() - self.start

    def window(self, reserve_s, max_steps=None):
        """A TrainingWindow from now until `reserve_s` before the end of the budget."""
        return TrainingWindow(self.start + self.total_s - reserve_s, max_steps)


class TrainingWindow:
    """Progress in [0, 1] of a training loop: elapsed time over the window's length, or, with
    `max_steps` (tests, fixed-length runs), steps done over max_steps, so that the schedules are
    the same bits run after run. The loop stops at whichever end comes first."""

    def __init__(self, end, max_steps=None):
        self.begin, self.end, self.max_steps = time.monotonic(), end, max_steps

    def progress(self, step):
        if self.max_steps:
            return min(1.0, step / self.max_steps)
        return min(1.0, (time.monotonic() - self.begin) / max(self.end - self.begin, 1e-9))

    def done(self, step):
        return (bool(self.max_steps) and step >= self.max_steps) or time.monotonic() >= self.end

    def seconds(self):
        return time.monotonic() - self.begin


def learning_rate(step, progress, peak, final, warmup_steps):
    """Linear warm-up over the first `warmup_steps` steps, times a cosine from `peak` down to
    `final` over the training window's progress."""
    cosine = final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return cosine * min(1.0, (step + 1) / warmup_steps) if warmup_steps else cosine


def make_optimizer(groups, lr):
    """AdamW, betas (0.9, 0.99). The multi-tensor (foreach) form, not the fused kernel: that one
    needs every gradient laid out exactly like its parameter, which channels-last convolution
    weights (and their 1x1x1 kernels) do not promise."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), foreach=True)


# ---------------------------------------------------------------------------- devices
def autocast(device):
    """bf16 autocast on CUDA (fp32 master weights stay fp32); nothing on the CPU, where tests
    run in fp32."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WanInputError(f"device {name} was asked for, but CUDA is not available here")
    return device


class ProgressLog:
    """One log line every `every_s` seconds: step, mean loss since the last line, lr, elapsed.
    Losses stay on the device between lines, so logging costs one sync per line, not per step."""

    def __init__(self, name, every_s=15.0):
        self.name, self.every_s = name, every_s
        self.last = time.monotonic()
        self.total, self.count, self.last_step = None, 0, 0
        self.history = []  # (step, seconds, mean loss) per line, for the end-of-stage summary

    def add(self, loss):
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def maybe_print(self, step, lr, window, force=False, **extra):
        now = time.monotonic()
        if self.count == 0 or (not force and now - self.last < self.every_s):
            return
        mean = float(self.total) / self.count
        rate = (step - self.last_step) / max(now - self.last, 1e-9)
        details = "".join(f" {k} {v}" for k, v in extra.items())
        log.info("%s step %d loss %.5f lr %.2e %.1f steps/s elapsed %.0fs%s", self.name, step, mean, lr, rate,
                 window.seconds(), details)
        self.history.append((step, round(window.seconds(), 1), round(mean, 5)))
        self.total, self.count, self.last, self.last_step = None, 0, now, step


def summarize_curve(history, points=8):
    """A few (step, loss) points of a loss curve, evenly spread, for the stage summary."""
    if len(history) <= points:
        return history
    picks = [round(i * (len(history) - 1) / (points - 1)) for i in range(points)]
    return [history[i] for i in picks]


def stage_rng(seed, stream, call):
    """A numpy Generator for one named data stream of one device call: resumed calls draw new
    scenes, and held-out streams never overlap training ones."""
    key = [seed, call] + [ord(c) for c in stream]
    return np.random.default_rng(np.random.SeedSequence(key))
