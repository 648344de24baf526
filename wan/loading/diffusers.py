"""Diffusers names for the VAE (AutoencoderKLWan, Wan2.1 and Wan2.2 layouts) and the text encoder
(transformers' UMT5EncoderModel), to and from the official names. The DiT table lives in
wan.modules.convert.

The VAE renames are a function of the official key; the reverse direction enumerates the official
keys of a network built on the meta device with the widths read off the diffusers file, so a key
that maps nowhere, or two keys that map to one, are caught instead of guessed.
"""
import re

import torch

from ..errors import CheckpointError
from ..modules import vae2_1, vae2_2
from ..modules.t5 import official_to_hf_names

# -------------------------------------------------------------------------------------- VAE
_RESBLOCK_PARTS = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
                   "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_MIDDLE = {"0": "mid_block.resnets.0.", "1": "mid_block.attentions.0.", "2": "mid_block.resnets.1."}
_RES_BLOCKS = 2  # per level in every Wan VAE; the decoder has one more per level


def _resblock(rest):
    """Inside one resblock or resample: resblock parts renamed, resample parts unchanged."""
    for old, new in _RESBLOCK_PARTS.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _is_resample(rest):
    return rest.startswith(("resample.", "time_conv."))


def _coder_part(side, rest, version):
    """`rest` below `encoder.` / `decoder.` -> its diffusers name below the same prefix."""
    for old, new in (("conv1.", "conv_in."), ("head.0.", "norm_out."), ("head.2.", "conv_out.")):
        if rest.startswith(old):
            return new + rest[len(old):]
    match = re.match(r"middle\.(\d)\.(.*)$", rest)
    if match:
        index, inner = match.groups()
        return _MIDDLE[index] + (_resblock(inner) if index != "1" else inner)
    if side == "encoder":
        match = re.match(r"downsamples\.(\d+)\.(.*)$", rest)
        if match and version == "2.1":  # flat list; same indices
            index, inner = match.groups()
            return f"down_blocks.{index}.{_resblock(inner)}"
        match = re.match(r"downsamples\.(\d+)\.downsamples\.(\d+)\.(.*)$", rest)
        if match and version == "2.2":
            level, index, inner = match.groups()
            if _is_resample(inner):
                return f"down_blocks.{level}.downsampler.{inner}"
            return f"down_blocks.{level}.resnets.{index}.{_resblock(inner)}"
    else:
        match = re.match(r"upsamples\.(\d+)\.(.*)$", rest)
        if match and version == "2.1":  # flat list regrouped into levels of resblocks + upsampler
            index, inner = match.groups()
            level, position = divmod(int(index), _RES_BLOCKS + 2)
            if _is_resample(inner):
                return f"up_blocks.{level}.upsamplers.0.{inner}"
            return f"up_blocks.{level}.resnets.{position}.{_resblock(inner)}"
        match = re.match(r"upsamples\.(\d+)\.upsamples\.(\d+)\.(.*)$", rest)
        if match and version == "2.2":
            level, index, inner = match.groups()
            if _is_resample(inner):
                return f"up_blocks.{level}.upsampler.{inner}"
            return f"up_blocks.{level}.resnets.{index}.{_resblock(inner)}"
    return None


def vae_official_to_diffusers_name(key, version):
    """One official VAE key -> its AutoencoderKLWan name (`version` "2.1" or "2.2"), or None."""
    if key.startswith("conv1."):
        return "quant_conv." + key[len("conv1."):]
    if key.startswith("conv2."):
        return "post_quant_conv." + key[len("conv2."):]
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    renamed = _coder_part(side, rest, version)
    return None if renamed is None else f"{side}.{renamed}"


def official_vae_network(version, dim, z_dim, dec_dim=None):
    """The official VAE network of `version` on the meta device (no memory)."""
    with torch.device("meta"):
        if version == "2.1":
            return vae2_1.WanVAE_(dim=dim, z_dim=z_dim)
        return vae2_2.WanVAE_(dim=dim, dec_dim=dec_dim, z_dim=z_dim)


def vae_name_table(version, dim, z_dim, dec_dim=None):
    """official key -> diffusers key for every tensor of that VAE; refuses a table that is not
    one to one (which would mean the rename rules no longer fit the network)."""
    keys = official_vae_network(version, dim, z_dim, dec_dim).state_dict().keys()
    table = {key: vae_official_to_diffusers_name(key, version) for key in keys}
    unmapped = [k for k, v in table.items() if v is None]
    if unmapped or len(set(table.values())) != len(table):
        raise RuntimeError(f"VAE {version} rename table is incomplete or not one to one: {unmapped[:4]}")
    return table


def diffusers_vae_facts(state, source):
    """(version, dim, z_dim, dec_dim) of an AutoencoderKLWan state dict, from its shapes."""
    required = ("encoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source} is not a diffusers Wan VAE; missing keys: {', '.join(missing)}")
    version = "2.2" if any(".upsampler." in k for k in state) else "2.1"
    dim = state["encoder.conv_in.weight"].shape[0]
    z_dim = state["post_quant_conv.weight"].shape[0]
    dec_dim = state["decoder.conv_out.weight"].shape[1] if version == "2.2" else None
    return version, dim, z_dim, dec_dim


def diffusers_vae_to_official(state, source):
    """AutoencoderKLWan state dict -> official VAE keys (2.1 or 2.2, detected from the keys)."""
    table = vae_name_table(*diffusers_vae_facts(state, source))
    official = {diffusers: key for key, diffusers in table.items()}
    unknown = sorted(state.keys() - official.keys())
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys for a diffusers Wan VAE: {', '.join(unknown[:8])}")
    return {official[k]: v for k, v in state.items()}


def official_vae_to_diffusers(state, version):
    dim = state["encoder.conv1.weight"].shape[0]
    z_dim = state["conv2.weight"].shape[0]
    dec_dim = state["decoder.head.2.weight"].shape[1] if version == "2.2" else None
    table = vae_name_table(version, dim, z_dim, dec_dim)
    return {table[k]: v for k, v in state.items()}


def diffusers_vae_config(version, dim, z_dim, dec_dim, mean, std):
    """AutoencoderKLWan config.json values for an official VAE of these widths."""
    config = {"_class_name": "AutoencoderKLWan", "base_dim": dim, "z_dim": z_dim, "dim_mult": [1, 2, 4, 4],
              "num_res_blocks": _RES_BLOCKS, "attn_scales": [], "temperal_downsample": [False, True, True],
              "dropout": 0.0, "latents_mean": list(mean), "latents_std": list(std)}
    if version == "2.2":
        config.update(decoder_base_dim=dec_dim, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                      scale_factor_spatial=16, scale_factor_temporal=4)
    return config


# -------------------------------------------------------------------------------------- UMT5
HF_TIED_EMBEDDING = "encoder.embed_tokens.weight"  # HF's second name for shared.weight
_HF_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")


def hf_t5_to_official(state, source):
    """UMT5EncoderModel (or T5) names -> official umt5 names; the tied embedding copy is dropped."""
    state = {k: v for k, v in state.items() if k != HF_TIED_EMBEDDING}
    layers = {int(m.group(1)) for m in map(_HF_BLOCK.match, state) if m}
    if not layers:
        raise CheckpointError(f"{source} has no encoder.block.N tensors; not a umt5 encoder")
    official = {hf: key for key, hf in official_to_hf_names(max(layers) + 1).items()}
    unknown = sorted(state.keys() - official.keys())
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys for a umt5 encoder: {', '.join(unknown[:8])}")
    return {official[k]: v for k, v in state.items()}
