"""Models named by a folder or by a Hugging Face repo id, found in the local cache only: nothing is
ever downloaded."""
import os
import re

from ..errors import CheckpointError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def local_folder(name, what="model"):
    """`name` if it is a folder, else the local-cache snapshot of the repo id `name` ('org/name' or
    'org/name@revision'); a one-line CheckpointError naming `what` otherwise."""
    name = os.fspath(name)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise CheckpointError(f"{what} {name} is a file; expected a folder or a Hugging Face repo id")
    if not REPO_ID.match(name):
        raise CheckpointError(f"{what} {name} is neither a folder nor a Hugging Face repo id (org/name)")
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = name.partition("@")
    try:
        return snapshot_download(repo_id, revision=revision or None, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise CheckpointError(f"{what} {name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                              f"nothing is downloaded ({exc.__class__.__name__})") from None
