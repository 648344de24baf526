"""FP8 linear layers (opt-in, inexact): weights in float8 e4m3 with one scale per output channel,
activations quantised per token at run time, products through torch._scaled_mm (Hopper's FP8
tensor cores) on CUDA and the same products in fp32 on the CPU. Halves linear-layer weight memory
and roughly doubles their matmul rate; the deviation from bf16 is measured, not assumed
(tests/test_model.py, docs/PERFORMANCE.md)."""
import torch
import torch.nn as nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def _rowwise(x):
    """(x / scale in fp8, scale) with one scale per row, so each row uses the whole fp8 range."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


class FP8Linear(nn.Module):
    def __init__(self, linear):
        super().__init__()
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)  # [out, in]
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.out_dtype = torch.bfloat16 if linear.weight.dtype == torch.float32 else linear.weight.dtype

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        quantised, scale = _rowwise(rows)
        if rows.is_cuda:
            out = torch._scaled_mm(quantised, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                                   out_dtype=self.out_dtype)
        else:  # the CPU _scaled_mm takes only per-tensor scales in torch 2.11; fp8 values are exact in fp32
            out = ((quantised.float() @ self.weight_fp8.float().t()) * scale * self.weight_scale).to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def quantize_linears_(module):
    """Replace every nn.Linear below `module` by an FP8Linear, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, FP8Linear(child))
        else:
            quantize_linears_(child)
    return module
