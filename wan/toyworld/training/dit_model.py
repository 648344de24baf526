"""The toy DiT: the project's WanModel (ti2v, official key layout) at small widths, the official
initialisation (WanModel itself has none), a batched forward for training, and the compile
variants the training step can use.
"""
import weakref

import torch
import torch.nn as nn

from ...modules.attention import sdpa_preferences
from ...modules.model import WanModel
from .text import TEXT_ENCODER, TEXT_LEN

LATENT_CHANNELS = 48
# Full size TI2V-5B: dim 3072, ffn 14336, 24 heads of 128, 30 layers. The toy keeps head_dim 128
# so the RoPE split and the attention kernels see the official head size.
DIT_SIZE = dict(dim=256, ffn_dim=1024, num_heads=2, num_layers=6, freq_dim=256)
COMPILE_MODES = ("none", "sublayers", "blocks", "blocks-cudagraphs")
SUBLAYERS = ("self_attention_sublayer", "cross_attention_sublayer", "ffn_sublayer")  # what compile_blocks wraps
_ROPE_TABLES = weakref.WeakKeyDictionary()  # model -> {(grid, seq_len, device): RotaryTable}


def build_dit(seed, dim, ffn_dim, num_heads, num_layers, freq_dim=256, text_dim=TEXT_ENCODER["dim"]):
    """A ti2v WanModel with the official initialisation, drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanModel(model_type="ti2v", patch_size=(1, 2, 2), text_len=TEXT_LEN, in_dim=LATENT_CHANNELS,
                         out_dim=LATENT_CHANNELS, dim=dim, ffn_dim=ffn_dim, freq_dim=freq_dim, text_dim=text_dim,
                         num_heads=num_heads, num_layers=num_layers)
        return init_official_(model)


@torch.no_grad()
def init_official_(model):
    """The official Wan initialisation: xavier-uniform linear weights and the patch embedding
    (as a matrix), zero biases, N(0, 0.02) for the text and time embeddings, a zero output head.
    The modulation tables keep WanModel's randn / sqrt(dim)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.xavier_uniform_(model.patch_embedding.weight.flatten(1))
    for module in list(model.text_embedding) + list(model.time_embedding):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
    nn.init.zeros_(model.head.head.weight)
    return model


def predict_velocity(model, latents, timesteps, context):
    """WanModel.forward for a batch of equal-shaped samples, without its per-sample lists.

    latents [B, C, F, H, W]; timesteps [B] or per token [B, L], best on the CPU (the model finds
    the distinct values where t lives, and would wait for the GPU otherwise); context
    [B, text_len, text_dim], already zero-padded as WanModel pads prompts. Returns the fp32
    velocity [B, C, F, H, W]. The same modules and numerics as the list API (tested), with one
    patch embedding, one text embedding and one unpatchify for the whole batch instead of one
    pad or copy per sample, which dominated small-model steps."""
    device = latents.device
    patches = model.patch_embedding(latents.to(model.patch_embedding.weight.dtype))
    grid = tuple(patches.shape[2:])
    hidden = patches.flatten(2).transpose(1, 2).float()
    seq_len = hidden.shape[1]
    e, e0 = model._time_tables(timesteps, len(latents), seq_len, device)
    text = model.text_embedding(context.to(model.text_embedding[0].weight.dtype))
    rope = rope_table(model, grid, seq_len, device)
    with sdpa_preferences(device):
        for block in model.blocks:
            hidden = block(hidden, e0, None, rope, text)
    out = model.head(hidden, e)
    return unpatchify(out, grid, model.patch_size, model.out_dim)


def rope_table(model, grid, seq_len, device):
    """The RoPE table of one token grid, broadcast over the batch. WanModel keeps a single table
    (an inference run has one shape); training alternates two clip lengths, and rebuilding the
    table at every switch copies it from pageable memory, which makes the CPU wait for the GPU.
    So one table per shape is kept here."""
    tables = _ROPE_TABLES.setdefault(model, {})
    key = (grid, seq_len, str(device))
    if key not in tables:
        tables[key] = model._rope([grid], seq_len, device)
    return tables[key]


def unpatchify(tokens, grid, patch_size, channels):
    """[B, L, prod(patch) * C] -> [B, C, F, H, W] (WanModel's per-sample unpatchify, batched)."""
    (f, h, w), (pt, ph, pw) = grid, patch_size
    u = tokens.view(len(tokens), f, h, w, pt, ph, pw, channels)
    return torch.einsum("bfhwpqrc->bcfphqwr", u).reshape(len(tokens), channels, f * pt, h * ph, w * pw)


def compile_for_training(model, mode):
    """Compile the transformer blocks in place (state-dict keys unchanged) for training:
    "sublayers": WanModel.compile_blocks (each block's three sublayers, as inference does);
    "blocks": each whole block as one graph (forward and backward);
    "blocks-cudagraphs": the same, replayed as CUDA graphs (fewer kernel launches);
    "none": eager. Shapes are static: the two clip lengths compile once each."""
    if mode == "none":
        return model
    # Every block (and each of its sublayers) is traced per clip length: keep them all compiled
    # rather than falling back to eager past dynamo's default of 8 entries per function.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if mode == "sublayers":
        return model.compile_blocks(dynamic=False)
    options = {"dynamic": False}
    if mode == "blocks-cudagraphs":
        options["mode"] = "reduce-overhead"
    elif mode != "blocks":
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    for block in model.blocks:
        block.compile(**options)
    return model


def uncompile(model):
    """Undo compile_for_training: the blocks run eagerly again (same weights, same parameters,
    so the optimiser's state stays valid)."""
    for block in model.blocks:
        block._compiled_call_impl = None  # where nn.Module.compile keeps the compiled call
        for name in SUBLAYERS:
            block.__dict__.pop(name, None)  # compile_blocks shadows the methods per instance
    torch._dynamo.reset()
    return model
