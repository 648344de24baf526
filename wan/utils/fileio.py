"""Atomic output files: a reader (or a resumed run) never sees a half-written file."""
import contextlib
import json
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

    The temporary name keeps the suffix so that writers which pick a format by extension work.
    Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


def write_yaml_atomic(path, obj):
    import yaml

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False, allow_unicode=True)


def torch_save_atomic(obj, path):
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
