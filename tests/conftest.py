import os

# Tests must never reach a model hub; fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# Tiny models run faster and steadier on one thread (DEPS.md, P10).
torch.set_num_threads(1)

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(task) -> path of a tiny official-layout checkpoint, built once per session."""
    from wan.tools.make_tiny_checkpoint import make_tiny_checkpoint

    built = {}

    def get(task):
        if task not in built:
            built[task] = make_tiny_checkpoint(task, str(tmp_path_factory.mktemp(task)))
        return built[task]

    return get


def run_script(*args, timeout=300):
    """Run a repo script in a fresh interpreter, as a user would; returns CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
