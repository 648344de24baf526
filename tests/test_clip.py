"""The CLIP image encoder: official key layout, penultimate-block tokens, official preprocessing."""
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel, CLIPVisionModelWithProjection
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from wan.errors import CheckpointError, WanInputError
from wan.modules.clip import (CLIP_CHECKPOINT_NAME, CLIP_TOKENIZER_NAME, CLIPModel, clip_from_official_state,
                              clip_vision_config, hf_to_official_visual, official_visual_shapes)
from wan.tools.randomize import randomize_
from wan.tools.tiny_clip import official_text_tower_shapes, write_tiny_clip
from wan.utils.fileio import torch_save_atomic

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests", "wan21_clip_xlmr_vith14.json")
TINY = dict(width=160, num_layers=3, mlp_dim=320, projection_dim=16)  # 2 heads of 80


def manifest_shapes():
    with open(MANIFEST) as f:
        return {k: tuple(v[0]) for k, v in json.load(f)["keys"].items()}


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def shared_weights(tmp_path_factory):
    """One random tower saved both ways: a Diffusers `image_encoder/` folder and an official `.pth`.
    Returns (the transformers model, the official state dict, folder, pth path)."""
    folder = tmp_path_factory.mktemp("clip")
    hf = randomize_(CLIPVisionModelWithProjection(clip_vision_config(**TINY)), seed=3).eval()
    hf.save_pretrained(folder / "image_encoder")
    official = {k: v.detach().clone() for k, v in hf_to_official_visual(hf.state_dict()).items()}
    torch_save_atomic(official, folder / CLIP_CHECKPOINT_NAME)
    reference = CLIPVisionModel.from_pretrained(folder / "image_encoder", attn_implementation="sdpa").eval()
    return reference, official, str(folder / "image_encoder"), str(folder / CLIP_CHECKPOINT_NAME)


def official_visual_forward(state, pixels, heads):
    """The official tower up to its penultimate block, in plain torch on the official tensors
    (fused qkv viewed as (3, heads, head_dim), exact GELU, LayerNorm eps 1e-5)."""
    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)

    def linear(x, name):
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    weight = state["visual.patch_embedding.weight"]
    x = F.conv2d(pixels, weight, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.cls_embedding"].expand(len(x), 1, -1), x], dim=1) + state["visual.pos_embedding"]
    x = norm(x, "visual.pre_norm")
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual.transformer."))
    for n in range(blocks - 1):
        block = f"visual.transformer.{n}"
        b, s, width = x.shape
        q, k, v = linear(norm(x, f"{block}.norm1"), f"{block}.attn.to_qkv").view(b, s, 3, heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + linear(attended.transpose(1, 2).reshape(b, s, width), f"{block}.attn.proj")
        x = x + linear(F.gelu(linear(norm(x, f"{block}.norm2"), f"{block}.mlp.0")), f"{block}.mlp.2")
    return x


def expected_pixels(images):
    """The official preprocessing, written out: stretch to 224 (torch bicubic), [-1, 1] -> [0, 1],
    OpenAI CLIP mean / std (transformers' constants)."""
    frames = torch.cat([F.interpolate(u.transpose(0, 1), size=(224, 224), mode="bicubic", align_corners=False)
                        for u in images])
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (frames * 0.5 + 0.5 - mean) / std


def random_images():
    gen = torch.Generator().manual_seed(4)
    # Not square and not 224: the official stretch (no crop) must happen; a two-frame entry too.
    return [torch.rand(3, 1, 120, 200, generator=gen) * 2 - 1, torch.rand(3, 2, 300, 90, generator=gen) * 2 - 1]


def test_full_size_official_layout_equals_manifest():
    """The official file's 784 keys: our visual mapping (from transformers' full-size ViT-H/14 on
    the meta device) and the text tower the tiny writer reproduces."""
    ours = {**official_visual_shapes(), **official_text_tower_shapes()}
    assert ours == manifest_shapes()


def test_full_size_manifest_loads_on_meta():
    """A state dict with the manifest's keys and shapes (meta tensors) goes through the loader:
    ViT-H/14 inferred (1280 wide, 16 heads, 224 px / 14 px), built with 31 of the 32 blocks."""
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest_shapes().items()}
    model = clip_from_official_state(state, "manifest", torch.float16)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (1280, 16, 5120)
    assert (config.image_size, config.patch_size, len(model.encoder.layers)) == (224, 14, 31)
    assert model.embeddings.patch_embedding.weight.dtype == torch.float16


@torch.no_grad()
def test_tokens_equal_transformers_penultimate_hidden_state(shared_weights):
    """Both layouts give transformers' CLIPVisionModel `hidden_states[-2]` on the officially
    preprocessed pixels, and the official computation on the official tensors."""
    reference, official, folder, pth = shared_weights
    images = random_images()
    pixels = expected_pixels(images)
    outputs = reference(pixel_values=pixels, output_hidden_states=True)
    penultimate = outputs.hidden_states[-2]
    assert relative_error(outputs.last_hidden_state, penultimate) > 0.05  # the choice of block matters
    assert relative_error(official_visual_forward(official, pixels, heads=2), penultimate) < 1e-5
    for checkpoint in (pth, folder):
        tokens = CLIPModel(torch.float32, "cpu", checkpoint, None).visual(images)
        assert tokens.shape == (3, 257, 160) and tokens.dtype == torch.float32
        assert relative_error(tokens, penultimate) < 1e-5


def test_preprocessing_is_the_official_stretch():
    from wan.modules.clip import preprocess

    images = random_images()
    ours = preprocess(images, 224, torch.device("cpu"))
    assert ours.shape == (3, 3, 224, 224)
    assert torch.allclose(ours, expected_pixels(images), atol=1e-6)
    # a centre crop would keep only the middle of a wide image; the stretch keeps both ends
    wide = torch.cat([torch.full((3, 1, 50, 100), -1.0), torch.full((3, 1, 50, 100), 1.0)], dim=3)
    stretched = preprocess([wide], 224, torch.device("cpu"))[0] * torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    assert stretched[:, :, :100].max() < 0 < stretched[:, :, 124:].min()


def key_patterns(keys):
    """Key names with block indices replaced by N: the layout without its depth."""
    return {re.sub(r"\.\d+\.", ".N.", k) for k in keys}


def test_tiny_checkpoint_has_the_official_keys_and_loads(tmp_path):
    width = write_tiny_clip(str(tmp_path), seed=1)
    state = torch.load(tmp_path / CLIP_CHECKPOINT_NAME, weights_only=True)
    assert key_patterns(state) == key_patterns(manifest_shapes())
    clip = CLIPModel(torch.float32, "cpu", str(tmp_path / CLIP_CHECKPOINT_NAME), str(tmp_path / CLIP_TOKENIZER_NAME))
    tokens = clip.visual([torch.zeros(3, 1, 64, 48)])
    assert tokens.shape == (1, 257, width) and torch.isfinite(tokens).all()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / CLIP_TOKENIZER_NAME, local_files_only=True)
    assert tokenizer("a cat walks").input_ids[0] == tokenizer.cls_token_id == 0


def test_bad_inputs_fail_with_one_line(shared_weights, tmp_path):
    _, official, _, pth = shared_weights
    clip = CLIPModel(torch.float32, "cpu", pth)
    for bad in ([torch.zeros(1, 1, 8, 8)], torch.zeros(3, 1, 8, 8), [], [torch.zeros(3, 8, 8)]):
        with pytest.raises(WanInputError, match="CLIPModel.visual"):
            clip.visual(bad)
    broken = dict(official)
    del broken["visual.transformer.1.mlp.2.bias"]
    broken["visual.transformer.0.attn.to_qkv.weight"] = torch.zeros(100, 160)
    torch_save_atomic(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        CLIPModel(torch.float32, "cpu", str(tmp_path / "broken.pth"))
    assert "visual.transformer.1.mlp.2.bias" in str(err.value) and "to_qkv.weight" in str(err.value)
    torch_save_atomic({"blocks.0.ffn.0.weight": torch.zeros(2, 2)}, tmp_path / "dit.pth")
    with pytest.raises(CheckpointError, match="not an official Wan CLIP checkpoint"):
        CLIPModel(torch.float32, "cpu", str(tmp_path / "dit.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        CLIPModel(torch.float32, "cpu", str(tmp_path / "missing.pth"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_stays_close_to_fp32(shared_weights):
    """The pipelines run the encoder in fp16 on the GPU (as the official one): the tokens stay
    within fp16 rounding of the fp32 CPU result."""
    _, _, _, pth = shared_weights
    images = random_images()
    exact = CLIPModel(torch.float32, "cpu", pth).visual(images)
    half = CLIPModel(torch.float16, "cuda", pth).visual([u.cuda() for u in images])
    assert half.dtype == torch.float16 and half.device.type == "cuda"
    assert relative_error(half.float().cpu(), exact) < 5e-3
