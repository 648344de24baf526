"""The attention entry point: key padding, backend choice, the FP8 quantisation of the opt-in
"flash-fp8" backend and, on a Hopper GPU with FlashAttention-3 installed, parity with SDPA."""
import pytest
import torch

from wan.modules.attention import (BACKENDS, FA3_MODULES, attention, attention_backend, find_flash_attention_3,
                                   flash_attention_3_installed, flash_attention_3_provider, per_head_fp8,
                                   set_attention_backend)
from wan.modules.fp8 import FP8_MAX


def reference(q, k, v):
    """Plain softmax attention in fp64, [B, L, heads, dim] layout."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2)


def qkv(batch=2, lq=7, lk=11, heads=3, dim=16, seed=0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, heads, dim, generator=gen).to(device, dtype) for n in (lq, lk, lk))


def test_matches_plain_softmax_attention():
    q, k, v = qkv()
    torch.testing.assert_close(attention(q, k, v, backend="sdpa").double(), reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_padded_keys_are_ignored():
    q, k, v = qkv()
    garbage = torch.full_like(k[:, :4], 1e3)
    padded_k, padded_v = torch.cat([k, garbage], 1), torch.cat([v, garbage], 1)
    equal = attention(q, padded_k, padded_v, k_lens=torch.tensor([11, 11]), backend="sdpa")
    torch.testing.assert_close(equal, attention(q, k, v, backend="sdpa"))
    unequal = attention(q, padded_k, padded_v, k_lens=torch.tensor([11, 5]), backend="sdpa")
    torch.testing.assert_close(unequal[0], attention(q[:1], k[:1], v[:1], backend="sdpa")[0])
    torch.testing.assert_close(unequal[1], attention(q[1:], k[1:, :5], v[1:, :5], backend="sdpa")[0])


def test_backend_choice():
    expected_default = "flash" if flash_attention_3_installed() else "sdpa"
    assert attention_backend() == expected_default
    with pytest.raises(ValueError, match="attention backend must be one of"):
        set_attention_backend("xformers")
    assert set(BACKENDS) == {"sdpa", "flash", "flash-fp8"}
    if not flash_attention_3_installed():
        with pytest.raises(ValueError, match="flash-fp8.*FlashAttention-3"):
            set_attention_backend("flash-fp8")
        assert attention_backend() == expected_default


def test_flash_attention_3_comes_from_either_interface_module(tmp_path, monkeypatch):
    """Upstream's flash_attn_interface first, then the PyPI wheel's fa3_fwd_interface; a module that is
    installed but whose kernels cannot load (OSError from the extension, as without a CUDA runtime)
    is passed over instead of failing the import of the whole package."""
    assert FA3_MODULES == ("flash_attn_interface", "fa3_fwd_interface")
    (tmp_path / "wan_test_fa3_broken.py").write_text("raise OSError('libcudart.so.13: cannot open shared object')\n")
    (tmp_path / "wan_test_fa3_wheel.py").write_text("def flash_attn_func(q, k, v):\n    return q\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = find_flash_attention_3(("wan_test_fa3_missing", "wan_test_fa3_broken", "wan_test_fa3_wheel"))
    assert found is not None and found.__name__ == "wan_test_fa3_wheel" and callable(found.flash_attn_func)
    assert find_flash_attention_3(("wan_test_fa3_missing", "wan_test_fa3_broken")) is None
    assert flash_attention_3_provider() in (None, *FA3_MODULES)


def test_flash_backends_leave_cpu_and_fp32_inputs_to_sdpa():
    """On the CPU (and for fp32 on any device) every backend is the exact SDPA path."""
    q, k, v = qkv()
    exact = attention(q, k, v, backend="sdpa")
    for backend in ("flash", "flash-fp8"):
        torch.testing.assert_close(attention(q, k, v, backend=backend), exact, atol=0, rtol=0)


def test_per_head_fp8_uses_the_range_and_dequantises_back():
    q, _, _ = qkv(lq=64, dtype=torch.bfloat16)
    q = q * torch.tensor([0.01, 1.0, 300.0], dtype=torch.bfloat16)[None, None, :, None]  # heads of any size
    quantised, scale = per_head_fp8(q)
    assert quantised.dtype == torch.float8_e4m3fn and scale.shape == (2, 3) and scale.dtype == torch.float32
    peaks = quantised.float().abs().amax(dim=(1, 3))
    assert torch.all(peaks >= 0.99 * FP8_MAX) and torch.all(peaks <= FP8_MAX)
    restored = quantised.float() * scale[:, None, :, None]
    relative = (restored - q.float()).abs() / q.float().abs().amax(dim=(1, 3), keepdim=True)
    assert relative.max() < 2 ** -4  # e4m3 keeps 3 mantissa bits: half a unit is 1/16 of the peak at most


def test_fp8_inputs_deviate_a_little_from_exact_attention():
    """The quantisation `flash-fp8` applies, checked through exact attention on the dequantised inputs."""
    q, k, v = qkv(lq=128, lk=128, heads=4, dim=64, dtype=torch.bfloat16)
    dequantised = [x.float() * s[:, None, :, None] for x, s in (per_head_fp8(t) for t in (q, k, v))]
    exact = reference(q, k, v)
    deviation = (reference(*dequantised) - exact).norm() / exact.norm()
    assert 1e-3 < deviation < 0.08


needs_fa3 = pytest.mark.skipif(not (torch.cuda.is_available() and flash_attention_3_installed()),
                               reason="needs a CUDA GPU with FlashAttention-3 installed")


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@needs_fa3
@pytest.mark.parametrize("backend, tolerance", [("flash", 0.01), ("flash-fp8", 0.08)])
@pytest.mark.parametrize("lq, lk", [(1000, 1500), (4096, 512)])  # self-attention; cross-attention to a padded text
def test_flash_attention_3_matches_sdpa(backend, tolerance, lq, lk):
    """Whichever provider is installed (flash_attn_interface or the fa3-fwd wheel): bf16 within 1% of
    SDPA and of exact attention, fp8 within 8%."""
    q, k, v = qkv(batch=2, lq=lq, lk=lk, heads=4, dim=128, dtype=torch.bfloat16, device="cuda")
    exact = reference(q, k, v).float()
    out = attention(q, k, v, backend=backend)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    sdpa = attention(q, k, v, backend="sdpa")
    assert relative(sdpa, exact) < 0.01
    assert relative(out, exact) < tolerance, (flash_attention_3_provider(), relative(out, exact))
    assert relative(out, sdpa) < tolerance, (flash_attention_3_provider(), relative(out, sdpa))


@needs_fa3
def test_fp16_inputs_run_without_fp16_kernels():
    """The fa3-fwd wheel has no fp16 kernels: fp16 goes to FlashAttention-2 or SDPA, same values."""
    q, k, v = qkv(batch=1, lq=300, lk=200, heads=2, dim=128, dtype=torch.float16, device="cuda")
    out = attention(q, k, v, backend="flash")
    assert out.dtype == torch.float16 and relative(out, reference(q, k, v)) < 0.01


@needs_fa3
def test_flash_attention_3_compiles_in_one_graph():
    q, k, v = qkv(batch=1, lq=256, lk=256, heads=2, dim=128, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, backend="flash") * 2, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention(q, k, v, backend="flash") * 2)

