import os

# Tests must never reach a model hub; fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# Tiny models run faster and steadier on one thread (2 cores shared by 2 test workers).
torch.set_num_threads(1)

import contextlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


def built_once(tmp_path_factory, make):
    """get(name) -> make(name, fresh folder), called once per name for the session."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = make(name, str(tmp_path_factory.mktemp(name)))
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(task) -> path of a tiny official-layout checkpoint, built once per session."""
    from wan.tools.make_tiny_checkpoint import make_tiny_checkpoint

    return built_once(tmp_path_factory, make_tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """tiny_vlm(arch) -> folder of a tiny captioner ("internvl", "qwen2_5_vl", ...), built once.
    Seed 1: the tiny random InternVL's greedy caption is not empty."""
    from wan.tools.tiny_vlm import write_tiny_vlm

    return built_once(tmp_path_factory, lambda arch, folder: write_tiny_vlm(arch, folder, seed=1))


def run_script(*args, timeout=300, env=None):
    """Run a repo script in a fresh interpreter, as a user would (`env`: extra variables); returns
    CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def no_host_sync():
    """Inside, any operation that makes the CPU wait for the GPU raises (CUDA only)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
