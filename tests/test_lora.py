"""LoRA: every key variant merges to W + strength * alpha/r * up @ down; run-time LoRA equals the
merge; unload restores the weights bit for bit; unmatched keys are reported; bad files are
one-line errors."""
import pytest
import torch

from wan.errors import CheckpointError, WanInputError
from wan.loading import LoraSpec, apply_lora, apply_loras, build_dit, read_dit
from wan.loading.quantized import ScaledFP8Linear
from wan.loading.sources import Part
from wan.modules.convert import official_to_diffusers_keys
from wan.tools import tiny_formats as tf

RANK = 4
TARGETS = ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.0.ffn.2")


def one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def pair(model, path, seed, rank=RANK):
    weight = model.get_submodule(path).weight
    gen = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, weight.shape[1], generator=gen) * 0.1
    up = torch.randn(weight.shape[0], rank, generator=gen) * 0.1
    return down, up


def variant_keys(path, variant):
    """The (down, up, alpha) key names of `path` in each published naming."""
    if variant == "kohya":  # lora_unet_, dots as underscores
        base = "lora_unet_" + path.replace(".", "_")
        return f"{base}.lora_down.weight", f"{base}.lora_up.weight", f"{base}.alpha"
    if variant == "diffusers":
        renamed = next(iter(official_to_diffusers_keys({f"{path}.weight": None})))[: -len(".weight")]
        return f"transformer.{renamed}.lora_A.weight", f"transformer.{renamed}.lora_B.weight", None
    if variant == "peft_default":
        return f"{path}.lora_A.default.weight", f"{path}.lora_B.default.weight", None
    prefix = {"comfy": "diffusion_model.", "comfy_ab": "diffusion_model.", "full_prefix": "model.diffusion_model."}[variant]
    names = ("lora_A", "lora_B") if variant == "comfy_ab" else ("lora_down", "lora_up")
    return f"{prefix}{path}.{names[0]}.weight", f"{prefix}{path}.{names[1]}.weight", f"{prefix}{path}.alpha"


@pytest.fixture
def model():
    return tf.tiny_dit(seed=5)


@pytest.mark.parametrize("variant", ["comfy", "comfy_ab", "full_prefix", "kohya", "diffusers", "peft_default"])
def test_merged_delta_is_scaled_up_at_down(model, variant):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora, expected = {}, {}
    for seed, path in enumerate(TARGETS):
        down, up = pair(model, path, seed)
        down_key, up_key, alpha_key = variant_keys(path, variant)
        lora[down_key], lora[up_key] = down, up
        scale = 1.0
        if alpha_key is not None:
            lora[alpha_key] = torch.tensor(2.0)
            scale = 2.0 / RANK
        expected[f"{path}.weight"] = 0.7 * scale * (up @ down)
    handle = apply_lora(model, lora, strength=0.7)
    assert sorted(handle.merged) == sorted(expected) and handle.unmatched == []
    after = model.state_dict()
    for key, value in before.items():
        if key in expected:
            torch.testing.assert_close(after[key] - value, expected[key], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(after[key], value), key
    handle.unload()
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key  # bit for bit


def test_full_deltas_diff_diff_b_diff_m_and_head(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    lora = {
        "diffusion_model.blocks.0.norm3.diff": torch.randn(256, generator=gen),
        "diffusion_model.blocks.0.self_attn.q.diff_b": torch.randn(256, generator=gen),
        "diffusion_model.blocks.1.diff_m": torch.randn(1, 6, 256, generator=gen),
        "diffusion_model.head.head.diff": torch.randn(192, 256, generator=gen),
        "diffusion_model.head.head.diff_b": torch.randn(192, generator=gen),
        "diffusion_model.blocks.0.cross_attn.norm_k.diff": torch.randn(256, generator=gen),
    }
    targets = {"blocks.0.norm3.weight": "diffusion_model.blocks.0.norm3.diff",
               "blocks.0.self_attn.q.bias": "diffusion_model.blocks.0.self_attn.q.diff_b",
               "blocks.1.modulation": "diffusion_model.blocks.1.diff_m",
               "head.head.weight": "diffusion_model.head.head.diff",
               "head.head.bias": "diffusion_model.head.head.diff_b",
               "blocks.0.cross_attn.norm_k.weight": "diffusion_model.blocks.0.cross_attn.norm_k.diff"}
    handle = apply_lora(model, lora, strength=0.5)
    after = model.state_dict()
    for target, key in targets.items():
        torch.testing.assert_close(after[target] - before[target], 0.5 * lora[key], rtol=1e-5, atol=1e-6)
    handle.unload()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_merge_in_bf16_goes_through_fp32_once(model):
    model = model.to(torch.bfloat16)
    weight = model.blocks[0].ffn[0].weight
    original = weight.clone()
    down, up = pair(model, "blocks.0.ffn.0", 1)
    handle = apply_lora(model, {"blocks.0.ffn.0.lora_down.weight": down, "blocks.0.ffn.0.lora_up.weight": up})
    assert torch.equal(weight, (original.float() + up @ down).to(torch.bfloat16))
    handle.unload()
    assert torch.equal(weight, original)


def lora_for(model, seed=0):
    lora = {}
    for index, path in enumerate(TARGETS):
        down, up = pair(model, path, seed + index)
        lora[f"diffusion_model.{path}.lora_down.weight"] = down
        lora[f"diffusion_model.{path}.lora_up.weight"] = up
        lora[f"diffusion_model.{path}.alpha"] = torch.tensor(float(RANK) / 2)
    lora["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.full((256,), 0.01)
    return lora


def forward(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return model(x=[torch.randn(48, 1, 4, 4, generator=gen)], t=torch.tensor([500.0]),
                 context=[torch.randn(5, 32, generator=gen)], seq_len=4)[0]


def test_runtime_lora_equals_merged(model):
    lora = lora_for(model)
    plain = forward(model)
    merged = apply_lora(model, lora, strength=0.8)
    merged_out = forward(model)
    merged.unload()
    runtime = apply_lora(model, lora, strength=0.8, mode="runtime")
    assert len(runtime.runtime) == len(TARGETS) and runtime.merged == ["blocks.0.self_attn.q.bias"]
    torch.testing.assert_close(forward(model), merged_out, rtol=1e-4, atol=1e-5)
    runtime.unload()
    assert torch.equal(forward(model), plain)
    assert (merged_out - plain).abs().max() > 1e-3  # the LoRA does change the output


def test_runtime_lora_on_a_quantised_base(tmp_path, model):
    """On fp8 and GGUF bases the LoRA runs beside the quantised layer and equals the merge into the
    dequantised weights."""
    lora = lora_for(model)
    for name, path in (("fp8", tf.save_safetensors(tf.fp8_scaled(model.state_dict()), str(tmp_path / "f.safetensors"))),
                       ("gguf", tf.write_gguf(model.state_dict(), str(tmp_path / "q.gguf"), qtype="Q8_0"))):
        state, config = read_dit(Part("DiT", path, "safetensors" if name == "fp8" else "gguf"))
        quantised = build_dit(state, config, dtype=torch.float32)
        dequantised = build_dit({k: v.dequantize() if hasattr(v, "dequantize") else v for k, v in state.items()},
                                config, dtype=torch.float32)
        with pytest.raises(CheckpointError, match="stored quantised"):
            apply_lora(quantised, lora, mode="merge")
        handle = apply_lora(quantised, lora)  # auto: run time for the quantised linears
        assert len(handle.runtime) == len(TARGETS)
        apply_lora(dequantised, lora)
        torch.testing.assert_close(forward(quantised), forward(dequantised), rtol=1e-4, atol=1e-5)
        handle.unload()
        if name == "fp8":
            assert isinstance(quantised.blocks[0].self_attn.q, ScaledFP8Linear)


def test_unmatched_keys_are_reported_not_dropped(model, caplog):
    lora = lora_for(model)
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros(RANK, 256)
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.zeros(256, RANK)
    lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(RANK, 8)
    with caplog.at_level("WARNING"):
        handle = apply_lora(model, lora)
    assert sorted(handle.unmatched) == sorted(k for k in lora if "k_img" in k or k.startswith("lora_te"))
    assert "3 keys fit no layer" in caplog.text


def test_bad_loras_are_one_line_errors(model):
    with pytest.raises(CheckpointError) as err:  # an SD-style LoRA: nothing fits
        apply_lora(model, {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)})
    assert "another architecture" in one_line(err)
    wide = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, 5120),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, RANK)}
    with pytest.raises(CheckpointError) as err:  # a 14B LoRA on this model
        apply_lora(model, wide)
    assert "another model size" in one_line(err)
    ranks = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256),
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(256, 8)}
    with pytest.raises(CheckpointError) as err:
        apply_lora(model, ranks)
    assert "rank mismatch" in one_line(err)
    half = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256)}
    with pytest.raises(CheckpointError) as err:
        apply_lora(model, half)
    assert "half of its LoRA pair" in one_line(err)


def test_unload_order_is_enforced(model):
    before = model.blocks[0].self_attn.q.weight.clone()
    first = apply_lora(model, lora_for(model, 0))
    second = apply_lora(model, lora_for(model, 7))
    with pytest.raises(WanInputError):
        first.unload()
    second.unload()
    first.unload()
    assert torch.equal(model.blocks[0].self_attn.q.weight, before)


def test_per_expert_routing(tmp_path):
    high, low = tf.tiny_dit("t2v", 16, 16, seed=1), tf.tiny_dit("t2v", 16, 16, seed=2)
    high_before, low_before = high.blocks[0].ffn[2].weight.clone(), low.blocks[0].ffn[2].weight.clone()
    lora = lora_for(high)
    path = tf.save_safetensors(lora, str(tmp_path / "lightning_HIGH_fp16.safetensors"))
    spec = LoraSpec.parse(f"{path}:0.5", expert="high")
    assert spec.strength == 0.5 and spec.source == path
    handles = apply_loras({"high": high, "low": low}, [spec])
    assert len(handles) == 1 and handles[0].model is high
    assert not torch.equal(high.blocks[0].ffn[2].weight, high_before)
    assert torch.equal(low.blocks[0].ffn[2].weight, low_before)
    both = apply_loras({"high": high, "low": low}, [LoraSpec(path, 1.0, "all")])
    assert [h.model for h in both] == [high, low]
    with pytest.raises(WanInputError):
        apply_loras({"main": high}, [LoraSpec(path, 1.0, "low")])
