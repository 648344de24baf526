import os

# Tests must never reach a model hub; fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# Tiny models run faster and steadier on one thread (DEPS.md, P10).
torch.set_num_threads(1)
