"""Weights stored quantised, and the linear layers that keep them quantised until a forward.

A reader returns a `QuantizedWeight` (not a torch.Tensor) for every tensor it cannot hand over as
plain floats: code that expects a state dict of tensors then fails loudly instead of using the raw
bytes or forgetting a scale. `dequantize(dtype)` gives the float tensor; `as_linear(bias)` gives a
module that keeps the stored form and dequantises one layer at a time, in each forward, so a
quantised model is never materialised in full precision.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError

FP8_FORMATS = (torch.float8_e4m3fn, torch.float8_e5m2)


class QuantizedWeight:
    """A weight in a stored quantised form. Subclasses set `shape` (the logical torch shape),
    `kind` (a short name for logs) and implement `dequantize` and `as_linear`."""

    shape: torch.Size
    kind: str

    def dequantize(self, dtype=torch.float32, device=None):
        raise NotImplementedError

    def as_linear(self, bias):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.kind}, shape={list(self.shape)})"


class ScaledFP8Weight(QuantizedWeight):
    """float8 values times one fp32 scale per tensor (ComfyUI's "fp8_scaled" convention); a plain
    fp8 cast is the same with scale 1."""

    def __init__(self, data, scale):
        if data.dtype not in FP8_FORMATS:
            raise CheckpointError(f"fp8 weight expected, got {data.dtype}")
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if scale.numel() != 1:
            raise CheckpointError(
                f"only one scale per fp8 tensor is supported, got a scale of shape {list(scale.shape)}")
        self.data, self.scale = data, scale.reshape(())
        self.shape = data.shape
        self.kind = f"{str(data.dtype).removeprefix('torch.')} x scale"

    def dequantize(self, dtype=torch.float32, device=None):
        data = self.data if device is None else self.data.to(device)
        return (data.float() * self.scale.to(data.device)).to(dtype)

    def as_linear(self, bias):
        return ScaledFP8Linear(self.data, self.scale, bias)


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W dequantised, in x's dtype, at every call. Subclasses hold the stored
    form as buffers (so `.to(device)` moves it) and implement `weight_as(dtype)`."""

    def __init__(self, in_features, out_features, bias):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def weight_as(self, dtype):
        raise NotImplementedError

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight_as(x.dtype), bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ScaledFP8Linear(QuantizedLinear):
    def __init__(self, data, scale, bias):
        super().__init__(data.shape[1], data.shape[0], bias)
        self.register_buffer("weight_fp8", data)
        self.register_buffer("weight_scale", torch.as_tensor(scale, dtype=torch.float32).reshape(()))

    def weight_as(self, dtype):
        # Dequantised in fp32, then rounded once to the compute dtype.
        return (self.weight_fp8.float() * self.weight_scale).to(dtype)

    def to_fp8_matmul(self, out_dtype=torch.bfloat16):
        """This layer as a `wan.modules.fp8.FP8Linear` (float8 matmuls on Hopper) with the same
        stored bytes: the per-tensor scale becomes the per-channel scale of every row, which is
        exact. Only e4m3 weights qualify (FP8Linear's format)."""
        from ..modules.fp8 import FP8, FP8Linear

        if self.weight_fp8.dtype != FP8:
            raise CheckpointError(f"fp8 matmuls need {FP8} weights, this layer stores {self.weight_fp8.dtype}")
        with torch.device("meta"):  # the constructor quantises a weight; build it on no memory
            shell = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        layer = FP8Linear(shell)
        layer.weight_fp8 = self.weight_fp8
        layer.weight_scale = self.weight_scale.expand(1, self.out_features).contiguous()
        layer.bias = self.bias
        layer.out_dtype = out_dtype
        return layer


def swap_in_fp8_matmuls_(module, out_dtype=torch.bfloat16):
    """Replace every ScaledFP8Linear below `module` by an FP8Linear with the same bytes, in place."""
    for name, child in module.named_children():
        if isinstance(child, ScaledFP8Linear):
            setattr(module, name, child.to_fp8_matmul(out_dtype))
        else:
            swap_in_fp8_matmuls_(child, out_dtype)
    return module
