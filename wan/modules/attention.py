"""One attention entry point for the DiT's self- and cross-attention (and its Ulysses wrapper).

Layout follows the DiT: q [B, Lq, heads, head_dim], k and v [B, Lk, heads, head_dim]. Backends:
- "sdpa" (the default without FlashAttention-3): torch's scaled_dot_product_attention. Inside
  `sdpa_preferences` the cuDNN kernel is put first on CUDA; docs/PERFORMANCE.md has the attention
  rates measured with each kernel choice at Wan's sequence lengths.
- "flash": FlashAttention-3 or, without it, FlashAttention-2 (flash_attn). The default when
  FlashAttention-3 is installed: on an H200 it is faster than cuDNN at Wan's shapes
  (docs/PERFORMANCE.md). fp32 inputs still go through SDPA, so fp32 runs stay fp32.
  FlashAttention-3 comes from either of two providers with the same `flash_attn_func`: upstream's
  `flash_attn_interface` (built from Dao-AILab/flash-attention's hopper/ folder) or the PyPI wheel
  `fa3-fwd` (module `fa3_fwd_interface`: prebuilt forward kernels for Hopper, bf16 and fp8 only;
  fp16 inputs then go to FlashAttention-2 or SDPA).
- "flash-fp8" (opt-in, inexact): FlashAttention-3 with q, k and v in float8 e4m3, one scale per
  sample and head; its deviation from exact attention is measured in docs/PERFORMANCE.md.
"""
import contextlib
import functools
import importlib
import logging

import torch
import torch.nn.functional as F

from .fp8 import FP8, FP8_MAX

# FlashAttention-3 providers, in order of preference; the wheel without fp16 kernels is named in
# FA3_WITHOUT_FP16.
FA3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")
FA3_WITHOUT_FP16 = ("fa3_fwd_interface",)


def find_flash_attention_3(names=FA3_MODULES):
    """The first FlashAttention-3 interface module among `names` that imports, or None. A module
    that is installed but cannot load (no CUDA runtime, a wheel built for another torch) counts as
    absent: importing the kernels' extension raises OSError or ImportError then."""
    for name in names:
        try:
            return importlib.import_module(name)
        except (ImportError, OSError):
            continue
    return None


flash_attn_interface = find_flash_attention_3()
try:
    import flash_attn  # FlashAttention-2
except ImportError:
    flash_attn = None

BACKENDS = ("sdpa", "flash", "flash-fp8")
_default_backend = "flash" if flash_attn_interface is not None else "sdpa"


def set_attention_backend(name):
    """Choose the backend used when `attention(..., backend=None)`."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    if name == "flash" and flash_attn_interface is None and flash_attn is None:
        raise ValueError("attention backend 'flash' needs flash-attn installed (FlashAttention-3: "
                         f"{' or '.join(FA3_MODULES)}; or FlashAttention-2: flash_attn)")
    if name == "flash-fp8" and flash_attn_interface is None:
        raise ValueError(f"attention backend 'flash-fp8' needs FlashAttention-3 installed ({' or '.join(FA3_MODULES)}; "
                         "the PyPI wheel fa3-fwd provides it on Hopper GPUs)")
    _default_backend = name


def flash_attention_3_installed():
    return flash_attn_interface is not None


def flash_attention_3_provider():
    """The module name FlashAttention-3 comes from (see FA3_MODULES), or None."""
    return None if flash_attn_interface is None else flash_attn_interface.__name__


def _fa3_takes(dtype):
    return flash_attn_interface is not None and (
        dtype == torch.bfloat16 or flash_attn_interface.__name__ not in FA3_WITHOUT_FP16)


def attention_backend():
    """The backend `attention(..., backend=None)` uses."""
    return _default_backend


def attention(q, k, v, k_lens=None, backend=None):
    """Softmax attention with scale 1/sqrt(head_dim), non-causal.

    k_lens: optional int tensor [B]; keys at positions >= k_lens[b] are ignored for sample b.
    Returns [B, Lq, heads, head_dim] in q's dtype."""
    backend = backend or _default_backend
    k, v, mask = _restrict_keys(k, v, k_lens)
    if backend != "sdpa" and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return _flash_fp8(q, k, v) if backend == "flash-fp8" else _flash(q, k, v)
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
    if _fa3_takes(half):
        out = flash_attn_interface.flash_attn_func(q16, k16, v16)
        out = out[0] if isinstance(out, tuple) else out
    elif flash_attn is not None:
        out = flash_attn.flash_attn_func(q16, k16, v16)
    else:
        _warn_once(f"no FlashAttention kernel for {half} inputs is installed; using SDPA")
        return _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None).transpose(1, 2)
    return out.to(q.dtype)


@functools.lru_cache(maxsize=None)
def _warn_once(message):
    """Logged once per process: the fallback would otherwise be reported by every layer at every step."""
    logging.getLogger(__name__).warning(message)


def per_head_fp8(x):
    """x [B, L, heads, head_dim] -> (x / scale in e4m3, scale [B, heads] fp32), so each sample's head
    uses the whole fp8 range. The division is a multiplication by a reciprocal rounded to x's dtype,
    and the returned scale is that reciprocal's exact inverse, so dequantising undoes it."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp_min(1e-12)  # [B, heads]
    inverse = (FP8_MAX / amax).to(x.dtype)
    return (x * inverse[:, None, :, None]).to(FP8), 1.0 / inverse.float()


def _flash_fp8(q, k, v):
    (q8, q_scale), (k8, k_scale), (v8, v_scale) = (per_head_fp8(x) for x in (q, k, v))
    out = flash_attn_interface.flash_attn_func(q8, k8, v8, q_descale=q_scale, k_descale=k_scale, v_descale=v_scale)
    out = out[0] if isinstance(out, tuple) else out
    return out.to(q.dtype)
