"""Key and config conversion between the official WanModel layout and diffusers'
WanTransformer3DModel layout (Wan-AI/*-Diffusers checkpoints)."""
import re

from ..errors import CheckpointError

# (official, diffusers) name fragments; block-level entries apply under "blocks.N.".
_TOP_LEVEL = [
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),
    ("patch_embedding.", "patch_embedding."),
    # Wan2.1 i2v / flf2v: the CLIP image-token MLP (index 2 is its parameter-free GELU)
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
]
_IN_BLOCK = [
    ("self_attn.q.", "attn1.to_q."), ("self_attn.k.", "attn1.to_k."), ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."), ("self_attn.norm_q.", "attn1.norm_q."), ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."), ("cross_attn.k.", "attn2.to_k."), ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."), ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("cross_attn.k_img.", "attn2.add_k_proj."), ("cross_attn.v_img.", "attn2.add_v_proj."),
    ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
    ("norm3.", "norm2."),  # the affine cross-attention norm: norm3 officially, norm2 in diffusers
    ("ffn.0.", "ffn.net.0.proj."), ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),
]
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _rename(key, table, source_side):
    src, dst = (0, 1) if source_side == "official" else (1, 0)
    match = _BLOCK.match(key)
    if match:
        index, rest = match.groups()
        for pair in _IN_BLOCK:
            if rest.startswith(pair[src]):
                return f"blocks.{index}.{pair[dst]}{rest[len(pair[src]):]}"
        return None
    for pair in table:
        if key.startswith(pair[src]):
            return pair[dst] + key[len(pair[src]):]
    return None


def _convert(state, side):
    out, unknown = {}, []
    for key, value in state.items():
        new = _rename(key, _TOP_LEVEL, side)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"unexpected keys for a Wan transformer: {', '.join(sorted(unknown)[:8])}")
    return out


def official_to_diffusers_keys(state):
    return _convert(state, "official")


def diffusers_to_official_keys(state):
    return _convert(state, "diffusers")


def diffusers_config_to_official(config, source="config.json"):
    """Map a WanTransformer3DModel config to WanModel constructor arguments.

    Wan2.1's image models carry `image_dim` (the CLIP width) and `added_kv_proj_dim` (the image
    keys' input width, i.e. the model width); FLF2V also `pos_embed_seq_len`."""
    if config.get("qk_norm") not in ("rms_norm_across_heads", None):
        raise CheckpointError(f"{source}: unsupported qk_norm {config.get('qk_norm')!r}")
    in_dim = config.get("in_channels", 16)
    heads = config.get("num_attention_heads", 40)
    dim = heads * config.get("attention_head_dim", 128)
    image_dim = config.get("image_dim")
    if (image_dim is None) != (config.get("added_kv_proj_dim") is None) or \
            config.get("added_kv_proj_dim") not in (None, dim):
        raise CheckpointError(f"{source}: image_dim {image_dim} with added_kv_proj_dim "
                              f"{config.get('added_kv_proj_dim')} is not a Wan2.1 image-to-video layout "
                              f"(expected both, with added_kv_proj_dim = {dim}, or neither)")
    if config.get("pos_embed_seq_len") is not None:
        model_type = "flf2v"
    else:
        model_type = {36: "i2v", 48: "ti2v"}.get(in_dim, "t2v")
    return {
        "model_type": model_type,
        "image_dim": image_dim,
        "in_dim": in_dim,
        "out_dim": config.get("out_channels") or in_dim,
        "dim": dim,
        "ffn_dim": config.get("ffn_dim", 13824),
        "freq_dim": config.get("freq_dim", 256),
        "num_heads": heads,
        "num_layers": config.get("num_layers", 40),
        "eps": config.get("eps", 1e-6),
        "qk_norm": config.get("qk_norm") is not None,
        "cross_attn_norm": config.get("cross_attn_norm", True),
    }


def official_config_to_diffusers(model):
    """WanTransformer3DModel constructor arguments for a WanModel (used by tests and exporters)."""
    return {
        "patch_size": model.patch_size, "num_attention_heads": model.num_heads,
        "attention_head_dim": model.dim // model.num_heads, "in_channels": model.in_dim,
        "out_channels": model.out_dim, "text_dim": model.text_dim, "freq_dim": model.freq_dim,
        "ffn_dim": model.ffn_dim, "num_layers": model.num_layers, "cross_attn_norm": model.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if model.qk_norm else None, "eps": model.eps,
        "image_dim": model.image_dim, "added_kv_proj_dim": None if model.image_dim is None else model.dim,
        "pos_embed_seq_len": None if model.model_type != "flf2v" else model.img_emb.emb_pos.shape[1],
    }
