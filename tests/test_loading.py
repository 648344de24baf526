"""wan.loading: every checkpoint layout loads to the official tensors.

Each format is written by independent means where one exists (diffusers' save_pretrained, the
gguf package's writer and quantiser, hand-built ComfyUI files) from known official tensors, and
what the readers return is compared with those tensors key for key, and numerically.
"""
import json
import os

import numpy as np
import pytest
import torch

from wan.configs import WAN_CONFIGS
from wan.errors import CheckpointError
from wan.loading import build_dit, build_t5, build_vae, check_dit_for_task, locate, read_dit, read_t5, read_vae
from wan.loading import tokenizer_folder
from wan.loading.diffusers import official_vae_to_diffusers, vae_name_table
from wan.loading.gguf import DEQUANTIZERS, GGUFLinear, dequantize
from wan.loading.quantized import ScaledFP8Linear, ScaledFP8Weight
from wan.loading.sources import Part
from wan.modules import vae2_1, vae2_2
from wan.modules.model import WanModel
from wan.tools import tiny_formats as tf
from wan.tools.randomize import randomize_
from wan.tools.tiny_t5 import T5_CHECKPOINT_NAME, T5_TOKENIZER_NAME, write_tiny_t5

gguf = pytest.importorskip("gguf")  # a declared dependency; named here so a missing install reads clearly

MANIFESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests")


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def assert_same_tensors(ours, reference):
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        assert ours[key].shape == value.shape, key
        assert torch.equal(ours[key].to(value.dtype), value), key


def manifest(name):
    with open(os.path.join(MANIFESTS, name)) as f:
        return {k: tuple(v[0]) for k, v in json.load(f)["keys"].items()}


def dit_input(model, frames=1, size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(model.in_dim, frames, size, size, generator=gen)]
    context = [torch.randn(5, model.text_dim, generator=gen)]
    tokens = frames * (size // 2) ** 2
    return dict(x=x, t=torch.tensor([700.0]), context=context, seq_len=tokens)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def dit():
    return tf.tiny_dit(seed=3)


@pytest.fixture(scope="module")
def t5_files(tmp_path_factory):
    """A tiny official T5 (.pth + tokenizer folder) and its state dict."""
    folder = str(tmp_path_factory.mktemp("t5"))
    write_tiny_t5(folder, seed=4)
    state = torch.load(os.path.join(folder, T5_CHECKPOINT_NAME), weights_only=True)
    return folder, state


@pytest.fixture(scope="module")
def diffusers_ti2v(tmp_path_factory, dit, t5_files):
    """A whole tiny TI2V pipeline folder written by diffusers, with the official tensors it holds."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    from wan.modules.t5 import official_to_hf_names, umt5_config

    folder = str(tmp_path_factory.mktemp("diffusers_ti2v"))
    t5_dir, t5_state = t5_files
    vae = randomize_(AutoencoderKLWan(base_dim=8, decoder_base_dim=16, z_dim=48, in_channels=12, out_channels=12,
                                      is_residual=True, patch_size=2, scale_factor_spatial=16,
                                      latents_mean=[m + 0.5 for m in vae2_2.MEAN], latents_std=list(vae2_2.STD)),
                     5).eval()
    layers = 2
    encoder = UMT5EncoderModel(umt5_config(vocab_size=t5_state["token_embedding.weight"].shape[0], dim=32,
                                           dim_ffn=64, num_heads=4, num_layers=layers))
    names = official_to_hf_names(layers)
    hf = {names[k]: v.float() for k, v in t5_state.items()}
    hf["encoder.embed_tokens.weight"] = hf["shared.weight"]
    encoder.load_state_dict(hf, strict=True)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(t5_dir, T5_TOKENIZER_NAME), local_files_only=True)
    tf.write_diffusers_pipeline(folder, [tf.diffusers_transformer(dit)], vae, encoder, tokenizer,
                                expand_timesteps=True)
    return folder, vae


# ------------------------------------------------------------------------------------------ official
def test_official_folder_reads_the_files_tensors(tiny_checkpoint):
    folder = tiny_checkpoint("ti2v-5B")
    parts = locate(folder)
    assert parts.layout == "official" and list(parts.dit) == ["main"]
    state, config = read_dit(parts.dit["main"])
    reference = WanModel.from_pretrained(folder).state_dict()
    assert_same_tensors(state, reference)
    assert config["model_type"] == "ti2v" and config["num_heads"] == 2  # heads from config.json
    vae_state, vae_config = read_vae(parts.vae)
    assert vae_config["version"] == "2.2" and vae_config["z_dim"] == 48
    assert_same_tensors(vae_state, torch.load(parts.vae.path, weights_only=True))
    t5_state, dims = read_t5(parts.t5)
    assert_same_tensors(t5_state, torch.load(parts.t5.path, weights_only=True))
    model = build_dit(state, config, dtype=torch.float32)
    inputs = dit_input(model, size=4)
    expected = WanModel.from_pretrained(folder)(**inputs)[0]
    assert torch.equal(model(**inputs)[0], expected)


def test_official_a14b_folder_has_both_experts_by_folder_name(tiny_checkpoint):
    parts = locate(tiny_checkpoint("t2v-A14B"))
    assert {r: os.path.basename(p.path) for r, p in parts.dit.items()} == {"high": "high_noise_model",
                                                                             "low": "low_noise_model"}
    assert [p.role for p in parts.experts()] == ["low", "high"]
    _, config = read_dit(parts.dit["high"])
    assert config["role"] == "high"


def test_full_size_vae_rename_tables_equal_diffusers_layout():
    """The official -> diffusers VAE tables at full size: official keys are the manifest's, and
    the renamed keys and shapes are exactly those of diffusers' AutoencoderKLWan."""
    from diffusers import AutoencoderKLWan

    for version, name, dims, diffusers_config in (
            ("2.1", "wan21_vae.json", (96, 16, None), {}),
            ("2.2", "wan22_vae.json", (160, 48, 256),
             dict(base_dim=160, decoder_base_dim=256, z_dim=48, in_channels=12, out_channels=12, is_residual=True,
                  patch_size=2, scale_factor_spatial=16))):
        table = vae_name_table(version, *dims)
        official = manifest(name)
        assert sorted(table) == sorted(official)
        with torch.device("meta"):
            reference = {k: tuple(v.shape) for k, v in AutoencoderKLWan(**diffusers_config).state_dict().items()}
        assert {table[k]: shape for k, shape in official.items()} == reference


# ------------------------------------------------------------------------------------------ diffusers
def test_diffusers_pipeline_folder_loads_to_the_official_tensors(diffusers_ti2v, dit, t5_files):
    folder, vae = diffusers_ti2v
    parts = locate(folder)
    assert parts.layout == "diffusers" and parts.expand_timesteps is True and parts.boundary_ratio is None
    assert parts.vae_mean == list(vae.config.latents_mean) and len(parts.vae_std) == 48
    state, config = read_dit(parts.dit["main"])
    assert_same_tensors(state, dit.state_dict())
    assert config["model_type"] == "ti2v" and config["variant"].startswith("custom")
    vae_state, vae_config = read_vae(parts.vae)
    assert vae_config["version"] == "2.2" and vae_config["mean"] == parts.vae_mean
    reference_vae = vae2_2.WanVAE_(dim=8, dec_dim=16, z_dim=48).eval()
    reference_vae.load_state_dict(vae_state, strict=True)
    z = torch.randn(1, 48, 2, 2, 2)
    with torch.no_grad():
        ours = reference_vae.decode(z, [torch.zeros(48), torch.ones(48)]).clamp(-1, 1)
        theirs = vae.decode(z).sample
    assert (ours - theirs).abs().max() < 1e-5  # diffusers' own decoder agrees: the renames are right
    t5_state, _ = read_t5(parts.t5, dtype=torch.bfloat16)
    assert_same_tensors(t5_state, t5_files[1])


def test_diffusers_a14b_pipeline_roles_and_boundary(tmp_path, t5_files):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    from wan.modules.t5 import umt5_config

    high, low = tf.tiny_dit("t2v", 16, 16, seed=10), tf.tiny_dit("t2v", 16, 16, seed=11)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(t5_files[0], T5_TOKENIZER_NAME), local_files_only=True)
    encoder = UMT5EncoderModel(umt5_config(vocab_size=len(tokenizer), dim=32, dim_ffn=64, num_heads=4, num_layers=2))
    tf.write_diffusers_pipeline(str(tmp_path), [tf.diffusers_transformer(high), tf.diffusers_transformer(low)],
                                AutoencoderKLWan(base_dim=8, z_dim=16), encoder, tokenizer, boundary_ratio=0.875)
    parts = locate(str(tmp_path))
    assert parts.boundary_ratio == 0.875 and set(parts.dit) == {"high", "low"}
    assert_same_tensors(read_dit(parts.dit["high"])[0], high.state_dict())  # transformer = high-noise
    assert_same_tensors(read_dit(parts.dit["low"])[0], low.state_dict())  # transformer_2 = low-noise
    vae_state, config = read_vae(parts.vae)
    assert config["version"] == "2.1" and sorted(vae_state) == sorted(manifest_keys_tiny_vae("2.1"))


def manifest_keys_tiny_vae(version):
    module = vae2_1.WanVAE_(dim=8, z_dim=16) if version == "2.1" else vae2_2.WanVAE_(dim=8, dec_dim=16, z_dim=48)
    return module.state_dict().keys()


# ------------------------------------------------------------------------------------------ HF cache
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return str(cache)


def test_hf_repo_id_resolves_from_the_local_cache_offline(hf_cache, diffusers_ti2v, dit):
    folder, _ = diffusers_ti2v
    tf.write_hf_cache_repo(hf_cache, "Wan-AI/Tiny-TI2V-Diffusers", tf.folder_files(folder))
    parts = locate("Wan-AI/Tiny-TI2V-Diffusers")
    assert "snapshots" in parts.dit["main"].path
    assert_same_tensors(read_dit(parts.dit["main"])[0], dit.state_dict())
    with pytest.raises(CheckpointError) as err:
        locate("Wan-AI/Not-Downloaded")
    assert "not in the local Hugging Face cache" in one_line(err)


def test_incomplete_snapshot_names_the_missing_file(hf_cache, diffusers_ti2v):
    folder, _ = diffusers_ti2v
    files = tf.folder_files(folder)
    vae_shard = sorted(f for f in files if f.startswith("vae") and f.endswith(".safetensors"))[0]
    shard = sorted(f for f in files if f.startswith("transformer") and f.endswith(".safetensors"))[1]
    del files[vae_shard], files[shard]
    tf.write_hf_cache_repo(hf_cache, "Wan-AI/Tiny-Partial", files)
    with pytest.raises(CheckpointError) as err:
        locate("Wan-AI/Tiny-Partial")
    message = one_line(err)
    assert vae_shard in message and shard in message
    # a part supplied by a file is no longer missing; the DiT still is
    with pytest.raises(CheckpointError, match="dit"):
        locate("Wan-AI/Tiny-Partial", vae=os.path.join(folder, "vae"))
    parts = locate("Wan-AI/Tiny-Partial", need=("t5", "tokenizer"))
    assert parts.vae is None and parts.t5 is not None


# ------------------------------------------------------------------------------------------ ComfyUI
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_comfy_single_file_with_or_without_prefix(tmp_path, dit, prefix, dtype):
    path = tf.write_comfy_dit(dit.state_dict(), str(tmp_path / "wan.safetensors"), prefix=prefix, dtype=dtype)
    parts = locate(None, dit=path, need=("dit",))
    state, config = read_dit(parts.dit["main"])
    assert_same_tensors(state, {k: v.to(dtype) for k, v in dit.state_dict().items()})
    assert config["num_heads"] == 2 and config["model_type"] == "ti2v"  # heads = dim / 128


def test_fp8_scaled_file_is_dequantised_with_its_scales(tmp_path, dit):
    stored = tf.fp8_scaled(dit.state_dict())
    path = tf.save_safetensors(stored, str(tmp_path / "wan_fp8_scaled.safetensors"))
    state, config = read_dit(Part("DiT", path, "safetensors"))
    weight = state["blocks.0.ffn.0.weight"]
    assert isinstance(weight, ScaledFP8Weight) and "scaled_fp8" not in state
    exact = stored["blocks.0.ffn.0.weight"].float() * stored["blocks.0.ffn.0.scale_weight"]
    assert torch.equal(weight.dequantize(torch.float32), exact)
    reference = dit.state_dict()["blocks.0.ffn.0.weight"]
    assert relative_error(exact, reference) < 0.05  # e4m3 rounding, not off by the scale factor
    model = build_dit(state, config, dtype=torch.float32)
    assert isinstance(model.blocks[0].ffn[0], ScaledFP8Linear)
    assert model.blocks[0].ffn[0].weight_fp8.dtype == torch.float8_e4m3fn  # kept in fp8
    inputs = dit_input(dit, size=4)
    assert relative_error(model(**inputs)[0], dit(**inputs)[0]) < 0.05
    fast = build_dit(state, config, dtype=torch.bfloat16, fp8_matmul=True)  # FP8Linear on the same bytes
    assert torch.equal(fast.blocks[0].ffn[0].weight_fp8, stored["blocks.0.ffn.0.weight"])
    assert relative_error(fast(**inputs)[0], dit(**inputs)[0]) < 0.1


def test_newer_weight_scale_naming_and_plain_fp8(tmp_path, dit):
    stored = tf.fp8_scaled(dit.state_dict(), marker=False, scale_name="weight_scale")
    stored["blocks.0.ffn.0.comfy_quant"] = torch.frombuffer(bytearray(b'{"format": "float8_e4m3fn"}'),
                                                            dtype=torch.uint8)
    state, _ = read_dit(Part("DiT", tf.save_safetensors(stored, str(tmp_path / "new.safetensors")), "safetensors"))
    exact = stored["blocks.1.self_attn.q.weight"].float() * stored["blocks.1.self_attn.q.weight_scale"]
    assert torch.equal(state["blocks.1.self_attn.q.weight"].dequantize(), exact)
    plain = {k: v.to(torch.float8_e4m3fn) if k.startswith("blocks.") and v.dim() == 2 else v
             for k, v in dit.state_dict().items()}  # a plain fp8 cast: scale 1
    state, _ = read_dit(Part("DiT", tf.save_safetensors(plain, str(tmp_path / "e4m3.safetensors")), "safetensors"))
    assert torch.equal(state["blocks.0.ffn.2.weight"].dequantize(), plain["blocks.0.ffn.2.weight"].float())


def test_fp8_scaled_file_without_a_scale_is_refused(tmp_path, dit):
    stored = tf.fp8_scaled(dit.state_dict())
    del stored["blocks.1.cross_attn.v.scale_weight"]
    path = tf.save_safetensors(stored, str(tmp_path / "broken_fp8_scaled.safetensors"))
    with pytest.raises(CheckpointError) as err:
        read_dit(Part("DiT", path, "safetensors"))
    assert "blocks.1.cross_attn.v.weight has no scale" in one_line(err)


def test_all_in_one_file_supplies_dit_vae_and_t5(tmp_path, dit, t5_files):
    vae = randomize_(vae2_1.WanVAE_(dim=8, z_dim=16), 6).state_dict()
    dit16 = tf.tiny_dit("t2v", 16, 16, seed=7).state_dict()
    t5_dir, t5_state = t5_files
    everything = {**{"model.diffusion_model." + k: v for k, v in dit16.items()},
                  **{"vae." + k: v for k, v in vae.items()},
                  **{"text_encoders.umt5xxl.transformer." + k: v for k, v in tf.hf_t5_state(t5_state).items()}}
    path = tf.save_safetensors({k: v.to(torch.bfloat16) for k, v in everything.items()}, str(tmp_path / "aio.safetensors"))
    parts = locate(None, dit=path, tokenizer=os.path.join(t5_dir, T5_TOKENIZER_NAME))
    assert parts.vae.path == path and parts.t5.path == path
    assert_same_tensors(read_dit(parts.dit["main"])[0], {k: v.to(torch.bfloat16) for k, v in dit16.items()})
    assert_same_tensors(read_vae(parts.vae, dtype=torch.bfloat16)[0], {k: v.to(torch.bfloat16) for k, v in vae.items()})
    assert_same_tensors(read_t5(parts.t5)[0], t5_state)


@pytest.mark.parametrize("prefix", ["", "vae.", "model."])
def test_vae_single_files_with_prefixes(tmp_path, prefix):
    state = randomize_(vae2_2.WanVAE_(dim=8, dec_dim=16, z_dim=48), 8).state_dict()
    path = tf.save_safetensors({prefix + k: v.half() for k, v in state.items()}, str(tmp_path / "vae.safetensors"))
    loaded, config = read_vae(Part("VAE", path, "safetensors"), dtype=torch.float16)
    assert config["version"] == "2.2"
    assert_same_tensors(loaded, {k: v.half() for k, v in state.items()})
    wrapper = build_vae(loaded, config, dtype=torch.float32)
    reference = vae2_2.Wan2_2_VAE.from_state_dict({k: v.half().float() for k, v in state.items()}, device="cpu")
    z = [torch.randn(48, 1, 2, 2)]
    assert torch.equal(wrapper.decode(z)[0], reference.decode(z)[0])


def test_vae_from_diffusers_folder_builds_the_wrapper(diffusers_ti2v):
    folder, _ = diffusers_ti2v
    parts = locate(folder)
    state, config = read_vae(parts.vae)
    wrapper = build_vae(state, config)
    assert isinstance(wrapper, vae2_2.Wan2_2_VAE)
    assert torch.equal(wrapper.mean, torch.tensor(parts.vae_mean))
    index = tf.read_json(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors.index.json"))
    assert set(official_vae_to_diffusers(state, "2.2")) == set(index["weight_map"])  # and back again


# ------------------------------------------------------------------------------------------ T5
def test_t5_in_hf_names_with_embedded_tokenizer(tmp_path, t5_files):
    t5_dir, t5_state = t5_files
    tokenizer_dir = os.path.join(t5_dir, T5_TOKENIZER_NAME)
    stored = tf.hf_t5_state(t5_state)
    stored["spiece_model"] = tf.spiece_tensor(tf.sentencepiece_bytes(tokenizer_dir))
    path = tf.save_safetensors(stored, str(tmp_path / "umt5_xxl_fp16.safetensors"))
    parts = locate(None, t5=path, need=("t5", "tokenizer"))
    assert parts.tokenizer.container == "embedded"
    state, dims = read_t5(parts.t5)
    assert_same_tensors(state, t5_state)
    folder = tokenizer_folder(parts.tokenizer, cache_dir=str(tmp_path / "tok"))
    encoder = build_t5(state, folder, text_len=16)
    reference = build_t5(t5_state, tokenizer_dir, text_len=16)
    prompt = ["A cinematic shot of a red fox running through a snowy forest."]
    ids, ref_ids = encoder.tokenizer(prompt), reference.tokenizer(prompt)
    assert torch.equal(ids, ref_ids)
    assert torch.equal(encoder(prompt, "cpu")[0], reference(prompt, "cpu")[0])


def test_t5_fp8_scaled_and_gguf_namings(tmp_path, t5_files):
    _, t5_state = t5_files
    hf = tf.hf_t5_state(t5_state)
    scaled = tf.fp8_scaled({k.replace("encoder.block.", "blocks."): v for k, v in hf.items()})
    scaled = {k.replace("blocks.", "encoder.block."): v for k, v in scaled.items()}
    path = tf.save_safetensors(scaled, str(tmp_path / "umt5_fp8_scaled.safetensors"))
    state, _ = read_t5(Part("T5", path, "safetensors"), dtype=torch.float32)
    key = "blocks.1.attn.q.weight"
    hf_key = "encoder.block.1.layer.0.SelfAttention.q.weight"
    assert torch.equal(state[key], scaled[hf_key].float() * scaled[hf_key[:-len("weight")] + "scale_weight"])
    gguf_path = tf.write_gguf(tf.gguf_t5_names(hf), str(tmp_path / "umt5.gguf"), qtype="Q8_0", arch="t5encoder")
    state, dims = read_t5(Part("T5", gguf_path, "gguf"), dtype=torch.float32)
    assert sorted(state) == sorted(t5_state) and dims["num_layers"] == 2
    reader = gguf.GGUFReader(gguf_path)
    stored = {t.name: t for t in reader.tensors}["enc.blk.0.attn_q.weight"]
    assert stored.tensor_type == gguf.GGMLQuantizationType.Q8_0
    expected = gguf.quants.dequantize(stored.data, stored.tensor_type)
    assert torch.equal(state["blocks.0.attn.q.weight"], torch.from_numpy(expected))
    assert torch.equal(state["blocks.0.norm1.weight"], t5_state["blocks.0.norm1.weight"].float())


# ------------------------------------------------------------------------------------------ GGUF
@pytest.mark.parametrize("qtype", sorted(DEQUANTIZERS))
def test_torch_dequantisation_equals_the_gguf_package(qtype):
    _, per_block, block_bytes = DEQUANTIZERS[qtype]
    kind = gguf.GGMLQuantizationType[qtype]
    rows, cols = 3, 512
    if qtype.endswith("_K"):
        raw = tf.random_k_blocks(qtype, (rows, cols), seed=1)
    else:
        values = np.random.default_rng(1).normal(size=(rows, cols)).astype(np.float32)
        raw = gguf.quants.quantize(values, kind)
    expected = gguf.quants.dequantize(raw, kind)
    ours = dequantize(torch.from_numpy(raw), qtype, (rows, cols))
    assert np.array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1", "F16"])
def test_gguf_dit_keeps_blocks_and_dequantises_per_layer(tmp_path, dit, qtype):
    path = tf.write_gguf(dit.state_dict(), str(tmp_path / f"wan-{qtype}.gguf"), qtype=qtype)
    state, config = read_dit(Part("DiT", path, "gguf"))
    assert config["dim"] == 256 and config["num_layers"] == 2
    model = build_dit(state, config, dtype=torch.float32)
    layer = model.blocks[1].cross_attn.k
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    stored = reader["blocks.1.cross_attn.k.weight"]
    expected = gguf.quants.dequantize(stored.data, stored.tensor_type)
    if qtype == "F16":
        assert isinstance(layer, torch.nn.Linear)
        assert torch.equal(layer.weight, torch.from_numpy(expected.astype(np.float32)))
    else:
        assert isinstance(layer, GGUFLinear) and layer.weight_blocks.dtype == torch.uint8
        assert torch.equal(layer.weight_as(torch.float32), torch.from_numpy(expected))
        assert not any(isinstance(m, torch.nn.Linear) for m in model.blocks.modules())  # every block linear kept
    # The same network with every tensor dequantised up front by the gguf package: equal outputs.
    reference = WanModel(**tf.TINY_DIT, model_type="ti2v", in_dim=48, out_dim=48).eval()
    reference.load_state_dict({name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
                               .reshape(dit.state_dict()[name].shape).float() for name, t in reader.items()})
    inputs = dit_input(dit, size=4)
    output = model(**inputs)[0]
    assert torch.allclose(output, reference(**inputs)[0], rtol=1e-5, atol=1e-5)
    assert relative_error(output, dit(**inputs)[0]) < {"Q4_0": 0.3, "Q5_1": 0.2}.get(qtype, 0.05)


def test_gguf_k_quant_dit(tmp_path, dit):
    state = dit.state_dict()
    raw = {}
    for index, key in enumerate(k for k in state if k.startswith("blocks.") and state[k].dim() == 2):
        qtype = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")[index % 5]
        raw[key] = (tf.random_k_blocks(qtype, tuple(state[key].shape), seed=index), qtype, state[key].shape)
    floats = {k: v for k, v in state.items() if k not in raw}
    path = tf.write_gguf(floats, str(tmp_path / "wan-k.gguf"), qtype="F32", raw_tensors=raw)
    loaded, config = read_dit(Part("DiT", path, "gguf"))
    model = build_dit(loaded, config, dtype=torch.float32)
    for key, (blocks, qtype, shape) in raw.items():
        layer = model.get_submodule(key[: -len(".weight")])
        expected = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype])
        assert layer.qtype == qtype
        assert torch.equal(layer.weight_as(torch.float32), torch.from_numpy(expected)), key
    assert torch.isfinite(model(**dit_input(dit, size=4))[0]).all()


def test_truncated_gguf_is_a_one_line_error(tmp_path, dit):
    path = tf.write_gguf(dit.state_dict(), str(tmp_path / "wan.gguf"), qtype="Q8_0")
    with open(path, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError) as err:
        read_dit(Part("DiT", str(truncated), "gguf"))
    assert "truncated.gguf" in one_line(err)


# ------------------------------------------------------------------------------------------ detection
def test_variants_and_task_mismatch_are_one_line_errors(tmp_path, dit):
    path = tf.write_comfy_dit(dit.state_dict(), str(tmp_path / "ti2v.safetensors"))
    _, config = read_dit(Part("DiT", path, "safetensors"))
    check_dit_for_task(config, WAN_CONFIGS["ti2v-5B"])
    with pytest.raises(CheckpointError) as err:
        check_dit_for_task(config, WAN_CONFIGS["t2v-A14B"])
    assert "the task needs t2v" in one_line(err)


def test_full_size_variants_are_named_from_shapes():
    from wan.loading.readers import dit_config, dit_variant

    for name, expected in (("wan22_ti2v_5b_dit.json", "Wan2.2 TI2V-5B"), ("wan21_t2v_1_3b_dit.json", "Wan2.1 T2V-1.3B"),
                           ("wan22_a14b_dit_i2v.json", "Wan2.2 I2V-A14B expert"),
                           ("wan22_a14b_dit_t2v.json", "14B T2V (Wan2.1 T2V-14B or a Wan2.2 T2V-A14B expert")):
        state = {k: torch.empty(shape, device="meta") for k, shape in manifest(name).items()}
        config = dit_config(state, {}, name)
        assert dit_variant(config).startswith(expected), name
        with torch.device("meta"):
            model = WanModel(**{k: config[k] for k in ("model_type", "in_dim", "out_dim", "dim", "ffn_dim", "num_heads",
                                                        "num_layers")})
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == manifest(name)


@pytest.mark.parametrize("name, variant, branch", [("wan21_i2v_14b_dit.json", "Wan2.1 I2V-14B", "clip"),
                                                   ("wan21_flf2v_14b_dit.json", "Wan2.1 FLF2V-14B", "clip+pos")])
def test_wan21_image_branch_is_detected_from_the_weights(name, variant, branch):
    from wan.loading.readers import dit_config, dit_variant

    state = {k: torch.empty(shape, device="meta") for k, shape in manifest(name).items()}
    config = dit_config(state, {"model_type": "t2v", "added_kv_proj_dim": None}, name)  # configs are not trusted
    assert config["image_branch"] == branch and config["in_dim"] == 36 and dit_variant(config) == variant
    with pytest.raises(CheckpointError) as err:  # not a task that uses CLIP
        check_dit_for_task({**config, "variant": variant}, WAN_CONFIGS["i2v-A14B"])
    assert "CLIP image branch" in one_line(err)


def test_expert_pair_from_single_files(tmp_path, caplog):
    high = tf.write_comfy_dit(tf.tiny_dit("i2v", 36, 16, seed=1).state_dict(), str(tmp_path / "x_high_noise.safetensors"))
    low = tf.write_comfy_dit(tf.tiny_dit("i2v", 36, 16, seed=2).state_dict(), str(tmp_path / "x_low_noise.safetensors"))
    parts = locate(None, dit_high=high, dit_low=low, need=("dit",))
    assert [p.path for p in parts.experts()] == [low, high]
    _, config = read_dit(parts.dit["low"])
    assert config["role"] == "low" and config["model_type"] == "i2v"
    with caplog.at_level("WARNING"):
        locate(None, dit_high=low, dit_low=high, need=("dit",))
    assert "name says low-noise" in caplog.text
    with pytest.raises(CheckpointError) as err:
        locate(None, dit_high=high, need=("dit",))
    assert "low-noise expert was not given" in one_line(err)
    with pytest.raises(CheckpointError):
        locate(None, dit=high, dit_low=low)
    with pytest.raises(CheckpointError) as err:
        locate(str(tmp_path / "nowhere"))
    one_line(err)


# ------------------------------------------------------------------------------------------ convert
def test_convert_official_to_diffusers_loads_in_diffusers_and_back(tmp_path, tiny_checkpoint):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from wan.modules.convert import official_to_diffusers_keys
    from wan.modules.t5 import official_to_hf_names
    from wan.tools.convert import convert

    source = tiny_checkpoint("ti2v-5B")
    out = str(tmp_path / "diffusers")
    convert(source, out, "diffusers", dtype=torch.float32)
    original = WanModel.from_pretrained(source).state_dict()
    transformer, info = WanTransformer3DModel.from_pretrained(os.path.join(out, "transformer"),
                                                              output_loading_info=True)
    assert not any(info.values())  # no missing, unexpected or mismatched keys in diffusers' own loader
    assert_same_tensors(transformer.state_dict(), official_to_diffusers_keys(original))
    vae, info = AutoencoderKLWan.from_pretrained(os.path.join(out, "vae"), output_loading_info=True)
    assert not any(info.values()) and vae.config.z_dim == 48
    encoder = UMT5EncoderModel.from_pretrained(os.path.join(out, "text_encoder"))
    t5 = torch.load(os.path.join(source, T5_CHECKPOINT_NAME), weights_only=True)
    names = official_to_hf_names(2)
    assert all(torch.equal(encoder.state_dict()[names[k]], v.float()) for k, v in t5.items())
    back = str(tmp_path / "official")
    convert(out, back, "official", dtype=torch.float32)
    assert_same_tensors(WanModel.from_pretrained(back).state_dict(), original)
    assert_same_tensors(torch.load(os.path.join(back, "Wan2.2_VAE.pth"), weights_only=True),
                        torch.load(os.path.join(source, "Wan2.2_VAE.pth"), weights_only=True))


def test_convert_cli_merges_a_lora_into_a_single_file(tmp_path, dit):
    from safetensors.torch import load_file

    from wan.tools.convert import main

    source = tf.write_gguf(dit.state_dict(), str(tmp_path / "wan-F16.gguf"), qtype="F16")
    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 256, generator=gen), torch.randn(512, 4, generator=gen)
    lora = tf.save_safetensors({"diffusion_model.blocks.1.ffn.0.lora_down.weight": down,
                                "diffusion_model.blocks.1.ffn.0.lora_up.weight": up,
                                "diffusion_model.blocks.1.ffn.0.alpha": torch.tensor(2.0)},
                               str(tmp_path / "style.safetensors"))
    out = str(tmp_path / "merged.safetensors")
    main(["-", out, "--to", "single-file", "--dit", source, "--lora", f"{lora}:0.5", "--dtype", "fp32",
          "--prefix", "model.diffusion_model."])
    merged = load_file(out)
    base = read_dit(Part("DiT", source, "gguf"))[0]
    key = "blocks.1.ffn.0.weight"
    torch.testing.assert_close(merged["model.diffusion_model." + key], base[key].float() + 0.5 * 0.5 * up @ down)
    assert torch.equal(merged["model.diffusion_model.blocks.0.ffn.0.weight"], base["blocks.0.ffn.0.weight"].float())
