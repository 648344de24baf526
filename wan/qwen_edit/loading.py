"""Load a Qwen-Image-Edit-2509 checkpoint folder (diffusers layout) as a QwenImageEditPlusPipeline.

Nothing is downloaded: `model_id` is a local folder, or a repo id already in the Hugging Face
cache. The processor is loaded image-only: the editor never passes videos, and the stock
Qwen2VLProcessor insists on a video processor, which needs torchvision (absent on CPU machines).
"""
import json
import logging
import warnings
from pathlib import Path

import torch
from transformers import Qwen2VLProcessor

from ..errors import WanInputError
from ..settings import SettingsError
from ..utils.hub import local_folder

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler")


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without the video processor slot (identical for image inputs)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def resolve_dtype(name, device):
    """'auto' is bf16 on CUDA and fp32 elsewhere (CPU bf16 is slow)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise SettingsError("dtype", f"must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def resolve_model_dir(model_id):
    """A local folder, or the cached snapshot of a Hub repo id; never a download."""
    path = Path(local_folder(model_id, "model_id"))
    index = path / "model_index.json"
    if not index.is_file():
        raise WanInputError(f"model_id {model_id}: no model_index.json; expected a diffusers "
                            "Qwen-Image-Edit-2509 folder")
    missing = [name for name in COMPONENTS if not (path / name).is_dir()]
    if missing:
        raise WanInputError(f"model_id {model_id}: missing component folder(s) {', '.join(missing)}")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in ("QwenImageEditPlusPipeline", "QwenImageEditPipeline"):
        raise WanInputError(f"model_id {model_id}: a {class_name} checkpoint, expected QwenImageEditPlusPipeline")
    return path


def load_edit_pipeline(model_id, device="cpu", dtype=torch.float32):
    """QwenImageEditPlusPipeline from a local checkpoint, on `device`, networks in `dtype`."""
    from diffusers import QwenImageEditPlusPipeline

    path = resolve_model_dir(model_id)
    logging.info("loading Qwen-Image-Edit components from %s (%s)", path, dtype)
    processor = ImageOnlyQwen2VLProcessor.from_pretrained(path / "processor")
    try:
        with warnings.catch_warnings():
            # newer diffusers renamed torch_dtype to dtype; the older name works on every supported version
            warnings.simplefilter("ignore", FutureWarning)
            pipe = QwenImageEditPlusPipeline.from_pretrained(path, processor=processor, torch_dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise WanInputError(f"model_id {model_id}: cannot load the checkpoint: {' '.join(str(exc).split())[:300]}") \
            from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
