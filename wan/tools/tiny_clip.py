"""A tiny CLIP checkpoint in the official Wan2.1 layout, with its tokenizer folder.

`write_tiny_clip(dir)` writes `<dir>/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`
with the official key set (visual tower with fused qkv and projection `head`, the xlm-roberta text
tower, `log_scale`) at small widths and random weights, and `<dir>/xlm-roberta-large/`, a small
XLM-R tokenizer. The visual tower keeps the real token grid (224 px, 14 px patches: 257 tokens),
so the DiT's flf2v position table fits it; only its width and depth shrink.
"""
import os
import string

import torch
from transformers import CLIPVisionModelWithProjection, XLMRobertaTokenizer

from ..modules.clip import (CLIP_CHECKPOINT_NAME, CLIP_TOKENIZER_NAME, HEAD_DIM, clip_vision_config,
                            hf_to_official_visual)
from ..utils.fileio import torch_save_atomic
from .randomize import randomize_

TINY_CLIP_WIDTH = 2 * HEAD_DIM  # two heads: a head-splitting mistake cannot hide
_WORDS = ["▁a", "▁the", "▁cat", "▁dog", "▁video", "▁camera", "▁light", "▁walks", "▁in", "▁of"]


def official_text_tower_shapes(vocab_size=250002, dim=1024, num_layers=24, max_len=514, out_dim=1024):
    """Official `textual.*` key -> shape of the xlm-roberta text tower (defaults: the real one)
    and `log_scale`. Wan loads but never runs this tower; the tiny file carries it so that its key
    set is the official one."""
    mid = (dim + out_dim) // 2
    shapes = {"textual.token_embedding.weight": (vocab_size, dim), "textual.type_embedding.weight": (1, dim),
              "textual.pos_embedding.weight": (max_len, dim)}
    for n in range(num_layers):
        block = f"textual.blocks.{n}."
        for name in ("q", "k", "v", "o"):
            shapes.update({f"{block}attn.{name}.weight": (dim, dim), f"{block}attn.{name}.bias": (dim,)})
        shapes.update({f"{block}norm1.weight": (dim,), f"{block}norm1.bias": (dim,),
                       f"{block}ffn.0.weight": (4 * dim, dim), f"{block}ffn.0.bias": (4 * dim,),
                       f"{block}ffn.2.weight": (dim, 4 * dim), f"{block}ffn.2.bias": (dim,),
                       f"{block}norm2.weight": (dim,), f"{block}norm2.bias": (dim,)})
    shapes.update({"textual.norm.weight": (dim,), "textual.norm.bias": (dim,),
                   "textual.head.0.weight": (mid, dim), "textual.head.2.weight": (out_dim, mid),
                   "log_scale": ()})
    return shapes


def build_tiny_xlmr_tokenizer():
    """A unigram XLM-R tokenizer over single characters and a few words, built in memory, with
    XLM-R's special ids (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last)."""
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("▁", -2.0)] + [(c, -4.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [(word, -1.0) for word in _WORDS]
    return XLMRobertaTokenizer(vocab=specials + pieces + [("<mask>", 0.0)])


def write_tiny_clip(ckpt_dir, seed=0, width=TINY_CLIP_WIDTH, num_layers=3, text_dim=16, text_layers=1):
    """Write the tiny CLIP `.pth` and tokenizer folder into `ckpt_dir`; return the CLIP width
    (the DiT's image_dim)."""
    tokenizer = build_tiny_xlmr_tokenizer()
    tokenizer.save_pretrained(os.path.join(ckpt_dir, CLIP_TOKENIZER_NAME))
    config = clip_vision_config(width=width, num_layers=num_layers, mlp_dim=2 * width, projection_dim=text_dim)
    visual = randomize_(CLIPVisionModelWithProjection(config), seed)
    state = {k: v.detach().clone() for k, v in hf_to_official_visual(visual.state_dict()).items()}
    gen = torch.Generator().manual_seed(seed + 1)
    for name, shape in official_text_tower_shapes(len(tokenizer), text_dim, text_layers, out_dim=text_dim).items():
        state[name] = 0.1 * torch.randn(shape, generator=gen)
    torch_save_atomic(state, os.path.join(ckpt_dir, CLIP_CHECKPOINT_NAME))
    return width
