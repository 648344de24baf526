"""Readers: one checkpoint part (see sources.Part) -> a state dict under the official key names,
plus what the tensors say about the network.

    state, config = read_dit(part)    # config: WanModel arguments + variant facts
    state, config = read_vae(part)    # config: version "2.1"/"2.2", widths, latent mean/std
    state, dims = read_t5(part)       # dims: umt5 sizes (wan.modules.t5.umt5_config arguments)

Quantised tensors (GGUF blocks, fp8 with scales) stay quantised in the DiT state (QuantizedWeight
values; build.build_dit turns them into layers that dequantise per forward) and are dequantised one
tensor at a time, straight into the requested dtype, for the VAE and the text encoder.
"""
import inspect
import logging
import math
import re

import torch

from ..errors import CheckpointError
from ..modules import vae2_1, vae2_2
from ..modules.convert import diffusers_to_official_keys
from ..modules.model import WanModel
from ..modules.t5 import infer_t5_dims, official_t5_shapes
from ..utils.checkpoint import check_state_dict
from .diffusers import diffusers_vae_to_official, hf_t5_to_official, official_vae_network
from .files import read_tensors
from .gguf import t5_gguf_to_hf_name
from .quantized import QuantizedWeight
from .single_file import component_subset, describe_storage, resolve_fp8

log = logging.getLogger(__name__)

HEAD_DIM = 128  # every released Wan DiT; the head count is not visible in the weights
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# WanModel arguments that config.json files carry and the weights cannot show (besides the head count)
_FROM_CONFIG = ("eps", "text_len")
T5_SPIECE_KEY = "spiece_model"  # ComfyUI text-encoder files carry the tokenizer as a uint8 tensor


def _source(part):
    return getattr(part, "path", str(part))


def _read(part, component):
    """The part's tensors with the component's prefix removed, and the file metadata."""
    source = _source(part)
    tensors, metadata = read_tensors(source, what=f"{component} weights")
    tensors, _ = component_subset(tensors, component, source)
    return tensors, metadata, source


def dequantized(state, dtype):
    """Every QuantizedWeight of `state` as a float tensor in `dtype`, one tensor at a time."""
    return {k: v.dequantize(dtype) if isinstance(v, QuantizedWeight) else v for k, v in state.items()}


def _shape_stand_ins(state):
    """Meta tensors with each entry's logical shape: check_state_dict for quantised values too."""
    return {k: torch.empty(v.shape, device="meta") for k, v in state.items()}


# ------------------------------------------------------------------------------------------- DiT
def read_dit(part):
    """(state, config) of a DiT part. `config` holds the WanModel arguments read from the tensor
    shapes (config.json only for what shapes cannot show: head count, eps, text_len) and facts:
    `variant`, `image_branch` (None, "clip" or "clip+pos"), `role`, `storage`, `source`."""
    tensors, metadata, source = _read(part, "dit")
    state = resolve_fp8(tensors, metadata, source)
    if "scale_shift_table" in state and "head.modulation" not in state:
        state = diffusers_to_official_keys(state)
    config = dit_config(state, getattr(part, "config", None) or {}, source)
    config["role"] = getattr(part, "role", None)
    config["variant"] = dit_variant(config)
    config["storage"] = describe_storage(state)
    config["source"] = source
    check_state_dict(expected_dit_shapes(config), _shape_stand_ins(state), source)
    log.info("DiT %s: %s, %d layers, dim %d, %s weights", source, config["variant"], config["num_layers"],
             config["dim"], config["storage"])
    return state, config


def dit_config(state, file_config, source):
    """WanModel arguments from the shapes of an official-key DiT state dict."""
    needed = ("patch_embedding.weight", "head.head.weight", "head.modulation", "text_embedding.0.weight",
              "time_embedding.0.weight", "blocks.0.ffn.0.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{source} is not a Wan DiT; missing keys: {', '.join(missing)}")
    patch = tuple(state["patch_embedding.weight"].shape[2:])
    dim = state["head.modulation"].shape[-1]
    in_dim = state["patch_embedding.weight"].shape[1]
    out_dim = state["head.head.weight"].shape[0] // math.prod(patch)
    image_branch = None
    if "img_emb.proj.0.weight" in state:
        image_branch = "clip+pos" if "img_emb.emb_pos" in state else "clip"
    model_type = {48: "ti2v", 36: "i2v", 16: "t2v"}.get(in_dim)
    if model_type is None:
        raise CheckpointError(f"{source}: a DiT with {in_dim} input channels is not a Wan t2v/i2v/ti2v model")
    if image_branch == "clip+pos":
        model_type = "flf2v"
    config = dict(
        model_type=model_type, patch_size=patch, in_dim=in_dim, out_dim=out_dim, dim=dim,
        ffn_dim=state["blocks.0.ffn.0.weight"].shape[0], freq_dim=state["time_embedding.0.weight"].shape[1],
        text_dim=state["text_embedding.0.weight"].shape[1],
        num_layers=1 + max(int(m.group(1)) for m in map(_BLOCK.match, state) if m),
        qk_norm="blocks.0.self_attn.norm_q.weight" in state, cross_attn_norm="blocks.0.norm3.weight" in state,
        image_branch=image_branch,
    )
    if image_branch:  # Wan2.1 i2v / flf2v: the width of the CLIP image tokens (the branch's first norm)
        config["image_dim"] = state["img_emb.proj.0.weight"].shape[0]
    # official config.json names, then diffusers' for the head count
    heads = file_config.get("num_heads") or file_config.get("num_attention_heads")
    if heads is None:
        if dim % HEAD_DIM:
            raise CheckpointError(f"{source}: dim {dim} is not a multiple of {HEAD_DIM}, so the head count cannot be "
                                  "inferred; load it from a folder with its config.json")
        heads = dim // HEAD_DIM
    config["num_heads"] = heads
    for name in _FROM_CONFIG:
        if name in file_config:
            config[name] = file_config[name]
    return config


def dit_variant(config):
    """A human-readable name of the released model these shapes belong to."""
    dim, in_dim, branch, role = config["dim"], config["in_dim"], config["image_branch"], config.get("role")
    expert = f" {role}-noise expert" if role in ("high", "low") else ""
    if dim == 1536 and in_dim == 16:
        return "Wan2.1 T2V-1.3B"
    if dim == 3072 and in_dim == 48:
        return "Wan2.2 TI2V-5B"
    if dim == 5120:
        if branch == "clip+pos":
            return "Wan2.1 FLF2V-14B"
        if branch == "clip":
            return "Wan2.1 I2V-14B"
        if in_dim == 36:
            return "Wan2.2 I2V-A14B" + (expert or " expert")
        if expert:
            return "Wan2.2 T2V-A14B" + expert
        return "14B T2V (Wan2.1 T2V-14B or a Wan2.2 T2V-A14B expert: the weights cannot tell)"
    return f"custom Wan DiT ({config['model_type']}, dim {dim})"


def wan_model_arguments(config):
    """The WanModel constructor arguments among `config`'s entries."""
    accepted = inspect.signature(WanModel.__init__).parameters
    return {k: v for k, v in config.items() if k in accepted}


def meta_dit(config):
    """WanModel for `config` on the meta device; a one-line error if WanModel cannot build it."""
    try:
        with torch.device("meta"):
            model = WanModel(**wan_model_arguments(config))
    except ValueError as err:
        raise CheckpointError(f"{config.get('source', 'DiT')}: {config.get('variant', 'this DiT')} cannot be built "
                              f"here: {err}") from None
    if config.get("image_branch") and not any(k.startswith("img_emb.") for k in model.state_dict()):
        raise CheckpointError(f"{config.get('source', 'DiT')}: {config.get('variant')} has a CLIP image branch, "
                              "which this WanModel does not build")
    return model


def expected_dit_shapes(config):
    return {k: v.shape for k, v in meta_dit(config).state_dict().items()}


def check_dit_for_task(config, task_config, source=None):
    """One-line error when a DiT does not fit a task (a wan.configs.WAN_CONFIGS entry). A task
    uses the CLIP image branch when its config names a CLIP checkpoint (the Wan2.1 I2V/FLF2V way)."""
    source = source or config.get("source", "DiT")
    problems = []
    if config["model_type"] != task_config["model_type"]:
        problems.append(f"it is a {config['model_type']} model, the task needs {task_config['model_type']}")
    for name in ("in_dim", "out_dim"):
        if name in task_config and config[name] != task_config[name]:
            problems.append(f"{name} is {config[name]}, the task needs {task_config[name]}")
    wants_clip = "clip_checkpoint" in task_config
    if bool(config.get("image_branch")) != wants_clip:
        problems.append("it has a CLIP image branch the task does not use" if not wants_clip
                        else "it lacks the CLIP image branch the task needs")
    if problems:
        raise CheckpointError(f"{source} ({config['variant']}) does not fit {task_config.get('__name__', 'the task')}: "
                              + "; ".join(problems))


# ------------------------------------------------------------------------------------------- VAE
def read_vae(part, dtype=torch.float32):
    """(state, config) of a VAE part in official names; config: version, dim, dec_dim, z_dim, and
    the latent mean/std when the part carries them (diffusers' vae/config.json)."""
    tensors, metadata, source = _read(part, "vae")
    state = dequantized(resolve_fp8(tensors, metadata, source), dtype)
    if "decoder.conv_in.weight" in state:
        state = diffusers_vae_to_official(state, source)
    config = vae_config(state, source)
    config["source"] = source
    part_config = getattr(part, "config", None) or {}
    for ours, theirs in (("mean", "latents_mean"), ("std", "latents_std")):
        if part_config.get(theirs) is not None:
            config[ours] = list(part_config[theirs])
            if len(config[ours]) != config["z_dim"]:
                raise CheckpointError(f"{source}: config {theirs} has {len(config[ours])} values for "
                                      f"{config['z_dim']} latent channels")
    network = official_vae_network(config["version"], config["dim"], config["z_dim"], config["dec_dim"])
    check_state_dict({k: v.shape for k, v in network.state_dict().items()}, state, source)
    log.info("VAE %s: Wan%s VAE, %d latent channels, %s", source, config["version"], config["z_dim"],
             describe_storage(state))
    return state, config


def vae_config(state, source):
    for key in ("encoder.conv1.weight", "decoder.head.2.weight", "conv2.weight"):
        if key not in state:
            raise CheckpointError(f"{source} is not a Wan VAE; missing key {key}")
    wan22 = "decoder.upsamples.0.upsamples.0.residual.2.weight" in state
    module = vae2_2 if wan22 else vae2_1
    return dict(version="2.2" if wan22 else "2.1", dim=state["encoder.conv1.weight"].shape[0],
                dec_dim=state["decoder.head.2.weight"].shape[1] if wan22 else None,
                z_dim=state["conv2.weight"].shape[0], mean=list(module.MEAN), std=list(module.STD))


# ------------------------------------------------------------------------------------------- T5
def read_t5(part, dtype=torch.bfloat16):
    """(state, dims) of a umt5 text-encoder part in official names, from any of the three namings:
    official (.pth, Kijai files), Hugging Face (ComfyUI, diffusers text_encoder/), llama.cpp (GGUF).
    A ComfyUI file's embedded tokenizer (`spiece_model`) is left out; see sources.tokenizer_folder."""
    tensors, metadata, source = _read(part, "t5")
    tensors.pop(T5_SPIECE_KEY, None)
    state = dequantized(resolve_fp8(tensors, metadata, source), dtype)
    if "token_embd.weight" in state:
        state = {t5_gguf_to_hf_name(k): v for k, v in state.items()}
    if "token_embedding.weight" not in state:
        state = hf_t5_to_official(state, source)
    dims = infer_t5_dims(state, source)
    check_state_dict(official_t5_shapes(**dims), state, source)
    log.info("T5 %s: %d layers, dim %d, %s", source, dims["num_layers"], dims["dim"], describe_storage(state))
    return state, dims


# ------------------------------------------------------------------------------------------- CLIP
def read_clip(part):
    """Hook for the Wan2.1 CLIP image encoder: the part's tensors, prefix and quantisation resolved,
    names as stored ("official" open-clip names or "hf" CLIPVision names, in config["naming"]).
    The rename to the encoder's own names belongs to the CLIP encoder module."""
    source = _source(part)
    tensors, metadata = read_tensors(source, what="CLIP weights")
    state = dequantized(resolve_fp8(tensors, metadata, source), torch.float32)
    naming = "official" if any(k.startswith("visual.") for k in state) else "hf"
    return state, {"naming": naming, "source": source}
