"""Raw tensors of one checkpoint file or weights folder, whatever the container: safetensors
(with its metadata), a torch `.pth` (weights_only), GGUF, or a folder of (sharded) safetensors."""
import os

from safetensors import safe_open

from ..errors import CheckpointError
from ..utils.checkpoint import load_pth, load_safetensors_dir, require_file
from .gguf import read_gguf

SAFETENSORS_PREFIXES = ("diffusion_pytorch_model", "model")  # diffusers components, transformers models


def container_of(path):
    """'folder', 'safetensors', 'pth' or 'gguf' for a path; a one-line error for anything else."""
    if os.path.isdir(path):
        return "folder"
    require_file(path, "checkpoint file")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".gguf"):
        return "gguf"
    if lower.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return "pth"
    raise CheckpointError(f"{path}: unknown checkpoint file type; expected .safetensors, .gguf or .pth")


def read_safetensors(path):
    """(tensors, metadata) of one safetensors file."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # truncated, not safetensors, unknown dtype
        raise CheckpointError(f"{path} could not be read as safetensors: {exc.__class__.__name__}: {exc}") from None
    return tensors, metadata


def read_tensors(path, what="checkpoint"):
    """(tensors, metadata) of a file or weights folder. GGUF quantised tensors come back as
    GGUFWeight objects; everything else as torch tensors."""
    container = container_of(path)
    if container == "safetensors":
        return read_safetensors(path)
    if container == "gguf":
        return read_gguf(path)
    if container == "pth":
        state = load_pth(path, what)
        if "state_dict" in state and isinstance(state["state_dict"], dict):  # a training checkpoint
            state = state["state_dict"]
        return state, {}
    return read_weights_folder(path, what), {}


def read_weights_folder(folder, what):
    """A diffusers / transformers component folder: `<prefix>.safetensors` or its shards."""
    for prefix in SAFETENSORS_PREFIXES:
        if any(os.path.isfile(os.path.join(folder, f"{prefix}{suffix}"))
               for suffix in (".safetensors", ".safetensors.index.json")):
            return load_safetensors_dir(folder, prefix=prefix, what=what)
    raise CheckpointError(f"{what}: no safetensors weights in {folder} "
                          f"(expected {' or '.join(p + '.safetensors' for p in SAFETENSORS_PREFIXES)} or an index)")
