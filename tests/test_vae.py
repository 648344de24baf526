"""Wan2.1 / Wan2.2 VAEs: official key layout, parity with diffusers' AutoencoderKLWan on the same
random weights, strict loading errors, shapes, causality and the tiny checkpoint writers."""
import json
import os
import re

import pytest
import torch

from wan.errors import CheckpointError, WanInputError
from wan.modules import vae2_1, vae2_2
from wan.tools.tiny_vae import write_tiny_wan21_vae, write_tiny_wan22_vae

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests")
PARITY_TOLERANCE = 1e-4  # the official code matches diffusers to ~1e-6 in fp32

VERSIONS = {
    "2.1": dict(module=vae2_1, wrapper=vae2_1.Wan2_1_VAE, manifest="wan21_vae.json", stride=8, z=16),
    "2.2": dict(module=vae2_2, wrapper=vae2_2.Wan2_2_VAE, manifest="wan22_vae.json", stride=16, z=48),
}


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    return {
        "2.1": write_tiny_wan21_vae(str(folder / "wan21_vae.pth"), seed=0),
        "2.2": write_tiny_wan22_vae(str(folder / "wan22_vae.pth"), seed=0),
    }


def load(version, path, **kwargs):
    return VERSIONS[version]["wrapper"](vae_pth=path, device="cpu", **kwargs)


def random_video(frames, height, width, seed=1):
    return torch.rand(3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def relative_error(ours, reference):
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


# ---------------------------------------------------------------------------------------------
# 1. official layout


@pytest.mark.parametrize("version", VERSIONS)
def test_full_size_state_dict_equals_manifest(version):
    info = VERSIONS[version]
    path = os.path.join(REFERENCE, info["manifest"])
    with open(path) as f:
        manifest = {key: tuple(shape) for key, (shape, _) in json.load(f)["keys"].items()}
    with torch.device("meta"):
        model = info["module"].WanVAE_()
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert sorted(set(manifest) ^ set(ours)) == []
    assert {k: v for k, v in ours.items() if manifest[k] != v} == {}


# ---------------------------------------------------------------------------------------------
# 2. parity with diffusers


def official_to_diffusers_key(key, residual):
    """Official Wan VAE key -> diffusers AutoencoderKLWan key (residual=True for Wan2.2)."""
    k = re.sub(r"^conv1\.", "quant_conv.", key)
    k = re.sub(r"^conv2\.", "post_quant_conv.", k)
    k = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", k)
    k = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", k)
    k = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", k)
    k = re.sub(r"\.middle\.0\.", ".mid_block.resnets.0.", k)
    k = re.sub(r"\.middle\.1\.", ".mid_block.attentions.0.", k)
    k = re.sub(r"\.middle\.2\.", ".mid_block.resnets.1.", k)
    if residual:
        k = re.sub(r"encoder\.downsamples\.(\d+)\.downsamples\.2\.", r"encoder.down_blocks.\1.downsampler.", k)
        k = re.sub(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", k)
        k = re.sub(r"decoder\.upsamples\.(\d+)\.upsamples\.3\.", r"decoder.up_blocks.\1.upsampler.", k)
        k = re.sub(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2.", k)
    else:
        k = re.sub(r"encoder\.downsamples\.", "encoder.down_blocks.", k)
        k = re.sub(r"decoder\.upsamples\.(\d+)\.", _wan21_up_block_key, k)
    for official, diffusers in ((".residual.0.", ".norm1."), (".residual.2.", ".conv1."),
                                (".residual.3.", ".norm2."), (".residual.6.", ".conv2."),
                                (".shortcut.", ".conv_shortcut.")):
        k = k.replace(official, diffusers)
    return k


def _wan21_up_block_key(match):
    # The official decoder is one flat Sequential: per level 3 residual blocks, then a resample.
    level, index = divmod(int(match.group(1)), 4)
    return f"decoder.up_blocks.{level}." + (f"resnets.{index}." if index < 3 else "upsamplers.0.")


def diffusers_twin(version, vae):
    from diffusers import AutoencoderKLWan

    if version == "2.1":
        reference = AutoencoderKLWan(base_dim=8, z_dim=16)
    else:
        reference = AutoencoderKLWan(base_dim=8, decoder_base_dim=16, z_dim=48, is_residual=True,
                                     in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                                     latents_mean=vae2_2.MEAN, latents_std=vae2_2.STD)
    state = {official_to_diffusers_key(k, version == "2.2"): v for k, v in vae.model.state_dict().items()}
    reference.load_state_dict(state, strict=True)
    return reference.eval()


@pytest.mark.parametrize("version,size", [("2.1", 32), ("2.2", 64)])
def test_parity_with_diffusers(version, size, tiny_paths):
    vae = load(version, tiny_paths[version])
    reference = diffusers_twin(version, vae)
    mean, std = (v.view(1, -1, 1, 1, 1) for v in (vae.mean, vae.std))
    video = random_video(9, size, size)

    with torch.no_grad():
        latent = vae.encode([video])[0]
        expected_latent = (reference.encode(video[None]).latent_dist.mode() - mean) / std
        z = torch.randn(latent.shape, generator=torch.Generator().manual_seed(2))
        decoded = vae.decode([z])[0]
        expected_video = reference.decode(z[None] * std + mean).sample[0]

    encode_error = relative_error(latent, expected_latent[0])
    decode_error = relative_error(decoded, expected_video)
    print(f"Wan{version} VAE vs diffusers: encode rel err {encode_error:.2e}, decode rel err {decode_error:.2e}")
    assert latent.shape == expected_latent.shape[1:]
    assert decoded.shape == expected_video.shape
    assert encode_error < PARITY_TOLERANCE
    assert decode_error < PARITY_TOLERANCE
    # The comparison means something only if the output is not saturated by the clamp.
    assert (decoded.abs() == 1).float().mean() < 0.1 and decoded.std() > 0.05


@pytest.mark.parametrize("version,size", [("2.1", 32), ("2.2", 64)])
def test_posterior_matches_diffusers_distribution(version, size, tiny_paths):
    """posterior(x): the (mu, logvar) diffusers' latent_dist holds (it clamps logvar to [-30, 20], which
    random weights stay inside); encode is mu normalised; gradients reach the encoder (training)."""
    vae = load(version, tiny_paths[version])
    reference = diffusers_twin(version, vae)
    video = random_video(9, size, size)[None]
    with torch.no_grad():
        expected = reference.encode(video).latent_dist
    mu, logvar = vae.model.posterior(video)
    assert mu.dtype == logvar.dtype == torch.float32 and mu.shape == logvar.shape == expected.mean.shape
    assert relative_error(mu, expected.mean) < PARITY_TOLERANCE
    assert relative_error(logvar, expected.logvar) < PARITY_TOLERANCE
    with torch.no_grad():
        torch.testing.assert_close(vae.encode([video[0]])[0], ((mu - vae.mean.view(-1, 1, 1, 1))
                                                              / vae.std.view(-1, 1, 1, 1))[0])
    vae.model.requires_grad_(True)
    mu, logvar = vae.model.posterior(video)
    (mu.square().mean() + logvar.exp().mean()).backward()
    assert all(p.grad is not None for p in vae.model.encoder.parameters())
    vae.model.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# 3. loading errors


def write_state(path, state):
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_extra_and_misshaped_keys_are_named(version, tiny_paths, tmp_path):
    state = torch.load(tiny_paths[version], weights_only=True)
    missing = dict(state)
    del missing["decoder.middle.1.proj.bias"]
    extra = dict(state, **{"encoder.extra.weight": torch.zeros(2)})
    misshaped = dict(state, **{"encoder.head.0.gamma": torch.ones(3, 1, 1, 1)})
    cases = [(missing, "decoder.middle.1.proj.bias"), (extra, "encoder.extra.weight"),
             (misshaped, "encoder.head.0.gamma")]
    for index, (bad, key) in enumerate(cases):
        path = write_state(tmp_path / f"bad{index}.pth", bad)
        with pytest.raises(CheckpointError, match=re.escape(key)):
            load(version, path)


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_file_is_named(version, tmp_path):
    path = str(tmp_path / "nowhere" / "vae.pth")
    with pytest.raises(CheckpointError, match=re.escape(path)):
        load(version, path)


def test_wrong_latent_size_is_reported(tiny_paths):
    with pytest.raises(CheckpointError, match="z_dim=8"):
        vae2_1.Wan2_1_VAE(z_dim=8, vae_pth=tiny_paths["2.1"], device="cpu")


def test_wan22_without_checkpoint_path_fails_clearly():
    with pytest.raises(CheckpointError, match="vae_pth"):
        vae2_2.Wan2_2_VAE(device="cpu")


# ---------------------------------------------------------------------------------------------
# 4. shapes, ranges, input checks, causality


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("frames", [1, 5])
def test_round_trip_shapes(version, frames, tiny_paths):
    info = VERSIONS[version]
    vae = load(version, tiny_paths[version])
    s = info["stride"]
    height, width = 2 * s, 3 * s
    with torch.no_grad():
        latents = vae.encode([random_video(frames, height, width), random_video(frames, height, width, seed=3)])
        videos = vae.decode(latents)
    assert len(latents) == 2 and len(videos) == 2
    assert latents[0].shape == (info["z"], (frames - 1) // 4 + 1, 2, 3)
    assert latents[0].dtype == torch.float32
    assert not torch.equal(latents[0], latents[1])
    assert videos[0].shape == (3, frames, height, width)
    assert videos[0].dtype == torch.float32
    assert videos[0].abs().max() <= 1.0


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_inputs_raise_clear_errors(version, tiny_paths):
    vae = load(version, tiny_paths[version])
    s = VERSIONS[version]["stride"]
    with pytest.raises(WanInputError, match="list"):
        vae.encode(random_video(5, s, s))
    with pytest.raises(WanInputError, match="list"):
        vae.decode(torch.zeros(VERSIONS[version]["z"], 1, 1, 1))
    with pytest.raises(WanInputError, match="4n\\+1"):
        vae.encode([random_video(6, s, s)])
    with pytest.raises(WanInputError, match=f"multiples of {s}"):
        vae.encode([random_video(5, s, s + 4)])
    with pytest.raises(WanInputError, match=r"\[3, F, H, W\]"):
        vae.encode([torch.zeros(4, 5, s, s)])
    with pytest.raises(WanInputError, match="latent 0"):
        vae.decode([torch.zeros(7, 1, 1, 1)])


@pytest.mark.parametrize("version", VERSIONS)
def test_encode_and_decode_are_causal_in_time(version, tiny_paths):
    """Frame k depends only on frames <= k: a shorter clip gives the prefix of the longer result."""
    vae = load(version, tiny_paths[version])
    s = VERSIONS[version]["stride"]
    video = random_video(9, s, s)
    with torch.no_grad():
        full, prefix = vae.encode([video, video[:, :5]])
        decoded_full, decoded_prefix = vae.decode([full, full[:, :2]])
    torch.testing.assert_close(prefix, full[:, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded_prefix, decoded_full[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_chunks_concatenate_to_the_decode(version, tiny_paths):
    """The streamed decode (for writing while decoding) yields 1 frame, then 4 per latent frame,
    and together they are the whole decode, bit for bit; a bad latent is refused before any work."""
    vae = load(version, tiny_paths[version])
    s = VERSIONS[version]["stride"]
    with torch.no_grad():
        latent = vae.encode([random_video(9, s, 2 * s)])[0]
        chunks = list(vae.decode_chunks(latent))
        whole = vae.decode([latent])[0]
    assert [c.shape[1] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=1), whole)
    with pytest.raises(WanInputError, match="latent 0"):
        next(vae.decode_chunks(torch.zeros(7, 1, 1, 1)))


@pytest.mark.parametrize("version", VERSIONS)
def test_bfloat16_model_tracks_float32(version, tiny_paths):
    s = VERSIONS[version]["stride"]
    video = random_video(5, 2 * s, 2 * s)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        vae = load(version, tiny_paths[version], dtype=dtype)
        assert next(vae.model.parameters()).dtype == dtype
        with torch.no_grad():
            latent = vae.encode([video])[0]
            results[dtype] = (latent, vae.decode([latent])[0])
    for ours, reference in zip(results[torch.bfloat16], results[torch.float32]):
        assert ours.dtype == torch.float32
        assert relative_error(ours, reference) < 0.05


# ---------------------------------------------------------------------------------------------
# 5. tiny writers


@pytest.mark.parametrize("writer,version", [(write_tiny_wan21_vae, "2.1"), (write_tiny_wan22_vae, "2.2")])
def test_tiny_writer_is_deterministic_and_loads(writer, version, tmp_path):
    first = torch.load(writer(str(tmp_path / "a.pth"), seed=5), weights_only=True)
    second = torch.load(writer(str(tmp_path / "b.pth"), seed=5), weights_only=True)
    other = torch.load(writer(str(tmp_path / "c.pth"), seed=6), weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth", "c.pth"]  # no temporary left behind
    vae = load(version, str(tmp_path / "a.pth"))
    loaded = vae.model.state_dict()
    assert all(torch.equal(loaded[k], first[k]) for k in first)
    assert vae.model.encoder.conv1.weight.shape[0] == 8


def test_upsample_equals_nearest_exact_interpolation():
    from wan.modules.vae_blocks import upsample2x_nearest

    x = torch.randn(2, 3, 4, 5, 7)
    expected = torch.nn.functional.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")
    assert torch.equal(upsample2x_nearest(x), expected)


@pytest.mark.parametrize("version", VERSIONS)
def test_channels_last_decode_equals_default_layout(version, tiny_paths):
    """The GPU layout (use_channels_last) changes memory order only, never values; the test runs
    it on the CPU, where the reference layout is the default."""
    s = VERSIONS[version]["stride"]
    vae = load(version, tiny_paths[version])
    with torch.no_grad():
        latent = vae.encode([random_video(9, 2 * s, 3 * s)])[0]
        default = vae.decode([latent])[0]
        vae.model.use_channels_last()
        assert vae.model.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
        reordered = vae.decode([latent])[0]
    torch.testing.assert_close(reordered, default, rtol=1e-5, atol=1e-5)


def test_fused_norm_silu_matches_the_separate_layers():
    """The GPU's fused RMS_norm + SiLU (torch.compile) against the layers one by one, compiled here
    for the CPU: a compilation per layout serves every width and chunk length."""
    from torch._dynamo.utils import counters

    from wan.modules.vae_blocks import RMS_norm, norm_silu

    cases = [(c, t, layout) for c, t in ((6, 1), (10, 3), (16, 2))
             for layout in (torch.contiguous_format, torch.channels_last_3d)]

    graphs_before = counters["stats"]["unique_graphs"]
    for channels, frames, layout in cases:
        norm = RMS_norm(channels).requires_grad_(False)  # inference, as the VAE wrappers load it
        norm.gamma.data.uniform_(0.5, 1.5)
        x = torch.randn(1, channels, frames, 5, 4).contiguous(memory_format=layout)
        expected = torch.nn.functional.silu(norm(x))
        fused = norm_silu(norm, x, fused=True)
        assert fused.is_contiguous(memory_format=layout)
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    # Compiled at all, and not once per width: a layout may compile twice (single-frame views).
    assert 1 <= counters["stats"]["unique_graphs"] - graphs_before <= 4


def test_fused_norm_silu_leaves_trainable_gains_to_autograd(monkeypatch):
    """The fused kernel detaches gamma: when autograd needs gamma's gradient the separate layers run
    (same values, and the gradient of the reference), otherwise the fused kernel does."""
    from wan.modules import vae_blocks

    calls = []
    fused = vae_blocks.fused_normalize_silu

    def recording():
        calls.append(1)
        return fused()

    monkeypatch.setattr(vae_blocks, "fused_normalize_silu", recording)
    norm = vae_blocks.RMS_norm(6)
    norm.gamma.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 6, 2, 3, 4)
    expected = torch.nn.functional.silu(norm(x))
    expected.square().sum().backward()
    reference_grad, norm.gamma.grad = norm.gamma.grad.clone(), None

    out = vae_blocks.norm_silu(norm, x, fused=True)
    out.square().sum().backward()
    assert calls == [] and norm.gamma.grad is not None
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(norm.gamma.grad, reference_grad)

    norm.requires_grad_(False)  # inference: the fused kernel
    torch.testing.assert_close(vae_blocks.norm_silu(norm, x, fused=True), expected.detach(), rtol=1e-5, atol=1e-6)
    norm.requires_grad_(True)
    with torch.no_grad():
        vae_blocks.norm_silu(norm, x, fused=True)
    assert len(calls) == 2


@pytest.mark.parametrize("layout", ["default", "channels_last"])
@torch.no_grad()
def test_compiled_decoder_compiles_once_for_latents_from_any_path(layout, tiny_paths, tmp_path):
    """After the first decode, a latent read back from a safetensors file (as a saved inversion or a
    decode stage reads it), one of another frame count, a channels-last or non-contiguous one, one
    that requires grad, and a decode with grad mode on all reuse the compiled graph: the guards saw
    the latent's frame count through a slice's strides, and grad mode, and recompiled (~10 s on an
    H200). fail_on_recompile makes any recompilation raise."""
    from safetensors.torch import load_file, save_file

    vae = load("2.2", tiny_paths["2.2"])
    if layout == "channels_last":
        vae.model.use_channels_last()  # the GPU's decode layout
    compilations = []

    def counting_backend(graph, example_inputs):
        compilations.append(graph)
        return graph

    gen = torch.Generator().manual_seed(5)
    sampled = torch.randn(48, 5, 2, 3, generator=gen) * 0.5 + 0.1  # as the sampler leaves it: fp32, contiguous
    eager = vae.decode([sampled])[0]
    vae.model.compile_decoder(backend=counting_backend)
    torch.testing.assert_close(vae.decode([sampled])[0], eager, rtol=1e-6, atol=1e-6)
    assert len(compilations) == 1

    save_file({"latent": sampled}, str(tmp_path / "latent.safetensors"))
    from_disk = load_file(str(tmp_path / "latent.safetensors"))["latent"]
    others = {
        "read back from a file": from_disk,
        "more frames": torch.randn(48, 7, 2, 3, generator=gen),
        "fewer frames": torch.randn(48, 3, 2, 3, generator=gen),
        "channels-last": sampled.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2),
        "a view at an offset": torch.cat([sampled, sampled], dim=1)[:, 5:],
        "requiring grad": sampled.clone().requires_grad_(),
    }
    with torch.compiler.set_stance("fail_on_recompile"):
        for name, latent in others.items():
            decoded = vae.decode([latent])[0]
            assert decoded.shape[1] == 4 * latent.shape[1] - 3, name
        torch.testing.assert_close(vae.decode([from_disk])[0], eager, rtol=1e-6, atol=1e-6)
        with torch.enable_grad():  # grad mode on, nothing requiring grad: still the compiled graph
            torch.testing.assert_close(vae.decode([sampled])[0], eager, rtol=1e-6, atol=1e-6)
    assert len(compilations) == 1
    torch._dynamo.reset()


@torch.no_grad()
def test_compiled_decoder_leaves_training_to_the_eager_decoder(tiny_paths):
    """With gradients wanted (trainable decoder weights, grad mode on) the decode runs eagerly: the
    compiled graph is for inference, and gradients reach the weights."""
    vae = load("2.2", tiny_paths["2.2"])
    compilations = []
    vae.model.compile_decoder(backend=lambda graph, inputs: compilations.append(graph) or graph)
    latent = torch.randn(48, 4, 2, 3, generator=torch.Generator().manual_seed(6))
    vae.model.decoder.requires_grad_(True)
    with torch.enable_grad():
        video = vae.model.decode(latent[None], vae.scale)
        video.square().mean().backward()
    assert compilations == []
    assert all(p.grad is not None for p in vae.model.decoder.parameters())
    vae.model.requires_grad_(False)
    torch._dynamo.reset()


@pytest.mark.parametrize("version", VERSIONS)
def test_compiled_decoder_runs_steady_chunks_through_one_graph(version, tiny_paths):
    """compile_decoder: the whole decoder, stream-cache reads and writes included, traces into one
    graph without breaks (fullgraph); chunks from the third on run through it (one compilation for
    all of them), and the decode equals the eager one. The counting backend runs the traced graph
    with eager kernels, so values must match to float rounding."""
    compilations, runs = [], []

    def counting_backend(graph, example_inputs):
        compilations.append(graph)

        def run(*args):
            runs.append(1)
            return graph(*args)
        return run

    s = VERSIONS[version]["stride"]
    vae = load(version, tiny_paths[version])
    with torch.no_grad():
        latent = vae.encode([random_video(17, s, 2 * s)])[0]  # 5 latent frames: 3 steady chunks
        eager = vae.decode([latent])[0]
        vae.model.compile_decoder(backend=counting_backend)
        compiled = vae.decode([latent])[0]
        again = vae.decode([latent])[0]  # a second video reuses the graph and starts a fresh cache
    assert (len(compilations), len(runs)) == (1, 6)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again, eager, rtol=1e-6, atol=1e-6)
    assert not any("steady" in key for key in vae.model.state_dict())
    torch._dynamo.reset()


def recording_caches(monkeypatch):
    """The StreamCaches the VAEs create from now on (to look at what a decode leaves cached)."""
    from wan.modules import vae_blocks

    made = []

    class RecordingCache(vae_blocks.StreamCache):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(vae_blocks, "StreamCache", RecordingCache)
    return made


def assert_tails_own_their_memory(cache):
    """A cached tail that is a view of a bigger buffer keeps that whole buffer alive to the next chunk."""
    for tail in cache._tails.values():
        assert tail.untyped_storage().nbytes() == tail.numel() * tail.element_size()


@torch.no_grad()
def test_compiled_decoder_with_inductor_matches_eager(monkeypatch):
    """compile_decoder() with its default options generates real kernels (C++ on the CPU; a small
    Wan2.2 decoder keeps the compile short), decodes the same video, compiles once, and leaves
    tails in memory of their own in the cache (inductor would otherwise alias a plain clone)."""
    from torch._dynamo.utils import counters

    from wan.modules.vae2_2 import MEAN, STD, WanVAE_

    torch.manual_seed(0)
    vae = WanVAE_(dim=8, dec_dim=8, z_dim=48, dim_mult=(1, 2), num_res_blocks=1,
                  temperal_downsample=(True,)).eval()
    scale = [torch.tensor(MEAN), 1.0 / torch.tensor(STD)]
    latent = torch.randn(1, 48, 5, 2, 3)
    eager = vae.decode(latent, scale)
    caches = recording_caches(monkeypatch)
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = vae.compile_decoder().decode(latent, scale)
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    assert compiled.shape == eager.shape == (1, 3, 9, 8, 12)  # one temporal upsampling
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert_tails_own_their_memory(caches[-1])
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_compiled_decoder_on_the_gpu_matches_eager(tiny_paths, monkeypatch):
    """The GPU path: bf16, channels-last, inductor's Triton kernels, through the wrapper's streamed
    decode; within bf16 rounding of the eager decode, and tails in memory of their own."""
    vae = vae2_2.Wan2_2_VAE(vae_pth=tiny_paths["2.2"], device="cuda", dtype=torch.bfloat16)
    latent = torch.randn(48, 6, 4, 6, generator=torch.Generator().manual_seed(3))
    eager = torch.cat(list(vae.decode_chunks(latent)), dim=1)
    vae.model.compile_decoder()
    caches = recording_caches(monkeypatch)
    compiled = torch.cat(list(vae.decode_chunks(latent)), dim=1)
    assert_tails_own_their_memory(caches[-1])
    reference = torch.cat(list(vae2_2.Wan2_2_VAE(vae_pth=tiny_paths["2.2"], device="cuda").decode_chunks(latent)), 1)
    assert compiled.shape == eager.shape == (3, 21, 64, 96)
    # Its fused kernels keep more in fp32: at least as close to the fp32 decode as the eager bf16 one.
    assert relative_error(compiled, eager) < 2e-2
    assert relative_error(compiled, reference) <= 1.1 * relative_error(eager, reference)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_compiled_decoder_peak_stays_near_the_eager_one():
    """Full decoder widths (small frames, random weights): a steady chunk through the compiled
    decoder allocates at most 25% more than eagerly. With inductor's locality reordering on, every
    concatenation buffer was allocated at the graph's start (twice the eager chunk's memory)."""
    from wan.modules.vae_blocks import StreamCache

    vae = vae2_2.WanVAE_().cuda().to(torch.bfloat16).eval().use_channels_last()
    x = torch.randn(1, 48, 4, 16, 24, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    compiled = vae.compile_decoder().steady_decoder

    def last_chunk_peak(steady):
        cache = StreamCache()
        for i in range(4):
            if i == 3:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = torch.cuda.memory_allocated()
            (vae.decoder.forward if i < 2 else steady)(x[:, :, i:i + 1], cache)
        return torch.cuda.max_memory_allocated() - start

    last_chunk_peak(compiled)  # compile and warm up
    assert last_chunk_peak(compiled) <= 1.25 * last_chunk_peak(vae.decoder.forward)
    torch._dynamo.reset()
