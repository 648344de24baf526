"""DiT forward benchmark: our WanModel against diffusers' WanTransformer3DModel, same weights.

Full-size configurations with random weights in bf16 on one GPU (random weights time the same as
real ones). Each case builds our model, times it, frees it, builds the diffusers peer with the very
same weights (generated per key from a fixed seed), times it, and compares the two outputs.

    python bench/bench_dit.py                 # every case
    python bench/bench_dit.py --cases ti2v-121f-704x1280 --variants compile compile+fa3 --repeats 5

Variants (--variants): eager, compile (compiled blocks), compile+chunk (chunked feed-forward),
compile+fa3 (FlashAttention-3; needs flash_attn_interface installed), compile+fp8 (FP8 linears)
and compile+fp8+fa3fp8 (FP8 linears and FA3's fp8 attention). Variants without "fa3" use SDPA.

Prints one markdown table: forward time (mean of timed runs after a warm-up), peak GPU memory
(weights included) and the relative difference between the two outputs.
"""
import argparse
import gc
import os
import sys
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wan.modules.attention import attention_backend, set_attention_backend  # noqa: E402
from wan.modules.convert import diffusers_to_official_keys, official_config_to_diffusers  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402

TI2V_5B = dict(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30)
A14B_T2V = dict(model_type="t2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

# name: (model config, latent [C, T, H, W], first-frame conditioning as in TI2V image mode)
CASES = {
    "ti2v-121f-704x1280": (TI2V_5B, (48, 31, 44, 80), True),
    "ti2v-49f-832x1056": (TI2V_5B, (48, 13, 66, 52), True),
    "a14b-81f-1280x720": (A14B_T2V, (16, 21, 90, 160), False),
}
TEXT_TOKENS = 120


def fill_(model, name_of, device):
    """Deterministic weights keyed by the official parameter name, so both implementations get
    identical tensors without a host round trip."""
    for name, param in model.named_parameters():
        official = name_of(name)
        gen = torch.Generator(device=device).manual_seed(zlib.crc32(official.encode()))
        if param.dim() >= 2:
            fan_in = param[0].numel()
            value = torch.randn(param.shape, generator=gen, device=device) / fan_in ** 0.5
        else:
            value = 0.1 * torch.randn(param.shape, generator=gen, device=device)
            if "norm" in official:
                value += 1
        param.data.copy_(value)


def inputs(latent_shape, first_frame, device):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(latent_shape, generator=gen, device=device)
    context = torch.randn(TEXT_TOKENS, 4096, generator=gen, device=device)
    c, f, h, w = latent_shape
    seq_len = f * (h // 2) * (w // 2)
    t = torch.full((1, seq_len), 937.0, device=device)
    if first_frame:
        t[:, : (h // 2) * (w // 2)] = 0
    return x, context, t, seq_len


def timed(fn, repeats):
    fn()  # warm-up (cuDNN plans, allocator)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return out, sum(times) / len(times)


VARIANTS = {
    "eager": dict(),
    "compile": dict(compile=True),
    "compile+chunk": dict(compile=True, ffn_chunk=8192),
    "compile+fa3": dict(compile=True, attention="flash"),  # needs FlashAttention-3 installed
    "compile+fp8": dict(compile=True, fp8=True),
    "compile+fp8+fa3fp8": dict(compile=True, fp8=True, attention="flash-fp8"),
}


def build(config, device):
    """Our model in bf16 on the GPU with the benchmark's deterministic weights."""
    with torch.device("meta"):
        model = WanModel(**config)
    model = model.to_empty(device=device).requires_grad_(False).eval()
    fill_(model, lambda name: name, device)
    return model.to(torch.bfloat16)


def apply_variant(model, options):
    """Bring the model to a variant's options; returns whether compiled code must retrace (the
    caller warms up again outside its timing). FP8 goes last in a variant list: it replaces the
    linears, so the model cannot go back."""
    retrace = False
    if options.get("fp8") and not getattr(model, "_fp8", False):
        model.quantize_fp8()
        model._fp8 = retrace = True
    if options.get("attention", "sdpa") != attention_backend():
        set_attention_backend(options.get("attention", "sdpa"))
        retrace = True
    if retrace:  # compiled sublayers retrace around the new layers / kernel on their next call
        torch._dynamo.reset()
    if options.get("compile") and not getattr(model, "_compiled", False):
        model.compile_blocks()
        model._compiled = True
    model.set_ffn_chunk(options.get("ffn_chunk"))
    return retrace


def ours(config, x, context, t, seq_len, repeats, device, variants):
    """Time each variant on one model (compiling in place for the compiled ones); returns
    {variant: (output, seconds, peak GB)}."""
    model = build(config, device)
    results = {}
    for variant in variants:
        apply_variant(model, VARIANTS[variant])
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            out, seconds = timed(lambda: model([x], t=t, context=[context], seq_len=seq_len)[0], repeats)
        results[variant] = (out.float().cpu(), seconds, torch.cuda.max_memory_allocated() / 1e9)
    return results


def profile(config, x, context, t, seq_len, device, variant, rows=25):
    """Kernel-level breakdown of one forward of a variant (torch.profiler), printed as a table."""
    model = build(config, device)
    apply_variant(model, VARIANTS[variant])
    with torch.no_grad():
        for _ in range(2):  # compile, then warm
            model([x], t=t, context=[context], seq_len=seq_len)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model([x], t=t, context=[context], seq_len=seq_len)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))
    del model
    gc.collect()
    torch.cuda.empty_cache()


def attention_rate(tokens, heads, device, repeats=5):
    """TFLOP/s of self-attention alone at the DiT's shape: SDPA's default choice, SDPA with cuDNN
    first and, when installed, FlashAttention-3 in bf16 and fp8 (with their deviation from SDPA)."""
    from wan.modules.attention import attention, flash_attention_3_installed, sdpa_preferences

    q, k, v = (torch.randn(1, tokens, heads, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * tokens * tokens * 128 * heads
    rates = {}
    with sdpa_preferences(device):
        exact, seconds = timed(lambda: attention(q, k, v, backend="sdpa"), repeats)
    rates["cudnn-first"] = flops / seconds / 1e12
    _, seconds = timed(lambda: attention(q, k, v, backend="sdpa"), repeats)
    rates["default"] = flops / seconds / 1e12
    if flash_attention_3_installed():
        for name in ("flash", "flash-fp8"):
            out, seconds = timed(lambda: attention(q, k, v, backend=name), repeats)
            deviation = ((out.float() - exact.float()).norm() / exact.float().norm()).item()
            rates[f"fa3 {name} (rel. diff {deviation:.1e})"] = flops / seconds / 1e12
    return rates


def peer(config, x, context, t, repeats, device):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        probe = WanModel(**config)
        model = WanTransformer3DModel(**official_config_to_diffusers(probe))
    names = {d: o for o, d in diffusers_to_official_keys({k: k for k in model.state_dict()}).items()}
    model = model.to_empty(device=device).requires_grad_(False).eval()
    fill_(model, names.__getitem__, device)
    model.to(torch.bfloat16)
    for name, module in model.named_modules():  # what from_pretrained(torch_dtype=bf16) keeps in fp32
        if any(part in name.split(".") for part in model._keep_in_fp32_modules):
            module.float()
    model.scale_shift_table.data = model.scale_shift_table.data.float()
    for block in model.blocks:
        block.scale_shift_table.data = block.scale_shift_table.data.float()
    padded = torch.nn.functional.pad(context, (0, 0, 0, 512 - context.shape[0]))[None].to(torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out, seconds = timed(lambda: model(x[None].to(torch.bfloat16), timestep=t, encoder_hidden_states=padded,
                                           return_dict=False)[0][0], repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9
    out = out.float().cpu()
    return out, seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--variants", nargs="*", default=["eager"], choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_peer", action="store_true", help="time only our model")
    parser.add_argument("--profile", action="store_true", help="print a kernel breakdown of each case (last variant)")
    parser.add_argument("--attention", action="store_true", help="time attention alone at each case's shape")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__}")
    header = ("| case | variant | tokens | ours s | ours peak GB | diffusers s | diffusers peak GB | speed-up "
              "| rel. diff |")
    print(header)
    print("|---" * 9 + "|")
    for name in args.cases:
        config, latent_shape, first_frame = CASES[name]
        x, context, t, seq_len = inputs(latent_shape, first_frame, device)
        if args.attention:
            rates = attention_rate(seq_len, config["num_heads"], device)
            print(f"attention {name}: " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in rates.items()), flush=True)
        if args.profile:
            profile(config, x, context, t, seq_len, device, args.variants[-1])
        repeats = max(1, args.repeats if config is TI2V_5B else min(args.repeats, 2))
        results = ours(config, x, context, t, seq_len, repeats, device, args.variants)
        gc.collect()
        torch.cuda.empty_cache()
        ref = None
        if not args.skip_peer:
            ref, ref_seconds, ref_peak = peer(config, x, context, t, repeats, device)
            gc.collect()
            torch.cuda.empty_cache()
        for variant, (out, seconds, peak) in results.items():
            row = f"| {name} | {variant} | {seq_len} | {seconds:.3f} | {peak:.1f} |"
            if ref is None:
                eager = results[args.variants[0]][0]
                diff = ((out - eager).norm() / eager.norm()).item()
                print(row + f" - | - | - | {diff:.2e} vs {args.variants[0]} |", flush=True)
                continue
            diff = ((out - ref).norm() / ref.norm()).item()
            print(row + f" {ref_seconds:.3f} | {ref_peak:.1f} | {ref_seconds / seconds:.2f}x | {diff:.2e} |",
                  flush=True)


if __name__ == "__main__":
    main()
