"""Networks from state dicts in memory (the readers' output): the DiT on the meta device filled by
assignment, quantised linear weights swapped in as layers that dequantise per forward; the VAE
wrapper and the T5 encoder through their `from_state_dict` constructors."""
import logging

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..modules.t5 import T5EncoderModel
from ..modules.vae2_1 import Wan2_1_VAE
from ..modules.vae2_2 import Wan2_2_VAE
from ..utils.checkpoint import check_state_dict
from .quantized import QuantizedWeight, swap_in_fp8_matmuls_
from .readers import meta_dit

log = logging.getLogger(__name__)


def build_dit(state, config, dtype=torch.bfloat16, device="cpu", fp8_matmul=False):
    """WanModel from `read_dit`'s (state, config), in eval mode on `device`.

    Float tensors are cast to `dtype` one at a time. A quantised weight of a linear layer stays
    quantised inside a QuantizedLinear (GGUF blocks, fp8 x scale) that dequantises in each forward;
    any other quantised tensor is dequantised once into `dtype`. fp8_matmul: turn fp8-scaled layers
    into wan.modules.fp8.FP8Linear (float8 matmuls on Hopper GPUs; same stored bytes)."""
    source = config.get("source", "DiT state dict")
    model = meta_dit(config)
    plain = dict(state)
    kept_quantised = 0
    for key, value in state.items():
        if not isinstance(value, QuantizedWeight):
            continue
        path, _, leaf = key.rpartition(".")
        module = model.get_submodule(path)
        if leaf == "weight" and isinstance(module, nn.Linear) and len(value.shape) == 2:
            bias = plain.pop(f"{path}.bias", None)
            model.set_submodule(path, value.as_linear(None if bias is None else bias.to(dtype)))
            del plain[key]
            kept_quantised += 1
        else:
            plain[key] = value.dequantize(dtype)
    quantised_paths = {name for name, m in model.named_modules() if hasattr(m, "weight_as")}
    expected = {k: v.shape for k, v in model.state_dict().items() if k.rpartition(".")[0] not in quantised_paths}
    check_state_dict(expected, plain, source)
    model.load_state_dict({k: v.to(dtype) for k, v in plain.items()}, strict=False, assign=True)
    left_on_meta = [k for k, v in model.state_dict().items() if v.is_meta]
    if left_on_meta:
        raise CheckpointError(f"{source}: no weights for {', '.join(left_on_meta[:4])}")
    if fp8_matmul:
        swap_in_fp8_matmuls_(model, out_dtype=dtype if dtype != torch.float32 else torch.bfloat16)
    if kept_quantised:
        log.info("DiT: %d linear layers kept quantised (%s), dequantised per forward", kept_quantised,
                 config.get("storage", "quantised"))
    return model.to(device).eval().requires_grad_(False)


def build_vae(state, config, dtype=torch.float32, device="cpu"):
    """The Wan2_1_VAE / Wan2_2_VAE wrapper from `read_vae`'s (state, config)."""
    wrapper = Wan2_2_VAE if config["version"] == "2.2" else Wan2_1_VAE
    return wrapper.from_state_dict(state, source=config.get("source", "VAE"), dtype=dtype, device=device,
                                   mean=config.get("mean"), std=config.get("std"))


def build_t5(state, tokenizer_path, text_len=512, dtype=torch.bfloat16, device="cpu", shard_fn=None, source="T5"):
    """T5EncoderModel (prompts -> umt5 hidden states) from `read_t5`'s state."""
    return T5EncoderModel.from_state_dict(state, tokenizer_path, text_len=text_len, dtype=dtype, device=device,
                                          shard_fn=shard_fn, source=source)
