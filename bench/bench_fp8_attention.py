"""Experiment: can FP8 attention reach the A14B FP8 target? A Triton flash-attention kernel with
q, k and v in float8 e4m3 (one scale per sample and head, P rounded to fp8 for P @ V, as
FlashAttention-3's FP8 path does), timed against SDPA (cuDNN) at the DiT's shapes, with its
deviation from exact attention. Not part of the package: at 682 TFLOP/s it is 1.2x cuDNN's bf16
kernel at 75,600 tokens and slower at 27,280, short of the ~1,000 TFLOP/s the 8 s target needs
(docs/PERFORMANCE.md).

    python bench/bench_fp8_attention.py
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dit import timed  # noqa: E402

from wan.modules.fp8 import FP8, FP8_MAX  # noqa: E402

LOG2E = 1.4426950408889634


def _per_head_scale(x):
    """[B, L, H, D] -> one fp32 scale per (sample, head), [B, 1, H, 1], mapping |x| max to FP8_MAX."""
    return x.abs().amax(dim=(1, 3), keepdim=True).float().clamp_min(1e-12) / FP8_MAX


def quantize(x):
    scale = _per_head_scale(x)
    return (x.float() / scale).to(FP8), scale


def fp8_attention_reference(q, k, v):
    """The same quantisation in plain torch: quantised q, k, v and fp8-rounded probabilities.
    Materialises the [L, L] scores, so only for short slices."""
    (q8, qs), (k8, ks), (v8, vs) = quantize(q), quantize(k), quantize(v)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q8, k8, v8))  # [B, H, L, D]
    scale = (qs * ks).transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, H, 1, 1]
    scores = qf @ kf.transpose(-1, -2) * scale
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    denom = probs.sum(-1, keepdim=True)
    out = probs.to(FP8).float() @ vf / denom * vs.transpose(1, 2)
    return out.transpose(1, 2).to(q.dtype)


@triton.jit
def _fp8_attention_kernel(Q, K, VT, O, QK_SCALE, V_SCALE, seq_q, seq_k, num_heads,
                          sqb, sql, sqh, skb, skl, skh, svb, svh, svd, sob, sol, soh,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: BLOCK_M queries of one (sample, head) against every key, online softmax
    in base 2. VT holds v transposed ([B, H, D, Lk]): the fp8 tensor-core product needs
    its right operand contiguous along the reduced (key) axis."""
    block = tl.program_id(0)
    pair = tl.program_id(1)
    b = pair // num_heads
    h = pair % num_heads
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sql + dims[None, :], mask=rows[:, None] < seq_q,
                other=0.0)
    qk_scale = tl.load(QK_SCALE + pair)  # q scale * k scale * log2(e) / sqrt(D)
    k_ptrs = K + b * skb + h * skh + cols[None, :] * skl + dims[:, None]  # [D, N]
    v_ptrs = VT + b * svb + h * svh + dims[:, None] * svd + cols[None, :]  # [D, N]
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    full = seq_k // BLOCK_N
    for _ in tl.range(0, full):
        scores = tl.dot(q, tl.load(k_ptrs)) * qk_scale
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.math.exp2(scores - new_max[:, None])
        alpha = tl.math.exp2(row_max - new_max)
        row_sum = row_sum * alpha + tl.sum(probs, 1)
        acc = tl.dot(probs.to(tl.float8e4nv), tl.trans(tl.load(v_ptrs)), acc * alpha[:, None])
        row_max = new_max
        k_ptrs += BLOCK_N * skl
        v_ptrs += BLOCK_N
    if full * BLOCK_N < seq_k:  # the last, partial block of keys
        valid = full * BLOCK_N + cols < seq_k
        scores = tl.dot(q, tl.load(k_ptrs, mask=valid[None, :], other=0.0)) * qk_scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.math.exp2(scores - new_max[:, None])
        alpha = tl.math.exp2(row_max - new_max)
        row_sum = row_sum * alpha + tl.sum(probs, 1)
        vt = tl.load(v_ptrs, mask=valid[None, :], other=0.0)
        acc = tl.dot(probs.to(tl.float8e4nv), tl.trans(vt), acc * alpha[:, None])
    out = acc * (tl.load(V_SCALE + pair) / row_sum)[:, None]
    tl.store(O + b * sob + h * soh + rows[:, None] * sol + dims[None, :], out.to(O.dtype.element_ty),
             mask=rows[:, None] < seq_q)


KERNEL_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)


def fp8_attention(q, k, v, config=None):
    """q: [B, Lq, H, D], k and v: [B, Lk, H, D] (CUDA); returns [B, Lq, H, D] in q's dtype."""
    config = dict(KERNEL_CONFIG, **(config or {}))
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    (q8, qs), (k8, ks) = quantize(q), quantize(k)
    vs = _per_head_scale(v)
    padded = triton.cdiv(seq_k, 16) * 16  # 16-byte aligned rows for the transposed fp8 v
    vt = torch.zeros(batch, heads, dim, padded, device=v.device, dtype=FP8)
    vt[..., :seq_k] = (v.float() / vs).to(FP8).permute(0, 2, 3, 1)
    qk_scale = (qs * ks).reshape(batch * heads) * (LOG2E / math.sqrt(dim))
    out = torch.empty_like(q)
    grid = (triton.cdiv(seq_q, config["BLOCK_M"]), batch * heads)
    _fp8_attention_kernel[grid](
        q8, k8, vt, out, qk_scale.contiguous(), vs.reshape(batch * heads).contiguous(), seq_q, seq_k, heads,
        q8.stride(0), q8.stride(1), q8.stride(2), k8.stride(0), k8.stride(1), k8.stride(2),
        vt.stride(0), vt.stride(1), vt.stride(2), out.stride(0), out.stride(1), out.stride(2),
        HEAD_DIM=dim, **config)
    return out


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    print("| tokens x heads | kernel | ms | TFLOP/s | rel. error vs exact |")
    print("|---|---|---|---|---|")
    configs = {"BM128 BN128 w8 s3": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
               "BM128 BN64 w4 s3": dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)}
    for tokens, heads in ((27280, 24), (75600, 40)):
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, tokens, heads, 128, device=device, dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        flops = 4 * tokens * tokens * 128 * heads
        exact, seconds = timed(lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2), 3)
        print(f"| {tokens} x {heads} | SDPA bf16 | {seconds * 1e3:.1f} | {flops / seconds / 1e12:.0f} | - |")
        for name, config in configs.items():
            out, seconds = timed(lambda: fp8_attention(q, k, v, config), 3)
            print(f"| {tokens} x {heads} | Triton fp8 {name} (with quantisation) | {seconds * 1e3:.1f} | "
                  f"{flops / seconds / 1e12:.0f} | {relative(out, exact):.2e} |", flush=True)
        n = 2048  # the kernel against the torch emulation of the same quantisation, on a slice
        emulated = fp8_attention_reference(q[:, :n], k[:, :n], v[:, :n])
        kernel = fp8_attention(q[:, :n], k[:, :n], v[:, :n])
        print(f"| {n} x {heads} | kernel vs emulation | - | - | {relative(kernel, emulated):.2e} |")


if __name__ == "__main__":
    main()
