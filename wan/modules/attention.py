"""One attention entry point for every network in the package.

Layout follows the DiT: q [B, Lq, heads, head_dim], k and v [B, Lk, heads, head_dim]. Backends:
- "sdpa" (default): torch's scaled_dot_product_attention. Inside `sdpa_preferences` the cuDNN
  kernel is put first on CUDA because on Hopper it is much faster than the flash kernel at Wan's
  sequence lengths (~600 vs ~366 TFLOP/s at 27k tokens, DESIGN.md).
- "flash": flash-attn 3 (flash_attn_interface) or 2 (flash_attn) when installed.
"""
import contextlib
import logging

import torch
import torch.nn.functional as F

try:
    import flash_attn_interface  # FlashAttention-3 (Hopper)
except ImportError:
    flash_attn_interface = None
try:
    import flash_attn  # FlashAttention-2
except ImportError:
    flash_attn = None

BACKENDS = ("sdpa", "flash")
_default_backend = "sdpa"


def set_attention_backend(name):
    """Choose the backend used when `attention(..., backend=None)`."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    if name == "flash" and flash_attn_interface is None and flash_attn is None:
        raise ValueError("attention backend 'flash' needs flash-attn installed (flash_attn or flash_attn_interface)")
    _default_backend = name


def attention(q, k, v, k_lens=None, backend=None):
    """Softmax attention with scale 1/sqrt(head_dim), non-causal.

    k_lens: optional int tensor [B]; keys at positions >= k_lens[b] are ignored for sample b.
    Returns [B, Lq, heads, head_dim] in q's dtype."""
    backend = backend or _default_backend
    k, v, mask = _restrict_keys(k, v, k_lens)
    if backend == "flash" and mask is None and q.is_cuda:
        return _flash(q, k, v)
    out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
    return out.transpose(1, 2)


def _restrict_keys(k, v, k_lens):
    """Drop padded keys. Equal lengths (the usual case: batch 1, or CFG pairs) become a slice,
    which keeps the fast unmasked kernels; unequal lengths become a boolean mask."""
    if k_lens is None:
        return k, v, None
    lens = k_lens.tolist()
    if min(lens) == max(lens):
        n = lens[0]
        return k[:, :n], v[:, :n], None
    positions = torch.arange(k.shape[1], device=k.device)
    mask = positions[None, :] < k_lens.to(k.device)[:, None]  # [B, Lk]
    return k, v, mask[:, None, None, :]


def _sdpa(q, k, v, mask):
    if q.dtype != k.dtype or q.dtype != v.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_preferences(device):
    """Context in which SDPA tries the cuDNN kernel first on CUDA. Entered once around a whole
    network pass (also around compiled blocks, whose kernels are chosen while tracing)."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6 has no priority order; let torch choose
        return contextlib.nullcontext()


def _flash(q, k, v):
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    q16, k16, v16 = (x.to(half) for x in (q, k, v))
    if flash_attn_interface is not None:
        out = flash_attn_interface.flash_attn_func(q16, k16, v16)
        out = out[0] if isinstance(out, tuple) else out
    elif flash_attn is not None:
        out = flash_attn.flash_attn_func(q16, k16, v16)
    else:
        logging.getLogger(__name__).warning("flash-attn is not installed; using SDPA")
        return _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None).transpose(1, 2)
    return out.to(q.dtype)
