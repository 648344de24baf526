"""WanModel: the Wan2.1 / Wan2.2 diffusion transformer (t2v, i2v, flf2v and ti2v variants).

Numerics follow the official model (Wan2.2's wan/modules/model.py): the residual stream, the
modulation and the output head run in fp32; linear layers and attention run in the weights' dtype.
Two things are done more cheaply than the reference, with identical results (tests/test_model.py):
- the time embedding is computed once per distinct timestep value and looked up per token,
  instead of building a [B, L, 6, dim] tensor (9 GB for A14B at 720p);
- the RoPE cos/sin table for a token grid is built once and cached, in fp32, instead of complex
  float64 arithmetic on every call.
Wan2.1's image models (i2v, flf2v) also see the image through CLIP: `img_emb` turns the CLIP
encoder's tokens into context tokens placed before the text, and every block's cross-attention
attends to the image part with its own keys and values. Wan2.2's i2v models have no such branch
(`model_type` is "i2v" for both): `from_pretrained` tells them apart by the weights.
With `set_sequence_parallel(plan)` (wan.distributed.ulysses) the tokens are split across ranks after
the patch embedding and self-attention goes through the plan's all-to-all; None (the default) runs
everything in this process.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from ..utils.checkpoint import check_config, load_into, load_safetensors_dir, read_json, save_sharded_safetensors
from ..utils.fileio import write_json_atomic
from .attention import attention, sdpa_preferences
from .convert import diffusers_config_to_official, diffusers_to_official_keys

__all__ = ["WanModel", "sinusoidal_embedding_1d"]

ROPE_MAX_POSITIONS = 1024
MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
IMAGE_MODEL_TYPES = ("i2v", "flf2v")  # the model types that may carry the CLIP image branch
# Tokens per image from the CLIP encoder (class token + 16 x 16 patches). flf2v models learn a
# position table over the first frame's and the last frame's tokens together.
CLIP_IMAGE_TOKENS = 257
# Inductor settings for the compiled blocks: the coordinate-descent search tunes the generated
# kernels' block sizes (GPU code only). Not `triton.multi_kernel`: with torch 2.11-2.13 a graph
# holding multi-kernels crashes when it is loaded back from inductor's on-disk cache, i.e. on the
# second run of any script on the same machine. Measurements: docs/PERFORMANCE.md.
BLOCK_INDUCTOR_OPTIONS = {"coordinate_descent_tuning": True}
CONFIG_TYPES = {"model_type": str, "text_len": int, "in_dim": int, "dim": int, "ffn_dim": int, "freq_dim": int,
                "out_dim": int, "num_heads": int, "num_layers": int, "eps": float}


def sinusoidal_embedding_1d(dim, position):
    """[cos, sin] embedding of `position` (1-D), computed in float64 as the reference does.
    Only called on the few distinct timestep values of a forward pass, so the cost is nil."""
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = position[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def _fp32_linear(layer, x):
    """The reference runs these layers inside an fp32 autocast region, whatever the weights' dtype."""
    bias = None if layer.bias is None else layer.bias.float()
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), bias)


def _to_device(tensor, device):
    """`tensor` on `device`; a CPU tensor goes to a GPU through pinned memory without waiting for
    the GPU (a plain copy from pageable memory synchronises the stream)."""
    if tensor.device == device or device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _modulate(normed, shift, scale, dtype):
    return torch.addcmul(shift, normed, 1 + scale).to(dtype)


def _autocast_recasts(x):
    """Whether autocast is on for x's device and would run a matmul on x in another dtype."""
    device = x.device.type
    return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != x.dtype


def _feed_forward(ffn, x):
    """ffn: Sequential(Linear, GELU(tanh), Linear), the official layout.

    On CUDA in inference the first linear's bias and tanh GELU run in the matmul's epilogue
    (cuBLASLt): the [L, ffn_dim] hidden activations, a block's largest tensor, are written once
    instead of being written, read and written again by a GELU kernel (docs/PERFORMANCE.md), and
    GELU sees the fp32 accumulator rather than its bf16 rounding. Elsewhere the plain modules run:
    the op has no autograd formula, and its CPU version applies the exact (erf) GELU, not the tanh
    form the checkpoints were trained with.

    Autocast only rules the fusion out when it would change the matmul's dtype (fp32-stored
    weights under the pipelines' bf16 autocast, the reference's setting). With bf16 weights it
    changes nothing, and the pipelines denoise inside it."""
    first = ffn[0]
    fused = (x.is_cuda and not torch.is_grad_enabled() and not _autocast_recasts(x)
             and type(first) is nn.Linear and first.bias is not None and x.dtype == first.weight.dtype)
    if not fused:
        return ffn(x)
    rows = x.reshape(-1, x.shape[-1])
    hidden = torch._addmm_activation(first.bias, rows, first.weight.t(), use_gelu=True)
    return ffn[2](hidden.view(*x.shape[:-1], hidden.shape[-1]))


def _gated_add(x, y, gate):
    """x + y * gate into the fp32 residual stream; in place unless autograd needs x. The in-place
    ops promote y to fp32 inside the kernel (exactly as y.float() would) without an fp32 copy."""
    if torch.is_grad_enabled():
        return x + y.float() * gate
    return x.add_(y, alpha=gate) if isinstance(gate, float) else x.addcmul_(y, gate)


class TimestepTable:
    """Per-token values looked up from a small table of distinct timesteps.

    `table` has one row per distinct timestep ([U, ...]); `index` says which row each token uses:
    shape [B, 1] when every token of a sample shares its timestep (plain broadcast), else [B, L]."""

    def __init__(self, table, index):
        self.table, self.index = table, index

    def row(self, values):
        """values: [U, dim] -> per-token [B, 1 or L, dim]."""
        return F.embedding(self.index, values)


class WanRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, as in the reference."""

    def forward(self, x):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


# torch >= 2.8; older versions compile the function inline, with the memory cost described below.
_own_compile_region = getattr(torch.compiler, "nested_compile_region", lambda fn: fn)


@_own_compile_region
def _rotated_heads(linear, norm, x, cos, sin, num_heads):
    """Self-attention's q or k: projected, RMS-normed, split into heads and rotated, in x's dtype.

    Compiled as a region of its own, so that q is rotated before k is projected. Inlined, inductor
    fuses the two rotations into one kernel (they read the same RoPE tables), and q and k then
    exist both before and after rotation at the same time: one more [L, dim] tensor at the
    block's memory peak, 0.8 GB for A14B at 720p."""
    heads = norm(linear(x)).unflatten(-1, (num_heads, -1))
    return RotaryTable(cos, sin).rotate(heads).to(x.dtype)


class WanSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size=(-1, -1), qk_norm=True, eps=1e-6):
        super().__init__()
        if tuple(window_size) != (-1, -1):
            raise ValueError("windowed attention is not supported (every Wan checkpoint uses (-1, -1))")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.sequence_parallel = None  # set by WanModel.set_sequence_parallel on self-attention only

    def _heads(self, x):
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x, seq_lens, rope):
        q = _rotated_heads(self.q, self.norm_q, x, rope.cos, rope.sin, self.num_heads)
        k = _rotated_heads(self.k, self.norm_k, x, rope.cos, rope.sin, self.num_heads)
        v = self._heads(self.v(x))
        attend = attention if self.sequence_parallel is None else self.sequence_parallel.attention
        out = attend(q, k, v, k_lens=seq_lens)
        return self.o(out.flatten(2))


class WanCrossAttention(WanSelfAttention):
    def forward(self, x, context):
        q = self._heads(self.norm_q(self.q(x))).to(x.dtype)
        return self.o(self._attend(q, context, self.k, self.norm_k, self.v).flatten(2))

    def _attend(self, q, context, k_proj, k_norm, v_proj):
        k = self._heads(k_norm(k_proj(context))).to(q.dtype)
        return attention(q, k, self._heads(v_proj(context)))


class WanImageCrossAttention(WanCrossAttention):
    """Cross-attention of Wan2.1's image models. The context is [image tokens; text_len text
    tokens]: the queries attend to each part in its own softmax, the image part through its own
    key and value projections (k_img, v_img, norm_k_img), and the two results are summed before
    the output projection."""

    def __init__(self, dim, num_heads, text_len, qk_norm=True, eps=1e-6):
        super().__init__(dim, num_heads, (-1, -1), qk_norm, eps)
        self.text_len = text_len
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x, context):
        image, text = context[:, :-self.text_len], context[:, -self.text_len:]
        q = self._heads(self.norm_q(self.q(x))).to(x.dtype)
        out = (self._attend(q, text, self.k, self.norm_k, self.v)
               + self._attend(q, image, self.k_img, self.norm_k_img, self.v_img))
        return self.o(out.flatten(2))


class ImageEmbedding(nn.Module):
    """CLIP image tokens -> context tokens: LayerNorm, Linear, exact GELU, Linear, LayerNorm (the
    official `img_emb.proj`). An flf2v model first adds `emb_pos`, a learned table over a first
    frame's and a last frame's tokens taken as one sequence.

    The LayerNorms run in fp32 and the linear layers in the weights' dtype, as under the
    reference's autocast."""

    def __init__(self, image_dim, dim, pos_len=None):
        super().__init__()
        self.proj = nn.Sequential(WanLayerNorm(image_dim, eps=1e-5), nn.Linear(image_dim, image_dim), nn.GELU(),
                                  nn.Linear(image_dim, dim), WanLayerNorm(dim, eps=1e-5))
        self.emb_pos = None if pos_len is None else nn.Parameter(torch.zeros(1, pos_len, image_dim))

    def forward(self, features):
        """features: [N, tokens, image_dim] CLIP tokens -> [N, tokens, dim] fp32; flf2v: N images in
        (first, last) pairs -> [N / 2, 2 * tokens, dim]."""
        features = features.float()
        if self.emb_pos is not None:
            pair = self.emb_pos.shape[1]
            if features.shape[0] % 2 or 2 * features.shape[1] != pair:
                raise ValueError(f"an flf2v model needs clip_fea as (first, last) frame pairs of {pair // 2} "
                                 f"tokens each, got {tuple(features.shape)}")
            features = features.reshape(-1, pair, features.shape[-1]) + self.emb_pos.float()
        norm_in, first, gelu, second, norm_out = self.proj
        return norm_out(second(gelu(first(norm_in(features).to(first.weight.dtype)))))


class WanAttentionBlock(nn.Module):
    def __init__(self, dim, ffn_dim, num_heads, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                 image_text_len=None):
        """image_text_len: set for models with the CLIP image branch, whose context is [image
        tokens; image_text_len text tokens]; None: the context is text only."""
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, num_heads, window_size, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        if image_text_len is None:
            self.cross_attn = WanCrossAttention(dim, num_heads, (-1, -1), qk_norm, eps)
        else:
            self.cross_attn = WanImageCrossAttention(dim, num_heads, image_text_len, qk_norm, eps)
        self.norm2 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.ffn_chunk = None  # tokens per feed-forward chunk; None runs all tokens at once

    def forward(self, x, e0, seq_lens, rope, context):
        """x: fp32 residual stream [B, L, dim], updated in place; e0: TimestepTable over [U, 6, dim].
        x may hold one sample for several contexts (WanModel.forward's shared latent): it is
        repeated for them after self-attention, the first layer where the samples differ."""
        x = self.self_attention_sublayer(x, e0, seq_lens, rope)
        if x.shape[0] < context.shape[0]:
            x = x.repeat(context.shape[0], 1, 1)
        x = self.cross_attention_sublayer(x, context)
        return self.ffn_sublayer(x, e0)

    # The three sublayers are the units that `WanModel.compile_blocks` compiles. Each ends with its
    # in-place residual update, so compiled code writes the update straight into x; a whole block
    # compiled as one graph keeps a second fp32 copy of the residual stream alive instead (1.5 GB
    # for A14B at 720p, the difference between fitting 34 GB or not).
    def _modulation(self, e0, index):
        return e0.row(self.modulation[:, index].float() + e0.table[:, index])

    def modulated_input(self, x, e0, dtype):
        """What self-attention sees: the normed residual stream, shifted and scaled by the time."""
        return _modulate(self.norm1(x), self._modulation(e0, 0), self._modulation(e0, 1), dtype)

    def self_attention_sublayer(self, x, e0, seq_lens, rope):
        normed = self.modulated_input(x, e0, self.modulation.dtype)  # the linear layers' compute dtype
        return _gated_add(x, self.self_attn(normed, seq_lens, rope), self._modulation(e0, 2))

    def cross_attention_sublayer(self, x, context):
        return _gated_add(x, self.cross_attn(self.norm3(x).to(self.modulation.dtype), context), 1.0)

    def ffn_sublayer(self, x, e0):
        """With `ffn_chunk` set the feed-forward runs over that many tokens at a time: rows are
        independent, so the result is the same (up to matmul rounding) while the [L, ffn_dim]
        activations (2 GB per tensor for A14B at 720p) shrink to one chunk."""
        dtype = self.modulation.dtype
        shift, scale = self._modulation(e0, 3), self._modulation(e0, 4)
        chunk = self.ffn_chunk
        if chunk is None or x.shape[1] <= chunk:
            y = _feed_forward(self.ffn, _modulate(self.norm2(x), shift, scale, dtype))
        else:
            def rows(t, start):
                return t if t.shape[1] == 1 else t[:, start:start + chunk]
            y = torch.cat([_feed_forward(self.ffn, _modulate(self.norm2(rows(x, start)), rows(shift, start),
                                                             rows(scale, start), dtype))
                           for start in range(0, x.shape[1], chunk)], dim=1)
        return _gated_add(x, y, self._modulation(e0, 5))

    def compile_sublayers(self, **options):
        for name in ("self_attention_sublayer", "cross_attention_sublayer", "ffn_sublayer"):
            setattr(self, name, torch.compile(getattr(self, name), **options))


class Head(nn.Module):
    def __init__(self, dim, out_dim, patch_size, eps=1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x, e):
        """x: [B, L, dim] fp32; e: TimestepTable over [U, dim] (the time embedding, not e0)."""
        shift, scale = (self.modulation.float() + e.table[:, None]).unbind(1)
        normed = torch.addcmul(e.row(shift), self.norm(x), 1 + e.row(scale))
        return _fp32_linear(self.head, normed)


class RotaryTable:
    """cos/sin for the adjacent-pair rotary embedding of a batch of token grids.

    The head dim splits into three axes (frames, rows, columns) with d - 4*(d//6), 2*(d//6) and
    2*(d//6) channels; pair j of the head rotates by position * 10000^(-2k/axis_dim) on its axis.
    Tokens past a sample's true length (padding) are left unrotated (cos 1, sin 0).

    The tables are stored per channel, [B, L, 1, d] fp32: `cos` repeated over each pair and `sin`
    signed (-sin, +sin), so that rotate() is two multiplies and an add on x and its pair-swapped
    view, the same products and sums as the pairwise formula (bit for bit in eager mode). Compiled,
    it is one element-wise kernel with no fp32 intermediate (stacking the rotated halves made
    inductor write a [L, dim] fp32 tensor per q and k: 3 GB for A14B at 720p)."""

    def __init__(self, cos, sin):
        self.cos, self.sin = cos, sin

    @classmethod
    def from_angles(cls, cos, sin):
        """cos, sin: [B, L, 1, d/2] per pair."""
        return cls(cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2))

    def rotate(self, x):
        x = x.float()
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) for each pair (x0, x1)
        return x * self.cos + swapped * self.sin


class WanModel(nn.Module):
    def __init__(self, model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=2048, ffn_dim=8192,
                 freq_dim=256, text_dim=4096, out_dim=16, num_heads=16, num_layers=32, window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6, image_dim=None):
        """image_dim: width of the CLIP image tokens for Wan2.1's i2v and flf2v models (1280),
        which adds the image branch; None (the default) builds none, as Wan2.2's i2v models."""
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        if image_dim is not None and model_type not in IMAGE_MODEL_TYPES:
            raise ValueError(f"image_dim (the CLIP image branch) is for i2v and flf2v models only, not {model_type}")
        if model_type == "flf2v" and image_dim is None:
            raise ValueError("an flf2v model needs image_dim (its CLIP image branch)")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.model_type, self.patch_size, self.text_len = model_type, tuple(patch_size), text_len
        self.in_dim, self.dim, self.ffn_dim, self.freq_dim = in_dim, dim, ffn_dim, freq_dim
        self.text_dim, self.out_dim, self.num_heads, self.num_layers = text_dim, out_dim, num_heads, num_layers
        self.window_size, self.qk_norm, self.cross_attn_norm, self.eps = window_size, qk_norm, cross_attn_norm, eps
        self.image_dim = image_dim

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        image_text_len = None if image_dim is None else text_len
        self.blocks = nn.ModuleList([
            WanAttentionBlock(dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm, eps, image_text_len)
            for _ in range(num_layers)
        ])
        self.head = Head(dim, out_dim, patch_size, eps)
        if image_dim is None:
            self.img_emb = None
        else:
            self.img_emb = ImageEmbedding(image_dim, dim, 2 * CLIP_IMAGE_TOKENS if model_type == "flf2v" else None)
        self._rope_cache = {}
        self.sequence_parallel = None

    def set_sequence_parallel(self, plan):
        """Split tokens across the ranks of `plan` (a wan.distributed.ulysses.UlyssesParallel), or
        run in one process again with None. Prefer wan.distributed.enable_sequence_parallel, which
        checks the head count first."""
        self.sequence_parallel = plan
        for block in self.blocks:
            block.self_attn.sequence_parallel = plan
        return self

    def set_ffn_chunk(self, tokens):
        """Run every block's feed-forward over `tokens` tokens at a time (None: all at once).
        Same results up to matmul rounding, lower peak memory at long sequence lengths."""
        for block in self.blocks:
            block.ffn_chunk = tokens
        return self

    def compile_blocks(self, **options):
        """torch.compile each transformer block's three sublayers in place (state-dict keys
        unchanged). Fuses the fp32 norm / modulation / RoPE element-wise work around the matmuls;
        same numerics up to the fused kernels' rounding (tests/test_model.py checks it on the CPU).
        `options` go to torch.compile; with none, inductor gets BLOCK_INDUCTOR_OPTIONS, except under
        deterministic mode (--deterministic): coordinate-descent tuning picks kernel configurations by
        timing them, so two processes could pick different reductions."""
        if not options and not torch.are_deterministic_algorithms_enabled():
            options = {"options": dict(BLOCK_INDUCTOR_OPTIONS)}
        for block in self.blocks:
            block.compile_sublayers(**options)
        return self

    @property
    def config(self):
        return {name: getattr(self, name) for name in CONFIG_TYPES}

    @property
    def has_image_branch(self):
        """Whether the model takes CLIP image tokens (Wan2.1 i2v / flf2v): forward needs clip_fea."""
        return self.img_emb is not None

    # ------------------------------------------------------------------ forward
    def forward(self, x, t, context, seq_len, clip_fea=None, y=None):
        """x: list of [C_in, F, H, W] latents; t: [B] or per-token [B, seq_len] timesteps;
        context: list of [L_i, text_dim] text embeddings; seq_len: padded token count;
        clip_fea: CLIP image tokens [N, 257, image_dim], for models with the image branch only:
        one image per context, or one for all of them (i2v); flf2v: (first, last) frame pairs;
        y: optional list of conditioning latents concatenated to x on channels (i2v, flf2v).
        Returns a list of fp32 velocities [C_out, F, H, W], one per context.

        One latent (with its t and y) may go with several contexts, as in classifier-free
        guidance: everything before the first cross-attention, block 0's self-attention included,
        then runs once for all of them instead of once per context."""
        if self.model_type in IMAGE_MODEL_TYPES and y is None:
            raise ValueError(f"an {self.model_type} WanModel needs the conditioning latents y")
        if self.has_image_branch and clip_fea is None:
            raise ValueError(f"this {self.model_type} WanModel has a CLIP image branch: pass clip_fea")
        if not self.has_image_branch and clip_fea is not None:
            raise ValueError(f"this {self.model_type} WanModel has no CLIP image branch: clip_fea must be None")
        if len(x) not in (1, len(context)):
            raise ValueError(f"got {len(x)} latents for {len(context)} contexts: pass one latent per context, "
                             "or one latent for all of them")
        if y is not None:
            x = [torch.cat([u, v], dim=0) for u, v in zip(x, y)]
        tokens, grids = self._embed_patches(x)
        lengths = [n.shape[0] for n in tokens]
        if max(lengths) > seq_len:
            raise ValueError(f"seq_len {seq_len} is smaller than the {max(lengths)} tokens of the input")
        sp = self.sequence_parallel
        total = seq_len if sp is None else sp.padded_length(seq_len)  # sequence parallel: P equal shards
        # Without padding every key is real: no length limit, so attention stays unmasked.
        seq_lens = None if min(lengths) == total else torch.tensor(lengths, dtype=torch.long)
        hidden = torch.stack([F.pad(u, (0, 0, 0, total - u.shape[0])) for u in tokens]).float()
        del tokens  # views of the bf16 patch embedding: 0.8 GB for A14B at 720p, not needed past here

        e, e0 = self._time_tables(t, len(x), seq_len, hidden.device, total)
        context = self._embed_context(context, clip_fea)
        rope = self._rope(grids, total, hidden.device)
        if sp is not None:
            hidden, rope = sp.shard(hidden), RotaryTable(sp.shard(rope.cos), sp.shard(rope.sin))
            e, e0 = (TimestepTable(u.table, u.index if u.index.shape[1] == 1 else sp.shard(u.index)) for u in (e, e0))
        with sdpa_preferences(hidden.device):
            hidden = self.run_blocks(hidden, e0, seq_lens, rope, context, t)
        out = self.head(hidden, e)
        if sp is not None:
            out = sp.gather(out)
        return self._unpatchify(out, grids * (len(out) // len(grids)))

    def run_blocks(self, hidden, e0, seq_lens, rope, context, t):
        """The transformer blocks over the embedded tokens: the seam that wrappers replace on an
        instance (wan.step_cache). `t` is the pass's timesteps, which the blocks themselves do not
        read (they get them through e0)."""
        for block in self.blocks:
            hidden = block(hidden, e0, seq_lens, rope, context)
        return hidden

    def quantize_fp8(self):
        """Opt-in, inexact: every linear layer inside the transformer blocks becomes an FP8Linear
        (float8 weights with per-channel scales, per-token activation scales). Embeddings, the
        time MLP and the output head stay as they are."""
        from .fp8 import quantize_linears_

        for block in self.blocks:
            quantize_linears_(block)
        return self

    def _embed_patches(self, x):
        weight = self.patch_embedding.weight
        if all(u.shape == x[0].shape for u in x):  # one conv for a whole CFG batch
            patches = self.patch_embedding(torch.stack(x).to(weight.device, weight.dtype))
            grids = [tuple(patches.shape[2:])] * len(x)
            return list(patches.flatten(2).transpose(1, 2)), grids
        tokens, grids = [], []
        for u in x:
            p = self.patch_embedding(u[None].to(weight.device, weight.dtype))
            grids.append(tuple(p.shape[2:]))
            tokens.append(p.flatten(2).transpose(1, 2)[0])
        return tokens, grids

    def _time_tables(self, t, batch, seq_len, device, total=None):
        """Time embeddings per distinct timestep and each token's row; per-token timesteps are
        extended to `total` tokens (sequence-parallel padding) with their last value.

        The distinct values are found where t is. The pipelines pass t on the CPU: done on the GPU,
        torch.unique and the uniformity check each wait for the queued work to finish, and the GPU
        then idles while the next kernels are launched."""
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None]
        if t.shape[0] != batch:
            raise ValueError(f"t has {t.shape[0]} rows for {batch} latents; expected one per latent")
        if t.shape[1] not in (1, seq_len):
            raise ValueError(f"per-token timesteps must have seq_len={seq_len} columns, got {tuple(t.shape)}")
        values, index = torch.unique(t, return_inverse=True)
        if bool((index == index[:, :1]).all()):
            index = index[:, :1]
        elif total is not None and total > seq_len:
            index = torch.cat([index, index[:, -1:].expand(-1, total - seq_len)], dim=1)
        sinusoid = _to_device(sinusoidal_embedding_1d(self.freq_dim, values), device)
        index = _to_device(index, device)
        e = _fp32_linear(self.time_embedding[2], self.time_embedding[1](_fp32_linear(self.time_embedding[0], sinusoid)))
        e0 = _fp32_linear(self.time_projection[1], self.time_projection[0](e)).unflatten(1, (6, self.dim))
        return TimestepTable(e, index), TimestepTable(e0, index)

    def _embed_text(self, context):
        weight = self.text_embedding[0].weight
        padded = torch.stack([
            F.pad(u.to(weight.device, weight.dtype), (0, 0, 0, self.text_len - u.shape[0])) for u in context
        ])
        return self.text_embedding(padded)

    def _embed_context(self, context, clip_fea):
        """Text embeddings, preceded by the image tokens for models with the image branch."""
        text = self._embed_text(context)
        if clip_fea is None:
            return text
        image = self.img_emb(clip_fea.to(text.device)).to(text.dtype)
        if image.shape[0] == 1:
            image = image.expand(len(text), -1, -1)
        elif image.shape[0] != len(text):
            per_image = "frame pairs" if self.model_type == "flf2v" else "images"
            raise ValueError(f"clip_fea holds {image.shape[0]} {per_image} for {len(text)} contexts: pass one per "
                             "context, or one for all of them")
        return torch.cat([image, text], dim=1)

    def _rope(self, grids, seq_len, device):
        key = (tuple(grids), seq_len, str(device))
        if key not in self._rope_cache:
            tables = [self._rope_grid(grid, seq_len, device) for grid in grids]
            cos = torch.stack([c for c, _ in tables])[:, :, None, :]
            sin = torch.stack([s for _, s in tables])[:, :, None, :]
            self._rope_cache = {key: RotaryTable.from_angles(cos, sin)}  # keep one: shapes are fixed in a run
        return self._rope_cache[key]

    def _rope_grid(self, grid, seq_len, device):
        d = self.dim // self.num_heads
        axis_dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
        angles = []
        for axis, (size, axis_dim) in enumerate(zip(grid, axis_dims)):
            if size > ROPE_MAX_POSITIONS:
                raise ValueError(f"token grid {grid} exceeds the {ROPE_MAX_POSITIONS} RoPE positions per axis")
            freqs = 1.0 / torch.pow(10000.0, torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
            a = torch.arange(size, dtype=torch.float64)[:, None] * freqs[None, :]
            shape = [1, 1, 1, a.shape[1]]
            shape[axis] = size
            angles.append(a.view(shape).expand(*grid, a.shape[1]))
        angles = torch.cat(angles, dim=-1).reshape(-1, d // 2)
        angles = F.pad(angles, (0, 0, 0, seq_len - angles.shape[0]))  # padding: angle 0, no rotation
        return torch.cos(angles).float().to(device), torch.sin(angles).float().to(device)

    def _unpatchify(self, out, grids):
        pt, ph, pw = self.patch_size
        videos = []
        for u, (f, h, w) in zip(out, grids):
            u = u[: f * h * w].view(f, h, w, pt, ph, pw, self.out_dim)
            videos.append(torch.einsum("fhwpqrc->cfphqwr", u).reshape(self.out_dim, f * pt, h * ph, w * pw))
        return videos

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, device="cpu"):
        """Load an official Wan folder (config.json + diffusion_pytorch_model*.safetensors with the
        official key names) or a diffusers `transformer/` folder (WanTransformer3DModel), strictly.

        Wan2.1 and Wan2.2 i2v checkpoints both say model_type "i2v"; only Wan2.1's hold the CLIP
        image branch (`img_emb.*`), so it is built when the weights have it."""
        folder = pretrained_model_name_or_path
        if subfolder:
            folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise CheckpointError(f"DiT folder not found: {folder}")
        config_path = os.path.join(folder, "config.json")
        config = read_json(config_path, "DiT config")
        state = load_safetensors_dir(folder, what="DiT weights")
        if config.get("_class_name") == "WanTransformer3DModel":
            kwargs = diffusers_config_to_official(config, source=config_path)
            state = diffusers_to_official_keys(state)
        else:
            kwargs = check_config(config, CONFIG_TYPES, config_path)
        if "text_embedding.0.weight" in state:  # text_dim is not saved in config.json; read it off the weights
            kwargs["text_dim"] = state["text_embedding.0.weight"].shape[1]
        if kwargs.get("model_type") in IMAGE_MODEL_TYPES and "img_emb.proj.0.weight" in state:
            kwargs["image_dim"] = state["img_emb.proj.0.weight"].shape[0]
        try:
            with torch.device("meta"):
                model = cls(**kwargs)
        except ValueError as exc:
            raise CheckpointError(f"{config_path}: {exc}") from None
        load_into(model, state, source=folder, dtype=torch_dtype or torch.float32)
        return model.to(device).eval().requires_grad_(False)

    def save_pretrained(self, folder, max_shard_bytes=5 * 2 ** 30):
        """Write config.json and (sharded) safetensors with the official key names."""
        os.makedirs(folder, exist_ok=True)
        config = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", **self.config}
        write_json_atomic(os.path.join(folder, "config.json"), config)
        save_sharded_safetensors(self.state_dict(), folder, "diffusion_pytorch_model", max_shard_bytes)
