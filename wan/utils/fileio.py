"""Atomic output files: a reader (or a resumed run) never sees a half-written file.

`atomic_path(path)` hands out a temporary name beside `path` and renames it onto `path` only when
the writer finished; on an error the temporary is deleted. A process killed mid-write (SIGKILL,
power cut of the job's node) cannot delete it, so temporaries carry a recognizable name holding
the writer's process id,

    .NAME.PID-RANDOM.partial.SUFFIX      e.g. .video_02_seed11.48121-9f3a0c1e.partial.mp4

and the first atomic write of a process into the same folder deletes the ones whose process is
gone. (A process id is only checked on this machine: on a folder shared by several hosts, a
temporary of another host's process is kept while a process with its id runs here.)

A full disk, a read-only folder or one without write permission become a one-line `OutputError`
naming the output, not a traceback from deep inside a writer.
"""
import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from ..errors import WanInputError


class OutputError(WanInputError, OSError):
    """An output cannot be written: a full disk, no permission, a file where a folder should be.
    Both a WanInputError (the scripts print it in one line) and an OSError (what callers of a
    writer expect from a failed write); `errno` is set when one caused it."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.errno = code


TEMPORARY = re.compile(r"^\..*\.(?P<pid>\d+)-[0-9a-f]{8}\.(partial|replaced)(\.[^.]*)?$")
# Errors that mean "this folder cannot take the file", whoever raised them.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}
_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded")
# Writers in C++ report a full disk in their own words (torch.save to a path: "unexpected pos"): a
# RuntimeError while the folder has less than this free is called a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def temporary_name(path, kind="partial"):
    """A fresh temporary name beside `path` that says whose it is (see the module docstring)."""
    path = Path(path)
    stem, suffix = os.path.splitext(path.name)
    return path.with_name(f".{stem}.{os.getpid()}-{secrets.token_hex(4)}.{kind}{suffix}")


def _process_alive(pid):
    if os.name != "posix":  # signal 0 is a probe on POSIX only (on Windows os.kill would end the process)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(folder):
    """Temporaries in `folder` whose writing process no longer runs (left by a killed run)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    stale = []
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        if match and int(match["pid"]) != os.getpid() and not _process_alive(int(match["pid"])):
            stale.append(Path(entry.path))
    return stale


def remove(path):
    """Delete a file or a folder tree; a missing one is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_swept = set()  # folders this process has swept: what a killed run left is there from the start


def sweep_stale_temporaries(folder):
    """Delete the stale temporaries of `folder`, once per process (a folder of thousands of frames
    is not listed again at every frame)."""
    key = os.path.abspath(folder)
    if key not in _swept:
        for path in stale_temporaries(folder):
            remove(path)
        _swept.add(key)


def write_error(path, temp, exc):
    """The one-line OutputError for a write of `path` (through `temp`) that failed with `exc`, or
    None when `exc` is not about the output folder (a bug, or a failure upstream of the writer)."""
    if isinstance(exc, WanInputError):
        return None  # already says what is wrong
    folder, code, text = path.parent, getattr(exc, "errno", None), " ".join(str(exc).split())
    causes = [exc]
    while causes[-1].__cause__ or causes[-1].__context__:  # torch.save's RuntimeError hides the OSError
        causes.append(causes[-1].__cause__ or causes[-1].__context__)
    full = any(getattr(cause, "errno", None) in _FULL for cause in causes) or any(
        words in text for words in _FULL_TEXT)
    if not full and isinstance(exc, RuntimeError) and temp.exists():
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    if full:
        return OutputError(f"cannot write {path}: no space left on the device holding {folder}", errno.ENOSPC)
    filename = getattr(exc, "filename", None)
    if code in _REFUSED and (filename is None or Path(filename).parent == temp.parent):
        return OutputError(f"cannot write {path}: {os.strerror(code)} ({folder})", code)
    return None


def _replace(temp, path):
    """Rename `temp` onto `path`. A folder replaces a folder: the old one is first renamed aside
    (a recognizable temporary, removed here or swept later), since rename cannot overwrite a
    non-empty folder."""
    if temp.is_dir() and path.is_dir():
        old = temporary_name(path, "replaced")
        os.replace(path, old)
        os.replace(temp, path)
        remove(old)
    else:
        os.replace(temp, path)


def make_folder(folder):
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(f"cannot create the folder {folder}: a file is in the way", exc.errno) from None
    except OSError as exc:
        raise OutputError(f"cannot create the folder {folder}: {exc.strerror}", exc.errno) from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block succeeds rename it onto `path`, on an
    error delete it. The temporary keeps the suffix (writers that pick a format by extension work)
    and may be written as a file or created as a folder. Parent folders are created; stale
    temporaries of killed runs in that folder are deleted."""
    path = Path(path)
    folder = path.parent
    make_folder(folder)
    sweep_stale_temporaries(folder)
    temp = temporary_name(path)
    try:
        yield temp
        _replace(temp, path)
    except Exception as exc:
        error = write_error(path, temp, exc)
        if error is None:
            raise
        raise error from None
    finally:
        remove(temp)


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


def write_yaml_atomic(path, obj):
    import yaml

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False, allow_unicode=True)


def save_safetensors_atomic(tensors, path, metadata=None):
    """safetensors.torch.save_file, atomically, with the same bytes for the same tensors and
    metadata: safetensors writes the metadata in its hash map's order, which changes from process
    to process, so the JSON header is rewritten with its keys sorted (same length: only the order
    changes)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "r+b") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            if len(canonical) > size:  # cannot happen for what safetensors writes; keep its order then
                return
            f.seek(8)
            f.write(canonical.ljust(size))  # safetensors pads its header with spaces too


def torch_save_atomic(obj, path):
    """torch.save through a file object: the archive inside is then named "archive", not after the
    (random) temporary name, so the same state gives the same bytes."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
