"""GGUF files (city96 / QuantStack Wan DiTs, city96's umt5 encoder) read through the `gguf` package.

Quantised tensors stay in their stored blocks (`GGUFWeight`, a uint8 tensor of rows of blocks) and
are dequantised in torch, on whatever device they sit, by the functions below, one layer per
forward (`GGUFLinear`). Float tensors (F32, F16, BF16) come back as torch tensors. The block layouts
follow ggml; tests compare every type against the `gguf` package's own numpy dequantisation.
"""
import numpy as np
import torch

from ..errors import CheckpointError
from .quantized import QuantizedLinear, QuantizedWeight

QK_K = 256  # elements per super-block of the K-quants


def _gguf():
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading GGUF files needs the `gguf` package (pip install gguf)") from None
    return gguf


# ---------------------------------------------------------------------------------- dequantisation
# Each function takes blocks [n, bytes_per_block] (uint8) and returns [n, elements_per_block] fp32.

def _half(raw):
    """Little-endian fp16 fields [n, 2] -> fp32 [n, 1]."""
    return raw.contiguous().view(torch.float16).float()


def _bit_planes(raw, shifts, mask):
    """raw [n, ..., k] uint8 -> [n, ..., len(shifts), k]: (raw >> shift) & mask for every shift."""
    shifts = torch.tensor(shifts, dtype=torch.uint8, device=raw.device).view(-1, 1)
    return (raw.unsqueeze(-2) >> shifts) & mask


def _nibbles(raw):
    """[n, k] -> [n, 2k]: the low nibbles of all bytes, then the high nibbles (ggml's order)."""
    return _bit_planes(raw, (0, 4), 0x0F).flatten(-2)


def _high_bits(raw):
    """[n, 4] bytes holding 32 bits (a little-endian uint32) -> [n, 32] values 0/1."""
    return _bit_planes(raw, range(8), 1).transpose(-1, -2).flatten(-2)


def _q8_0(blocks):
    d, q = blocks.split([2, 32], dim=1)
    return _half(d) * q.contiguous().view(torch.int8).float()


def _q4_0(blocks):
    d, qs = blocks.split([2, 16], dim=1)
    return _half(d) * (_nibbles(qs).float() - 8)


def _q4_1(blocks):
    d, m, qs = blocks.split([2, 2, 16], dim=1)
    return _half(d) * _nibbles(qs).float() + _half(m)


def _q5_0(blocks):
    d, qh, qs = blocks.split([2, 4, 16], dim=1)
    q = _nibbles(qs) | (_high_bits(qh) << 4)
    return _half(d) * (q.float() - 16)


def _q5_1(blocks):
    d, m, qh, qs = blocks.split([2, 2, 4, 16], dim=1)
    q = _nibbles(qs) | (_high_bits(qh) << 4)
    return _half(d) * q.float() + _half(m)


def _q2_k(blocks):
    n = blocks.shape[0]
    scales, qs, d, dmin = blocks.split([16, 64, 2, 2], dim=1)
    dl = (_half(d) * (scales & 0x0F).float()).view(n, 16, 1)
    ml = (_half(dmin) * (scales >> 4).float()).view(n, 16, 1)
    q = _bit_planes(qs.view(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(blocks):
    n = blocks.shape[0]
    hmask, qs, packed, d = blocks.split([32, 64, 12, 2], dim=1)
    low = _nibbles(packed[:, :8])  # low 4 bits of the 16 scales
    high = _bit_planes(packed[:, 8:], (0, 2, 4, 6), 3).flatten(-2)  # their top 2 bits
    scales = ((low | (high << 4)).to(torch.int16) - 32).float()
    dl = (_half(d) * scales).view(n, 16, 1)
    q_low = _bit_planes(qs.view(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16).to(torch.int16)
    q_high = _bit_planes(hmask, range(8), 1).reshape(n, 16, 16).to(torch.int16)
    q = q_low - 4 * (1 - q_high)  # a set mask bit means no offset
    return (dl * q.float()).reshape(n, QK_K)


def _k_scales(packed):
    """The 8 six-bit scales and 8 six-bit mins of a Q4_K / Q5_K block from its 12 packed bytes."""
    d, m, md = packed.view(-1, 3, 4).unbind(1)
    scales = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scales.float(), mins.float()


def _q4_k(blocks):
    n = blocks.shape[0]
    d, dmin, packed, qs = blocks.split([2, 2, 12, 128], dim=1)
    scales, mins = _k_scales(packed)
    q = _bit_planes(qs.view(n, 4, 32), (0, 4), 0x0F).reshape(n, 8, 32).float()
    return ((_half(d) * scales).unsqueeze(-1) * q - (_half(dmin) * mins).unsqueeze(-1)).reshape(n, QK_K)


def _q5_k(blocks):
    n = blocks.shape[0]
    d, dmin, packed, qh, qs = blocks.split([2, 2, 12, 32, 128], dim=1)
    scales, mins = _k_scales(packed)
    q_low = _bit_planes(qs.view(n, 4, 32), (0, 4), 0x0F).reshape(n, 8, 32)
    q_high = _bit_planes(qh, range(8), 1)  # [n, 8, 32]
    q = (q_low | (q_high << 4)).float()
    return ((_half(d) * scales).unsqueeze(-1) * q - (_half(dmin) * mins).unsqueeze(-1)).reshape(n, QK_K)


def _q6_k(blocks):
    n = blocks.shape[0]
    ql, qh, scales, d = blocks.split([128, 64, 16, 2], dim=1)
    dl = (_half(d) * scales.contiguous().view(torch.int8).float()).view(n, 16, 1)
    q_low = _bit_planes(ql.view(n, 2, 64), (0, 4), 0x0F).reshape(n, 8, 32)
    q_high = _bit_planes(qh.view(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 8, 32)
    q = ((q_low | (q_high << 4)).to(torch.int16) - 32).float().view(n, 16, 16)
    return (dl * q).reshape(n, QK_K)


def _bf16(blocks):
    return blocks.contiguous().view(torch.bfloat16).float()


# name -> (function, elements per block, bytes per block)
DEQUANTIZERS = {
    "BF16": (_bf16, 1, 2),
    "Q8_0": (_q8_0, 32, 34),
    "Q4_0": (_q4_0, 32, 18),
    "Q4_1": (_q4_1, 32, 20),
    "Q5_0": (_q5_0, 32, 22),
    "Q5_1": (_q5_1, 32, 24),
    "Q2_K": (_q2_k, QK_K, 84),
    "Q3_K": (_q3_k, QK_K, 110),
    "Q4_K": (_q4_k, QK_K, 144),
    "Q5_K": (_q5_k, QK_K, 176),
    "Q6_K": (_q6_k, QK_K, 210),
}
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16}


def dequantize(raw, qtype, shape, dtype=torch.float32):
    """Stored bytes (uint8, any shape holding whole blocks) of GGML type name `qtype` -> a `shape`
    tensor in `dtype`, computed on raw's device."""
    function, per_block, block_bytes = DEQUANTIZERS[qtype]
    blocks = raw.reshape(-1, block_bytes)
    return function(blocks).reshape(shape).to(dtype)


class GGUFWeight(QuantizedWeight):
    """A quantised GGUF tensor: its bytes as a uint8 tensor, its GGML type and its torch shape."""

    def __init__(self, raw, qtype, shape):
        self.raw, self.qtype, self.shape = raw, qtype, torch.Size(shape)
        self.kind = qtype

    def dequantize(self, dtype=torch.float32, device=None):
        raw = self.raw if device is None else self.raw.to(device)
        return dequantize(raw, self.qtype, self.shape, dtype)

    def as_linear(self, bias):
        if len(self.shape) != 2:
            raise CheckpointError(f"a {self.qtype} tensor of shape {list(self.shape)} cannot be a linear weight")
        return GGUFLinear(self.raw, self.qtype, self.shape, bias)


class GGUFLinear(QuantizedLinear):
    """A linear layer keeping its GGUF blocks; dequantised on its device in each forward."""

    def __init__(self, raw, qtype, shape, bias):
        super().__init__(shape[1], shape[0], bias)
        self.qtype = qtype
        self.register_buffer("weight_blocks", raw)

    def weight_as(self, dtype):
        return dequantize(self.weight_blocks, self.qtype, (self.out_features, self.in_features), dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, qtype={self.qtype}"


# ---------------------------------------------------------------------------------- reading files

def read_gguf(path):
    """(tensors, metadata) of a GGUF file: name -> torch tensor (float types) or GGUFWeight
    (quantised types), in torch shape order; metadata: the string and number fields.

    The file is memory-mapped; tensors share its pages until moved or converted."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path, mode="c")  # copy-on-write: writable arrays, no copy
    except Exception as exc:  # truncated or not a GGUF file
        raise CheckpointError(f"GGUF file {path} could not be read: {exc.__class__.__name__}: {exc}") from None
    tensors = {}
    for tensor in reader.tensors:
        qtype = gguf.GGMLQuantizationType(tensor.tensor_type).name
        shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists the fastest axis first
        data = np.asarray(tensor.data)
        if qtype in FLOAT_TYPES:
            value = torch.from_numpy(data).reshape(shape)
            if value.dtype != FLOAT_TYPES[qtype]:
                raise CheckpointError(f"GGUF file {path}: tensor {tensor.name} is marked {qtype} but holds {value.dtype}")
        elif qtype in DEQUANTIZERS:
            _, per_block, block_bytes = DEQUANTIZERS[qtype]
            if shape[-1] % per_block or data.nbytes != int(np.prod(shape)) // per_block * block_bytes:
                raise CheckpointError(f"GGUF file {path}: tensor {tensor.name} ({qtype}, {list(shape)}) has "
                                      f"{data.nbytes} bytes, which is not whole {qtype} blocks")
            raw = torch.from_numpy(data.view(np.uint8)).reshape(shape[:-1] + (-1,))
            if qtype == "BF16":  # a float type that numpy lacks: stored as bytes, viewed in torch
                value = raw.view(torch.bfloat16).reshape(shape)
            else:
                value = GGUFWeight(raw, qtype, shape)
        else:
            supported = ", ".join(sorted(FLOAT_TYPES) + sorted(DEQUANTIZERS))
            raise CheckpointError(f"GGUF file {path}: tensor {tensor.name} has type {qtype}; supported: {supported}")
        tensors[tensor.name] = value
    return tensors, _metadata(reader)


def _metadata(reader):
    """Scalar and string key/value fields (arrays such as tokenizer vocabularies are skipped)."""
    gguf = _gguf()
    fields = {}
    for name, field in reader.fields.items():
        if len(field.types) != 1 or not field.data:
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.STRING:
            fields[name] = bytes(field.parts[field.data[-1]]).decode("utf-8", errors="replace")
        elif kind != gguf.GGUFValueType.ARRAY:
            fields[name] = field.parts[field.data[-1]].tolist()[0]
    return fields


# llama.cpp's names for the T5 encoder -> Hugging Face UMT5 names (city96's umt5-xxl GGUF files).
T5_GGUF_NAMES = (
    ("enc.blk.", "encoder.block."),
    ("token_embd", "shared"),
    ("enc.output_norm", "encoder.final_layer_norm"),
    (".attn_q.", ".layer.0.SelfAttention.q."),
    (".attn_k.", ".layer.0.SelfAttention.k."),
    (".attn_v.", ".layer.0.SelfAttention.v."),
    (".attn_o.", ".layer.0.SelfAttention.o."),
    (".attn_rel_b.", ".layer.0.SelfAttention.relative_attention_bias."),
    (".attn_norm.", ".layer.0.layer_norm."),
    (".ffn_gate.", ".layer.1.DenseReluDense.wi_0."),
    (".ffn_up.", ".layer.1.DenseReluDense.wi_1."),
    (".ffn_down.", ".layer.1.DenseReluDense.wo."),
    (".ffn_norm.", ".layer.1.layer_norm."),
)


def t5_gguf_to_hf_name(name):
    for old, new in T5_GGUF_NAMES:
        name = name.replace(old, new)
    return name
