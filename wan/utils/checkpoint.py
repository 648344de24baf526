"""Reading checkpoint files strictly: exact key sets, exact shapes, any float dtype.

Every way a checkpoint file can be bad (missing, truncated, not a state dict, a pickle that
would run code, a config.json with wrong types, an index that lists no shards) is a one-line
`CheckpointError` naming the file and what was expected. `.pth` files are read with
`torch.load(weights_only=True)` only: a pickle that needs code to be unpickled is refused.
"""
import hashlib
import json
import os
import pickle

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from .fileio import save_safetensors_atomic, write_json_atomic

_MAX_LISTED = 8


def require_file(path, what):
    """Fail with a message naming `what` and `path` when the file is missing."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    return path


def checkpoint_fingerprint(ckpt_dir, name=""):
    """A cheap identity of a checkpoint folder (and of `name`, e.g. the task's config): its
    config.json files and the sizes of its weight files. Enough to refuse a stage file made with
    another model, without reading any weights."""
    digest = hashlib.sha256(name.encode())
    for root, _, files in sorted(os.walk(ckpt_dir)):
        for file_name in sorted(files):
            path = os.path.join(root, file_name)
            relative = os.path.relpath(path, ckpt_dir)
            if file_name == "config.json":
                with open(path, "rb") as f:
                    digest.update(relative.encode() + f.read())
            elif file_name.endswith((".safetensors", ".pth")):
                digest.update(f"{relative}:{os.path.getsize(path)}".encode())
    return digest.hexdigest()[:16]


def _first_sentence(exc):
    """The first sentence of an exception's message, on one line (torch's run on for paragraphs)."""
    text = " ".join(str(exc).split())
    return text.split(". ")[0].rstrip(".")[:200] or exc.__class__.__name__


def load_pth(path, what="checkpoint"):
    """torch.load with weights_only=True (memory-mapped when the file is a zip archive); a state
    dict is expected."""
    require_file(path, what)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # a legacy (pre-zip) torch.save file cannot be memory-mapped; weights_only still applies
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{what} {path} was refused: unpickling it needs code that is not a tensor or a "
                              "plain container (only weights are loaded: torch.load weights_only)") from None
    except Exception as exc:  # truncated, not a torch file
        raise CheckpointError(f"{what} {path} could not be read (truncated or not a torch checkpoint): "
                              f"{exc.__class__.__name__}: {_first_sentence(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} does not hold a state dict (got {type(state).__name__})")
    return state


def read_json(path, what):
    """The JSON object in `path`; a missing, unreadable or non-object file is a CheckpointError."""
    require_file(path, what)
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what} {path} could not be read: {_first_sentence(exc)}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    return value


def check_config(config, fields, source):
    """Check the entries of a model's config.json that are present: `fields` maps a name to str,
    int (a whole number > 0) or float (a number > 0). Returns {name: value} of those present."""
    values = {}
    for name, kind in fields.items():
        if name not in config:
            continue
        value = config[name]
        if kind is str:
            good = isinstance(value, str)
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            good = number and value > 0 and (kind is float or float(value).is_integer())
            value = kind(value) if good else value
        if not good:
            expected = {str: "text", int: "a whole number > 0", float: "a number > 0"}[kind]
            raise CheckpointError(f"{source}: {name} must be {expected}, got {config[name]!r}")
        values[name] = value
    return values


def load_safetensors_dir(folder, prefix="diffusion_pytorch_model", what="model weights"):
    """Load `<prefix>.safetensors` or the shards listed by `<prefix>.safetensors.index.json`."""
    single = os.path.join(folder, f"{prefix}.safetensors")
    index = os.path.join(folder, f"{prefix}.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        weight_map = read_json(index, f"{what} index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{what}: index {index} must map tensor names to shard files (weight_map)")
        files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
        if not files:
            raise CheckpointError(f"{what}: index {index} lists no shards")
    else:
        raise CheckpointError(f"{what} not found: expected {single} or {index}")
    state = {}
    for path in files:
        require_file(path, f"{what} shard")
        try:
            state.update(load_file(path))
        except Exception as exc:
            raise CheckpointError(f"{what} {path} could not be read (truncated or not safetensors): "
                                  f"{_first_sentence(exc)}") from None
    return state


def _listing(keys):
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def check_state_dict(expected, state, source):
    """Compare a state dict against `expected` (name -> shape). Raise one CheckpointError naming
    every missing, unexpected and mis-shaped key; non-float tensors are refused too."""
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    misshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in expected.keys() & state.keys()
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_listing(misshaped)}")
    if problems:
        raise CheckpointError(f"{source} does not match the expected layout; " + "; ".join(problems))
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source} has non-float tensors: {_listing(not_float)}")


def load_into(module, state, source, dtype=None):
    """Strictly check `state` against `module`'s own state dict and copy it in (cast to the
    module's dtype, or `dtype` if given). Works for modules built on the meta device."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_state_dict(expected, state, source)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    else:
        own = module.state_dict()
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module


def save_sharded_safetensors(state, folder, prefix, max_shard_bytes):
    """Write `<prefix>.safetensors`, or shards plus `<prefix>.safetensors.index.json` when the
    tensors exceed `max_shard_bytes`; each file is written under a temp name, then renamed."""
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor.detach().contiguous().cpu()
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        names = [f"{prefix}.safetensors"]
    else:
        names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_safetensors_atomic(shard, os.path.join(folder, name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        write_json_atomic(os.path.join(folder, f"{prefix}.safetensors.index.json"), index)
