"""WanModel: official key sets, parity with diffusers' WanTransformer3DModel, loading."""
import json
import os

import pytest
import torch

from wan.errors import CheckpointError
from wan.modules.convert import official_config_to_diffusers, official_to_diffusers_keys
from wan.modules.model import WanModel
from wan.tools.randomize import randomize_

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests")

FULL_SIZE = {
    "wan22_ti2v_5b_dit.json": dict(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336,
                                   num_heads=24, num_layers=30),
    "wan22_a14b_dit_t2v.json": dict(model_type="t2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824,
                                    num_heads=40, num_layers=40),
    "wan22_a14b_dit_i2v.json": dict(model_type="i2v", in_dim=36, out_dim=16, dim=5120, ffn_dim=13824,
                                    num_heads=40, num_layers=40),
    "wan21_t2v_1_3b_dit.json": dict(model_type="t2v", in_dim=16, out_dim=16, dim=1536, ffn_dim=8960,
                                    num_heads=12, num_layers=30),
    "wan21_i2v_14b_dit.json": dict(model_type="i2v", in_dim=36, out_dim=16, dim=5120, ffn_dim=13824,
                                   num_heads=40, num_layers=40, image_dim=1280),
    "wan21_flf2v_14b_dit.json": dict(model_type="flf2v", in_dim=36, out_dim=16, dim=5120, ffn_dim=13824,
                                     num_heads=40, num_layers=40, image_dim=1280),
}
CLIP_DIM = 20  # the tiny models' CLIP token width


def manifest(name):
    path = os.path.join(REFERENCE, name)
    with open(path) as f:
        return {k: tuple(v[0]) for k, v in json.load(f)["keys"].items()}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_keys_and_shapes_equal_official_manifest(name):
    with torch.device("meta"):
        model = WanModel(**FULL_SIZE[name])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == manifest(name)


def tiny(model_type, in_dim=16, out_dim=16, seed=0, image_dim=None, text_len=16):
    model = WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, dim=32, ffn_dim=64, freq_dim=256,
                     text_dim=24, num_heads=2, num_layers=2, text_len=text_len, image_dim=image_dim)
    return randomize_(model, seed).eval()


def tiny_image_model(model_type, seed=0, text_len=16):
    """A tiny Wan2.1 i2v / flf2v model (with the CLIP image branch)."""
    return tiny(model_type, 36, 16, seed=seed, image_dim=CLIP_DIM, text_len=text_len)


def random_clip_fea(model_type, gen, samples=1):
    """CLIP tokens: one image per sample for i2v, a (first, last) pair for flf2v."""
    per_sample = 2 if model_type == "flf2v" else 1
    return torch.randn(per_sample * samples, 257, CLIP_DIM, generator=gen)


def diffusers_twin(model):
    from diffusers import WanTransformer3DModel

    twin = WanTransformer3DModel(**official_config_to_diffusers(model)).eval()
    twin.load_state_dict(official_to_diffusers_keys(model.state_dict()), strict=True)
    return twin


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def padded_context(context, text_len):
    """The official model zero-pads the trimmed T5 output to text_len inside forward; diffusers
    expects it already padded."""
    return torch.nn.functional.pad(context, (0, 0, 0, text_len - context.shape[0]))


@torch.no_grad()
@pytest.mark.parametrize("model_type,in_dim,out_dim", [("t2v", 16, 16), ("i2v", 36, 16), ("ti2v", 48, 48)])
def test_parity_with_diffusers(model_type, in_dim, out_dim):
    model = tiny(model_type, in_dim, out_dim)
    twin = diffusers_twin(model)
    gen = torch.Generator().manual_seed(1)
    noise_channels = out_dim
    x = torch.randn(noise_channels, 3, 6, 8, generator=gen)
    y = torch.randn(in_dim - noise_channels, 3, 6, 8, generator=gen) if model_type == "i2v" else None
    context = torch.randn(7, 24, generator=gen)
    seq_len = 3 * 3 * 4
    if model_type == "ti2v":  # per-token timesteps: first latent frame at 0
        t = torch.full((1, seq_len), 700.0)
        t[:, : 3 * 4] = 0
    else:
        t = torch.tensor([700.0])
    ours = model([x], t=t, context=[context], seq_len=seq_len, y=None if y is None else [y])[0]
    model_in = x if y is None else torch.cat([x, y])
    theirs = twin(model_in[None], timestep=t, encoder_hidden_states=padded_context(context, 16)[None],
                  return_dict=False)[0][0]
    assert ours.shape == theirs.shape == (out_dim, 3, 6, 8)
    assert relative_error(ours, theirs) < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("model_type", ["i2v", "flf2v"])
def test_image_branch_parity_with_diffusers(model_type):
    """Wan2.1 i2v / flf2v: the CLIP tokens through img_emb (flf2v: with emb_pos over the frame pair)
    and the separate image attention in every block, against diffusers' image variant. diffusers
    splits the context at a fixed 512 text tokens, so the model has text_len 512 here."""
    model = tiny_image_model(model_type, text_len=512)
    assert model.img_emb.emb_pos is not None if model_type == "flf2v" else model.img_emb.emb_pos is None
    twin = diffusers_twin(model)
    gen = torch.Generator().manual_seed(6)
    x, y = torch.randn(16, 3, 6, 8, generator=gen), torch.randn(20, 3, 6, 8, generator=gen)
    context, clip_fea = torch.randn(7, 24, generator=gen), random_clip_fea(model_type, gen)
    t = torch.tensor([700.0])
    ours = model([x], t=t, context=[context], seq_len=36, clip_fea=clip_fea, y=[y])[0]
    theirs = twin(torch.cat([x, y])[None], timestep=t, encoder_hidden_states=padded_context(context, 512)[None],
                  encoder_hidden_states_image=clip_fea, return_dict=False)[0][0]
    assert relative_error(ours, theirs) < 1e-5
    # the image tokens matter: other CLIP tokens give another velocity
    other = model([x], t=t, context=[context], seq_len=36, clip_fea=random_clip_fea(model_type, gen), y=[y])[0]
    assert relative_error(other, ours) > 1e-4  # 100x the parity tolerance above


@torch.no_grad()
@pytest.mark.parametrize("model_type", ["i2v", "flf2v"])
def test_one_clip_fea_for_several_contexts_equals_it_repeated(model_type):
    """CFG passes share the image: one clip_fea (flf2v: one frame pair) serves every context."""
    model = tiny_image_model(model_type)
    gen = torch.Generator().manual_seed(9)
    x, y = torch.randn(16, 2, 4, 4, generator=gen), torch.randn(20, 2, 4, 4, generator=gen)
    ctx = [torch.randn(5, 24, generator=gen), torch.randn(9, 24, generator=gen)]
    clip_fea = random_clip_fea(model_type, gen)
    t = torch.tensor([700.0])
    shared = model([x], t=t, context=ctx, seq_len=8, clip_fea=clip_fea, y=[y])
    repeated = model([x, x], t=t.repeat(2), context=ctx, seq_len=8, clip_fea=torch.cat([clip_fea] * 2), y=[y, y])
    for a, b in zip(shared, repeated):
        assert relative_error(a, b) < 1e-6
    with pytest.raises(ValueError, match="for 2 contexts"):
        model([x], t=t, context=ctx, seq_len=8, clip_fea=random_clip_fea(model_type, gen, samples=3), y=[y])


def test_clip_fea_is_required_exactly_by_the_image_branch():
    gen = torch.Generator().manual_seed(10)
    x, y, ctx = torch.randn(16, 2, 4, 4), [torch.randn(20, 2, 4, 4)], [torch.randn(5, 24)]
    t = torch.tensor([500.0])
    with pytest.raises(ValueError, match="pass clip_fea"):
        tiny_image_model("i2v")([x], t=t, context=ctx, seq_len=8, y=y)
    with pytest.raises(ValueError, match="no CLIP image branch"):  # Wan2.2 i2v
        tiny("i2v", 36, 16)([x], t=t, context=ctx, seq_len=8, clip_fea=random_clip_fea("i2v", gen), y=y)
    with pytest.raises(ValueError, match="frame pairs of 257 tokens"):
        tiny_image_model("flf2v")([x], t=t, context=ctx, seq_len=8, clip_fea=random_clip_fea("i2v", gen), y=y)
    with pytest.raises(ValueError, match="needs image_dim"):
        WanModel(model_type="flf2v", dim=32, ffn_dim=64, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match="for i2v and flf2v models only"):
        WanModel(model_type="t2v", dim=32, ffn_dim=64, num_heads=2, num_layers=1, image_dim=CLIP_DIM)


@torch.no_grad()
@pytest.mark.parametrize("model_type,image_dim", [("i2v", None), ("i2v", CLIP_DIM), ("flf2v", CLIP_DIM)])
def test_image_branch_is_read_off_the_weights(tmp_path, model_type, image_dim):
    """Wan2.1 and Wan2.2 i2v checkpoints both say model_type "i2v": the loader builds the image
    branch exactly when the weights hold it, from the official and the diffusers layout alike."""
    model = tiny(model_type, 36, 16, image_dim=image_dim)
    model.save_pretrained(tmp_path / "official")
    diffusers_twin(model).save_pretrained(tmp_path / "transformer")
    for loaded in (WanModel.from_pretrained(str(tmp_path / "official")),
                   WanModel.from_pretrained(str(tmp_path), subfolder="transformer")):
        assert (loaded.model_type, loaded.image_dim) == (model_type, image_dim)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k


@torch.no_grad()
@pytest.mark.parametrize("task", ["i2v-14B", "flf2v-14B", "t2i-14B"])
def test_tiny_wan21_checkpoints_load_and_run(tiny_checkpoint, task):
    """make_tiny_checkpoint writes the official files (the CLIP .pth and its tokenizer folder for
    the image tasks); the CLIP tokens of the task's frames drive the DiT loaded from the folder."""
    from wan.configs import WAN_CONFIGS
    from wan.modules.clip import CLIPModel

    config, ckpt = WAN_CONFIGS[task], tiny_checkpoint(task)
    model = WanModel.from_pretrained(ckpt)
    assert model.model_type == config.model_type and model.has_image_branch == ("clip_checkpoint" in config)
    gen = torch.Generator().manual_seed(11)
    x, ctx = torch.randn(16, 1, 4, 4, generator=gen), [torch.randn(5, model.text_dim, generator=gen)]
    extra = {}
    if model.has_image_branch:
        assert os.path.isdir(os.path.join(ckpt, config.clip_tokenizer))
        clip = CLIPModel(torch.float32, "cpu", os.path.join(ckpt, config.clip_checkpoint),
                         os.path.join(ckpt, config.clip_tokenizer))
        frames = [torch.rand(3, 1, 40, 56, generator=gen) * 2 - 1 for _ in range(2 if task == "flf2v-14B" else 1)]
        extra = dict(clip_fea=clip.visual(frames), y=[torch.randn(20, 1, 4, 4, generator=gen)])
    out = model([x], t=torch.tensor([500.0]), context=ctx, seq_len=4, **extra)[0]
    assert out.shape == (16, 1, 4, 4) and torch.isfinite(out).all()


@torch.no_grad()
def test_batch_and_padding_do_not_change_outputs():
    model = tiny("t2v")
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(16, 2, 4, 4, generator=gen) for _ in range(2)]
    ctx = [torch.randn(5, 24, generator=gen), torch.randn(9, 24, generator=gen)]
    t = torch.tensor([900.0, 300.0])
    batched = model(xs, t=t, context=ctx, seq_len=8)
    padded = model(xs, t=t, context=ctx, seq_len=13)  # padding keys must be ignored
    for i in range(2):
        single = model([xs[i]], t=t[i:i + 1], context=[ctx[i]], seq_len=8)[0]
        assert torch.allclose(batched[i], single, atol=1e-5, rtol=1e-5)
        assert torch.allclose(padded[i], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type, in_dim, out_dim, per_token", [("t2v", 16, 16, False), ("i2v", 36, 16, False),
                                                                     ("ti2v", 48, 48, True)])
@torch.no_grad()
def test_one_latent_for_several_contexts_equals_it_repeated(model_type, in_dim, out_dim, per_token):
    model = tiny(model_type, in_dim, out_dim)
    gen = torch.Generator().manual_seed(4)
    latent_dim = 16 if model_type == "i2v" else in_dim
    x = torch.randn(latent_dim, 2, 4, 4, generator=gen)
    y = [torch.randn(in_dim - latent_dim, 2, 4, 4, generator=gen)] if model_type == "i2v" else None
    ctx = [torch.randn(5, 24, generator=gen), torch.randn(9, 24, generator=gen)]
    t = torch.cat([torch.zeros(1, 4), torch.full((1, 9), 700.0)], 1) if per_token else torch.tensor([700.0])
    batch = []
    model.blocks[0].self_attn.register_forward_hook(lambda module, args, out: batch.append(args[0].shape[0]))
    for seq_len in (8, 13):  # 13: padded keys too
        shared = model([x], t=t[:, :seq_len] if per_token else t, context=ctx, seq_len=seq_len, y=y)
        assert batch.pop() == 1  # block 0's self-attention ran once for both contexts
        repeated = model([x, x], t=(t[:, :seq_len] if per_token else t).repeat(2, 1).squeeze(-1), context=ctx,
                         seq_len=seq_len, y=None if y is None else y * 2)
        assert batch.pop() == 2
        assert len(shared) == 2 and not torch.allclose(shared[0], shared[1])
        for a, b in zip(shared, repeated):
            assert relative_error(a, b) < 1e-6


def test_latent_and_context_counts_must_agree():
    model = tiny("t2v")
    x = torch.randn(16, 2, 4, 4)
    with pytest.raises(ValueError, match="2 latents for 3 contexts"):
        model([x, x], t=torch.tensor([1.0, 1.0]), context=[torch.randn(4, 24)] * 3, seq_len=8)
    with pytest.raises(ValueError, match="t has 2 rows for 1 latents"):
        model([x], t=torch.tensor([1.0, 2.0]), context=[torch.randn(4, 24)] * 2, seq_len=8)


@torch.no_grad()
def test_per_token_timesteps_equal_scalar_when_uniform():
    model = tiny("ti2v", 48, 48)
    x = torch.randn(48, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    ctx = [torch.randn(4, 24)]
    scalar = model([x], t=torch.tensor([500.0]), context=ctx, seq_len=8)[0]
    per_token = model([x], t=torch.full((1, 8), 500.0), context=ctx, seq_len=8)[0]
    assert torch.equal(scalar, per_token)


@torch.no_grad()
def test_official_layout_round_trip_sharded(tmp_path):
    model = tiny("i2v", 36, 16)
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    assert os.path.exists(tmp_path / "diffusion_pytorch_model.safetensors.index.json")
    loaded = WanModel.from_pretrained(str(tmp_path))
    assert loaded.text_dim == 24 and loaded.model_type == "i2v"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@torch.no_grad()
def test_loads_diffusers_layout(tmp_path):
    model = tiny("ti2v", 48, 48)
    twin = diffusers_twin(model)
    twin.save_pretrained(tmp_path / "transformer")
    loaded = WanModel.from_pretrained(str(tmp_path), subfolder="transformer")
    assert loaded.model_type == "ti2v"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_loading_errors_name_the_offending_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny("t2v")
    model.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    broken = dict(state)
    del broken["blocks.1.ffn.2.bias"]
    broken["blocks.0.extra.weight"] = torch.zeros(1)
    broken["head.head.bias"] = torch.zeros(3)
    save_file(broken, path)
    with pytest.raises(CheckpointError) as err:
        WanModel.from_pretrained(str(tmp_path))
    message = str(err.value)
    assert "blocks.1.ffn.2.bias" in message and "blocks.0.extra.weight" in message and "head.head.bias" in message
    os.remove(path)
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model"):
        WanModel.from_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="not found"):
        WanModel.from_pretrained(str(tmp_path / "nope"))


@torch.no_grad()
def test_ffn_chunking_matches_unchunked():
    model = tiny("ti2v", 48, 48)
    x = torch.randn(48, 3, 6, 8, generator=torch.Generator().manual_seed(4))
    t = torch.full((1, 36), 600.0)
    t[:, :12] = 0
    ctx = [torch.randn(5, 24)]
    whole = model([x], t=t, context=ctx, seq_len=36)[0]
    chunked = model.set_ffn_chunk(7)([x], t=t, context=ctx, seq_len=36)[0]
    model.set_ffn_chunk(None)
    assert relative_error(chunked, whole) < 1e-6  # matmul blocking may round differently per chunk


@torch.no_grad()
@pytest.mark.parametrize("image_branch", [False, True])
def test_compiled_blocks_trace_and_match(image_branch):
    """Each block's three sublayers must trace without graph breaks into one graph each (with the
    image cross-attention too); aot_eager runs the traced graphs with eager kernels, so the output
    must match to float rounding."""
    gen = torch.Generator().manual_seed(5)
    model = tiny_image_model("i2v") if image_branch else tiny("t2v")
    x = torch.randn(16, 2, 4, 4, generator=gen)
    extra = dict(clip_fea=random_clip_fea("i2v", gen), y=[torch.randn(20, 2, 4, 4, generator=gen)]) \
        if image_branch else {}
    ctx = [torch.randn(5, 24)]
    eager = model([x], t=torch.tensor([500.0]), context=ctx, seq_len=8, **extra)[0]
    model.compile_blocks(backend="aot_eager", fullgraph=True)
    compiled = model([x], t=torch.tensor([500.0]), context=ctx, seq_len=8, **extra)[0]
    assert relative_error(compiled, eager) < 1e-6


@torch.no_grad()
def test_default_compile_runs_inductor_with_the_block_options():
    """compile_blocks() with no arguments: inductor with BLOCK_INDUCTOR_OPTIONS (an unknown or
    misspelt key would fail here), generating real kernels (C++ on the CPU), same outputs."""
    model = tiny("t2v")
    x = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    ctx = [torch.randn(5, 24)]
    eager = model([x], t=torch.tensor([500.0]), context=ctx, seq_len=8)[0]
    compiled = model.compile_blocks()([x], t=torch.tensor([500.0]), context=ctx, seq_len=8)[0]
    assert relative_error(compiled, eager) < 1e-5
    torch._dynamo.reset()


COMPILED_FORWARD = """
import torch
from wan.modules.model import WanModel
torch.manual_seed(0)
model = WanModel(model_type="ti2v", in_dim=8, out_dim=8, dim=512, ffn_dim=1024, num_heads=4, num_layers=2,
                 text_dim=64).cuda().to(torch.bfloat16).eval().requires_grad_(False).compile_blocks()
with torch.no_grad():
    out = model([torch.randn(8, 3, 16, 16, device="cuda")], t=torch.tensor([500.0], device="cuda"),
                context=[torch.randn(7, 64, device="cuda")], seq_len=192)[0]
print(out.float().sum().item())
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_blocks_load_back_from_the_inductor_cache(tmp_path):
    """A second process reuses the first one's compiled graphs from inductor's on-disk cache, as
    a user's second run does. (With triton.multi_kernel among the options this crashed.)"""
    from conftest import run_script

    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    runs = [run_script("-c", COMPILED_FORWARD, env=env) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    first, second = (float(run.stdout.split()[-1]) for run in runs)
    assert abs(first - second) <= 1e-3 * abs(first), (first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_forward_with_timesteps_on_the_cpu_never_waits_for_the_gpu():
    """The pipelines pass t on the CPU (per-token, first frame at 0 as in ti2v image mode): the
    forward must queue its kernels without a host sync, and give what t on the GPU gives."""
    from conftest import no_host_sync

    model = tiny("ti2v", 48, 48).cuda()
    x = torch.randn(48, 3, 4, 4, device="cuda")
    ctx = [torch.randn(5, 24, device="cuda")]
    t = torch.full((1, 12), 700.0)
    t[:, :4] = 0.0
    on_gpu = model([x], t=t.cuda(), context=ctx, seq_len=12)[0]  # also builds the cached RoPE tables
    with no_host_sync():
        on_cpu = model([x], t=t, context=ctx, seq_len=12)[0]
    assert torch.equal(on_cpu, on_gpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_compiled_self_attention_peaks_at_four_activations():
    """Compiled, the self-attention sublayer holds at most four [L, dim] bf16 tensors besides the
    fp32 residual stream (the modulated input with q, k and k's projection; then q, k, v and the
    attention output). With q and k rotated in one fused kernel it held five: 0.8 GB more for
    A14B at 720p."""
    model = WanModel(model_type="t2v", in_dim=16, out_dim=16, dim=1024, ffn_dim=1024, num_heads=8,
                     num_layers=1, text_dim=64).cuda().to(torch.bfloat16).eval()
    block = model.blocks[0]
    block.compile_sublayers()
    grid, tokens = (8, 32, 32), 8 * 32 * 32
    _, e0 = model._time_tables(torch.tensor([500.0]), 1, tokens, torch.device("cuda"))
    rope = model._rope([grid], tokens, torch.device("cuda"))
    x = torch.randn(1, tokens, 1024, device="cuda")
    block.self_attention_sublayer(x, e0, None, rope)  # compile
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    block.self_attention_sublayer(x, e0, None, rope)
    activation = tokens * 1024 * 2
    assert torch.cuda.max_memory_allocated() - base < 4.5 * activation
    torch._dynamo.reset()


def _random_ffn(dtype, device):
    torch.manual_seed(8)
    ffn = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(256, 64))
    return ffn.to(device, dtype), torch.randn(2, 37, 64, device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feed_forward_runs_the_modules_off_cuda(dtype):
    """The fused bias+GELU op applies the erf GELU on the CPU and has no autograd formula: off
    CUDA and with gradients the official modules must run, bit for bit."""
    from wan.modules.model import _feed_forward

    ffn, x = _random_ffn(dtype, "cpu")
    with torch.no_grad():
        assert torch.equal(_feed_forward(ffn, x), ffn(x))
    x.requires_grad_(True)
    _feed_forward(ffn, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_fused_feed_forward_on_cuda_matches_the_modules():
    """cuBLASLt's bias+GELU epilogue must be the tanh GELU: in fp32 it equals the modules to matmul
    rounding (the erf GELU would be 2e-4 away); in bf16 it stays within the bf16 modules' own
    distance from the fp32 result."""
    from wan.modules.model import _feed_forward

    ffn, x = _random_ffn(torch.float32, "cuda")
    exact = ffn(x)
    assert relative_error(_feed_forward(ffn, x), exact) < 2e-5
    ffn, x = ffn.to(torch.bfloat16), x.to(torch.bfloat16)
    fused, plain = _feed_forward(ffn, x).float(), ffn(x).float()
    assert relative_error(fused, exact) <= 1.1 * relative_error(plain, exact) + 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_feed_forward_stays_fused_under_an_autocast_that_changes_no_dtype():
    """The pipelines denoise inside bf16 autocast. With bf16 weights it changes no dtype, so the
    fused epilogue must still run: the same bits as outside autocast (the modules round the hidden
    activations to bf16 before the GELU, so they differ). With fp32 weights autocast's bf16
    matmuls must run, exactly as the modules under autocast."""
    from wan.modules.model import _feed_forward

    ffn, x = _random_ffn(torch.bfloat16, "cuda")
    outside = _feed_forward(ffn, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        inside = _feed_forward(ffn, x)
        assert not torch.equal(inside, ffn(x))  # so the first comparison can fail
    assert torch.equal(inside, outside)
    ffn, x = _random_ffn(torch.float32, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(_feed_forward(ffn, x), ffn(x))


@torch.no_grad()
def test_fp8_linears_deviate_a_little():
    """Opt-in and inexact: FP8 weights and activations keep the output close to the bf16-free
    reference (measured here on the CPU implementation of torch._scaled_mm)."""
    model = tiny("ti2v", 48, 48)
    x = torch.randn(48, 3, 6, 8, generator=torch.Generator().manual_seed(7))
    ctx = [torch.randn(5, 24)]
    t = torch.tensor([400.0])
    exact = model([x], t=t, context=ctx, seq_len=36)[0]
    quantised = model.quantize_fp8()([x], t=t, context=ctx, seq_len=36)[0]
    assert type(model.blocks[0].ffn[0]).__name__ == "FP8Linear"
    error = relative_error(quantised, exact)
    assert 1e-4 < error < 0.1, error


def test_rotary_table_equals_the_pairwise_rotation():
    """RotaryTable's per-channel form against the reference's pairwise formula, bit for bit."""
    from wan.modules.model import RotaryTable

    gen = torch.Generator().manual_seed(3)
    angles = torch.rand(2, 7, 1, 4, generator=gen) * 6
    x = torch.randn(2, 7, 3, 8, generator=gen)
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = angles.cos(), angles.sin()
    expected = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    assert torch.equal(RotaryTable.from_angles(cos, sin).rotate(x), expected)
