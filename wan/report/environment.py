"""What a run ran on: interpreter, library versions, code revision, devices."""
import importlib.metadata
import os
import platform
import subprocess

import torch

PACKAGES = ("torch", "transformers", "diffusers", "accelerate", "safetensors", "numpy", "pillow", "av")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def environment_info():
    """Versions and devices as an ordered dict of strings (a package that is not installed shows '-')."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "code revision": _revision()}
    for package in PACKAGES:
        info[package] = _version(package)
    info["CUDA (torch build)"] = torch.version.cuda or "-"
    info["CPU cores"] = str(os.cpu_count())
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            info[f"GPU {index}"] = torch.cuda.get_device_name(index)
    else:
        info["GPU"] = "none"
    return info


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _revision():
    """The git commit of this checkout (+ '-dirty' with local changes), or '-' outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return "-"
        status = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
