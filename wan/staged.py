"""Staged runs: encode / denoise / decode as separate steps that exchange safetensors files.

    encode   text encoder + VAE encoder -> DIR/encoded.safetensors (text embeddings, condition
             latents, initial noise, and a JSON header with every setting later stages need)
    denoise  DiT only -> DIR/latent.safetensors; with save_every=K it also keeps
             DIR/denoise_checkpoint.safetensors (latent + solver state) and resumes from it
    decode   VAE decoder only -> the mp4

Settings travel in the files: a later stage refuses a file made by another model, and a flag that
contradicts the file is an error naming both values. Latents are stored in fp32.
"""
import hashlib
import json
import logging
import os

from safetensors import safe_open
from safetensors.torch import save_file

from . import flow
from .base import Job
from .errors import WanInputError
from .utils.fileio import atomic_path

log = logging.getLogger(__name__)

FORMAT = "wan-stage/1"
ENCODED = "encoded.safetensors"
LATENT = "latent.safetensors"
CHECKPOINT = "denoise_checkpoint.safetensors"
# The networks each stage loads (the `load` argument of the tasks); "all" runs the three in one process.
STAGE_MODELS = {"all": ("t5", "vae", "dit"), "encode": ("t5", "vae"), "denoise": ("dit",), "decode": ("vae",)}


class StopRequested(Exception):
    """Raised inside the denoise loop when a run was asked to stop after a number of steps."""


# ---------------------------------------------------------------------------- files
def checkpoint_fingerprint(ckpt_dir, config):
    """A cheap identity of a checkpoint: the DiT config files and the sizes of every weight file.
    Enough to refuse a stage file made with another model, without reading any weights."""
    digest = hashlib.sha256(config.__name__.encode())
    for root, _, files in sorted(os.walk(ckpt_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, ckpt_dir)
            if name == "config.json":
                with open(path, "rb") as f:
                    digest.update(relative.encode() + f.read())
            elif name.endswith((".safetensors", ".pth")):
                digest.update(f"{relative}:{os.path.getsize(path)}".encode())
    return digest.hexdigest()[:16]


def write_stage_file(path, tensors, header):
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "header": json.dumps(header)})


def read_stage_file(path, what):
    if not os.path.isfile(path):
        raise WanInputError(f"{what} not found: {path} (run the earlier stage first)")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise WanInputError(f"{what} {path} is truncated or not a safetensors file "
                            f"({exc.__class__.__name__})") from None
    if metadata.get("format") != FORMAT:
        raise WanInputError(f"{what} {path} is not a stage file of this toolkit")
    return tensors, json.loads(metadata["header"])


def check_model(header, fingerprint, path):
    if fingerprint is not None and header["fingerprint"] != fingerprint:
        raise WanInputError(f"{path} was made with another model (fingerprint {header['fingerprint']}, "
                            f"this checkpoint is {fingerprint})")


def check_requested(settings, requested, path):
    """Flags given on a later stage must agree with the settings recorded at encode time."""
    for key, value in requested.items():
        if value is None:
            continue
        recorded = settings.get(key)
        if _normalise(value) != _normalise(recorded):
            raise WanInputError(f"--{key} {value} disagrees with {path}, which was encoded with {key}={recorded}")


def _normalise(value):
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def save_job(job, path, fingerprint):
    tensors = {"noise": job.noise, "context": job.context[0], "context_null": job.context_null[0]}
    if job.y is not None:
        tensors["y"] = job.y
    if job.first_frame is not None:
        tensors["first_frame"] = job.first_frame
    header = {"settings": job.settings, "fingerprint": fingerprint, "latent_dtype": "float32"}
    write_stage_file(path, tensors, header)


def load_job(path, fingerprint=None, device="cpu"):
    tensors, header = read_stage_file(path, "encoded stage file")
    check_model(header, fingerprint, path)
    on = {k: v.to(device) for k, v in tensors.items()}
    return Job(noise=on["noise"], context=[on["context"]], context_null=[on["context_null"]],
               settings=header["settings"], y=on.get("y"), first_frame=on.get("first_frame"))


def save_latent(latent, settings, fingerprint, path):
    write_stage_file(path, {"latent": latent},
                     {"settings": settings, "fingerprint": fingerprint, "latent_dtype": "float32"})


def load_latent(path, fingerprint=None):
    tensors, header = read_stage_file(path, "latent stage file")
    check_model(header, fingerprint, path)
    return tensors["latent"], header["settings"]


# ---------------------------------------------------------------------------- denoising with checkpoints
def denoise(task, job, stage_dir, fingerprint, save_every=0, stop_after=None, offload_model=True):
    """Denoise `job` with `task`'s DiT, resuming from DIR/denoise_checkpoint.safetensors when present.

    save_every: write a resumable checkpoint every K steps (0: never). stop_after: stop (resumably)
    after that many steps of this run; returns None then, else the final latent."""
    s = job.settings
    schedule = flow.make_schedule(s["sample_solver"], s["sampling_steps"], s["shift"], task.num_train_timesteps)
    checkpoint = os.path.join(stage_dir, CHECKPOINT)
    start, latent = 0, None
    if os.path.exists(checkpoint):
        tensors, header = read_stage_file(checkpoint, "denoise checkpoint")
        check_model(header, fingerprint, checkpoint)
        if header["settings"] != json.loads(json.dumps(s)):  # compare as stored: tuples become lists
            raise WanInputError(f"{checkpoint} belongs to another encoded job; delete it to start over")
        tensors = {k: v.to(job.noise.device) for k, v in tensors.items()}
        latent = tensors.pop("latent")
        schedule.scheduler.load_solver_state(tensors, header["solver"])
        start = header["solver"]["step_index"]
        log.info("resuming at step %d of %d from %s", start, len(schedule), checkpoint)
    steps_this_run = 0

    def after_step(i, x):
        nonlocal steps_this_run
        steps_this_run += 1
        done = i + 1
        stopping = stop_after is not None and steps_this_run >= stop_after and done < len(schedule)
        if done < len(schedule) and ((save_every and done % save_every == 0) or stopping):
            solver_tensors, solver_values = schedule.scheduler.solver_state()
            write_stage_file(checkpoint, {"latent": x, **solver_tensors},
                             {"settings": s, "fingerprint": fingerprint, "solver": solver_values})
        if stopping:
            raise StopRequested(done)

    try:
        result = task.denoise(job, offload_model, callback=after_step, schedule=schedule, start=start,
                              latent=latent)
    except StopRequested as stop:
        log.info("stopped after step %d; run the denoise stage again to resume", stop.args[0])
        return None
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    return result
