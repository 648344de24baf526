"""The CLIP image encoder of Wan2.1's image models (i2v-14B, flf2v-14B), on transformers' CLIP classes.

Wan conditions on the visual tower of open-clip's xlm-roberta-large / ViT-H/14 model: a 224x224
image becomes 257 tokens (class token + 16 x 16 patches) of width 1280, taken after the
penultimate of the 32 blocks (no final block, no post-norm, no projection). That tower is a plain
CLIP ViT, so transformers' `CLIPVisionModel` runs it; the network is built with one block fewer
and its last hidden state is those tokens, equal to a full model's `hidden_states[-2]`.

Two checkpoint layouts load:
- the official `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`: both towers and
  `log_scale` in one state dict. The visual keys are renamed (fused qkv split into q, k, v), the
  text tower and `log_scale` are dropped (Wan never encodes text with CLIP). The tower's size is
  read from the tensor shapes, so a tiny file in the same layout loads through the same code.
- a Diffusers-layout `image_encoder/` folder (config.json + model*.safetensors, saved from
  `CLIPVisionModel` or `CLIPVisionModelWithProjection`).

Preprocessing is the official one, whatever the layout: each frame in [-1, 1] is stretched to
224 x 224 (torch bicubic, no crop, no antialias), mapped back to [0, 1] and normalised with the
OpenAI CLIP mean and std. (Diffusers' pipeline resizes the short side and centre-crops instead.)
"""
import logging
import math
import os
import re

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from ..errors import CheckpointError, WanInputError
from ..utils.checkpoint import check_state_dict, load_into, load_pth, load_safetensors_dir

__all__ = ["CLIPModel", "load_clip_image_encoder", "clip_from_official_state", "official_visual_shapes",
           "hf_to_official_visual", "CLIP_CHECKPOINT_NAME", "CLIP_TOKENIZER_NAME"]

CLIP_CHECKPOINT_NAME = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_TOKENIZER_NAME = "xlm-roberta-large"
# The open-clip ViT-H/14 tower: 16 heads of 80 channels. The head count is not stored in the
# checkpoint, so it is the width divided by this.
HEAD_DIM = 80
LAYER_NORM_EPS = 1e-5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Official names (after `visual.`) -> transformers CLIPVisionModel names. cls and pos embeddings
# and the fused qkv change shape too (see official_to_hf_visual).
_GLOBAL_NAMES = {
    "patch_embedding.weight": "embeddings.patch_embedding.weight",
    "cls_embedding": "embeddings.class_embedding",
    "pos_embedding": "embeddings.position_embedding.weight",
    "pre_norm.weight": "pre_layrnorm.weight",
    "pre_norm.bias": "pre_layrnorm.bias",
    "post_norm.weight": "post_layernorm.weight",
    "post_norm.bias": "post_layernorm.bias",
}
_BLOCK_NAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight",
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight",
    "mlp.2.bias": "mlp.fc2.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")  # the fused projection's row blocks, in this order
_HF_PREFIX = "vision_model."  # on disk and in CLIPVisionModelWithProjection; not in a CLIPVisionModel
_HF_PROJECTION = "visual_projection.weight"
_BLOCK_INDEX = re.compile(r"^transformer\.(\d+)\.")
_SHAPE_KEYS = ("patch_embedding.weight", "pos_embedding", "transformer.0.mlp.0.weight", "head")

log = logging.getLogger(__name__)


def clip_vision_config(width=1280, num_layers=32, mlp_dim=5120, image_size=224, patch_size=14,
                       projection_dim=1024):
    """CLIPVisionConfig of the open-clip ViT tower (defaults: ViT-H/14 as in Wan)."""
    if width % HEAD_DIM:
        raise ValueError(f"CLIP width {width} is not a multiple of the {HEAD_DIM}-channel heads")
    return CLIPVisionConfig(hidden_size=width, intermediate_size=mlp_dim, num_hidden_layers=num_layers,
                            num_attention_heads=width // HEAD_DIM, image_size=image_size, patch_size=patch_size,
                            projection_dim=projection_dim, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS,
                            attn_implementation="sdpa")


# ---------------------------------------------------------------------------------- key layouts
def official_to_hf_visual(visual, num_layers):
    """Official visual tensors (keys without `visual.`) -> CLIPVisionModel state for its first
    `num_layers` blocks; later blocks and the projection `head` are left out."""
    hf = {}
    for key, value in visual.items():
        block = _BLOCK_INDEX.match(key)
        if key == "head" or (block and int(block.group(1)) >= num_layers):
            continue
        if block:
            prefix, rest = f"encoder.layers.{block.group(1)}.", key[block.end():]
            if rest.startswith("attn.to_qkv."):
                leaf = rest.rsplit(".", 1)[1]
                for name, part in zip(_QKV, value.chunk(3, dim=0)):
                    hf[f"{prefix}self_attn.{name}.{leaf}"] = part
            else:
                hf[prefix + _BLOCK_NAMES[rest]] = value
        elif key == "cls_embedding":
            hf[_GLOBAL_NAMES[key]] = value.reshape(-1)
        elif key == "pos_embedding":
            hf[_GLOBAL_NAMES[key]] = value.reshape(value.shape[-2:])
        else:
            hf[_GLOBAL_NAMES[key]] = value
    return hf


def hf_to_official_visual(hf_state):
    """A transformers CLIPVisionModelWithProjection (or CLIPVisionModel) state -> the official
    `visual.*` tensors: q, k, v fused, embeddings reshaped, the projection transposed into `head`."""
    state = {k.removeprefix(_HF_PREFIX): v for k, v in hf_state.items()}
    official = {}
    for official_name, hf_name in _GLOBAL_NAMES.items():
        value = state[hf_name]
        if official_name == "cls_embedding":
            value = value.reshape(1, 1, -1)
        elif official_name == "pos_embedding":
            value = value.unsqueeze(0)
        official[official_name] = value
    if _HF_PROJECTION in state:
        official["head"] = state[_HF_PROJECTION].t()
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for n in sorted(layers):
        hf_prefix = f"encoder.layers.{n}."
        for leaf in ("weight", "bias"):
            official[f"transformer.{n}.attn.to_qkv.{leaf}"] = torch.cat(
                [state[f"{hf_prefix}self_attn.{name}.{leaf}"] for name in _QKV])
        for official_name, hf_name in _BLOCK_NAMES.items():
            official[f"transformer.{n}.{official_name}"] = state[hf_prefix + hf_name]
    return {f"visual.{k}": v for k, v in official.items()}


def _meta_model(config, with_projection=False):
    with torch.device("meta"):
        return (CLIPVisionModelWithProjection if with_projection else CLIPVisionModel)(config)


def official_visual_shapes(**dims):
    """Official `visual.*` key -> shape for a tower of the given size (keyword args of
    clip_vision_config), read from a meta-device transformers model through the key mapping, so
    the mapping is checked against transformers too."""
    model = _meta_model(clip_vision_config(**dims), with_projection=True)
    return {k: tuple(v.shape) for k, v in hf_to_official_visual(model.state_dict()).items()}


def infer_visual_dims(visual, source):
    """Tower size from the official visual tensors' shapes (keys without `visual.`)."""
    missing = [f"visual.{k}" for k in _SHAPE_KEYS if k not in visual]
    if missing:
        raise CheckpointError(f"{source} is not a CLIP checkpoint in the official layout; missing keys: "
                              f"{', '.join(missing)}")
    width, _, patch_size, _ = visual["patch_embedding.weight"].shape
    tokens = visual["pos_embedding"].shape[-2]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise CheckpointError(f"{source}: visual.pos_embedding has {tokens} positions, not a class token plus a "
                              "square patch grid")
    if width % HEAD_DIM:
        raise CheckpointError(f"{source}: CLIP width {width} is not a multiple of the {HEAD_DIM}-channel heads")
    blocks = {int(m.group(1)) for m in map(_BLOCK_INDEX.match, visual) if m}
    return dict(width=width, num_layers=max(blocks) + 1, mlp_dim=visual["transformer.0.mlp.0.weight"].shape[0],
                image_size=grid * patch_size, patch_size=patch_size, projection_dim=visual["head"].shape[1])


# ---------------------------------------------------------------------------------- loading
def _penultimate_model(config, hf_state, source, dtype):
    """A CLIPVisionModel with config's layer count minus one, filled from hf_state (built on the
    meta device, the checkpoint tensors assigned, never held twice)."""
    config.num_hidden_layers -= 1
    model = _meta_model(config)
    load_into(model, hf_state, source, dtype=dtype)
    embeddings = model.embeddings  # a non-persistent buffer: not in the checkpoint, still on meta
    embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
    return model.eval().requires_grad_(False)


def clip_from_official_state(state, source, dtype):
    """An official CLIP state dict -> penultimate-block CLIPVisionModel. The visual tower is
    checked strictly; the text tower and `log_scale` are dropped unread."""
    foreign = sorted(k for k in state if not k.startswith(("visual.", "textual.")) and k != "log_scale")
    if foreign:
        raise CheckpointError(f"{source} is not an official Wan CLIP checkpoint; unexpected keys: "
                              f"{', '.join(foreign[:8])}")
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    dims = infer_visual_dims(visual, source)
    check_state_dict(official_visual_shapes(**dims), {f"visual.{k}": v for k, v in visual.items()}, source)
    config = clip_vision_config(**dims)
    return _penultimate_model(config, official_to_hf_visual(visual, dims["num_layers"] - 1), source, dtype)


def load_diffusers_image_encoder(folder, dtype):
    """A Diffusers-layout `image_encoder/` folder -> penultimate-block CLIPVisionModel."""
    try:
        config = CLIPVisionConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"CLIP image encoder config in {folder} could not be read: {exc}") from None
    config._attn_implementation = "sdpa"
    last = f"encoder.layers.{config.num_hidden_layers - 1}."
    state = load_safetensors_dir(folder, prefix="model", what="CLIP image encoder weights")
    state = {k.removeprefix(_HF_PREFIX): v for k, v in state.items() if k != _HF_PROJECTION}
    check_state_dict({k: tuple(v.shape) for k, v in _meta_model(config).state_dict().items()}, state, folder)
    state = {k: v for k, v in state.items() if not k.startswith(last)}
    return _penultimate_model(config, state, folder, dtype)


def load_clip_image_encoder(checkpoint_path, dtype=torch.float16):
    """The official `.pth`, or a Diffusers `image_encoder/` folder -> an eval-mode CLIPVisionModel
    (on the CPU, in `dtype`) whose last hidden state is Wan's image tokens."""
    if os.path.isdir(checkpoint_path):
        return load_diffusers_image_encoder(checkpoint_path, dtype)
    return clip_from_official_state(load_pth(checkpoint_path, "CLIP checkpoint"), checkpoint_path, dtype)


# ---------------------------------------------------------------------------------- the encoder
def preprocess(videos, image_size, device):
    """List of [3, T, H, W] tensors in [-1, 1] -> normalised fp32 pixels [sum T, 3, size, size]."""
    if not isinstance(videos, (list, tuple)) or not videos:
        raise WanInputError("CLIPModel.visual: expected a non-empty list of [3, T, H, W] image tensors in [-1, 1]")
    frames = []
    for index, video in enumerate(videos):
        if not torch.is_tensor(video) or video.dim() != 4 or video.shape[0] != 3:
            shape = tuple(video.shape) if torch.is_tensor(video) else type(video).__name__
            raise WanInputError(f"CLIPModel.visual: videos[{index}] must be a [3, T, H, W] tensor in [-1, 1], "
                                f"got {shape}")
        frames.append(F.interpolate(video.to(device, torch.float32).transpose(0, 1), size=(image_size, image_size),
                                    mode="bicubic", align_corners=False))
    pixels = torch.cat(frames) * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    return (pixels - mean) / std


class CLIPModel:
    """Frames -> CLIP image tokens, as the official `wan.modules.clip.CLIPModel` (its `visual` call).

    dtype: the encoder's dtype (the official pipelines use fp16). device: where it runs.
    checkpoint_path: the official `.pth` or a Diffusers `image_encoder/` folder. tokenizer_path:
    the `xlm-roberta-large` folder, accepted for the official call but not read: only the text
    tower would use it, and Wan never encodes text with CLIP. `model` is the torch module (move it
    with `.model.to(...)` to offload)."""

    def __init__(self, dtype=torch.float16, device="cpu", checkpoint_path=None, tokenizer_path=None):
        if checkpoint_path is None:
            raise CheckpointError("CLIPModel needs checkpoint_path (the official CLIP .pth or an image_encoder "
                                  "folder)")
        self.dtype = dtype
        self.checkpoint_path, self.tokenizer_path = checkpoint_path, tokenizer_path
        log.info("loading the CLIP image encoder from %s", checkpoint_path)
        self.model = load_clip_image_encoder(checkpoint_path, dtype).to(device)
        self.image_size = self.model.config.image_size

    @torch.no_grad()
    def visual(self, videos):
        """videos: list of [3, T, H, W] tensors in [-1, 1] (Wan passes one frame each,
        [3, 1, H, W]) -> tokens [sum T, 257, width] in the encoder's dtype, on its device."""
        device = self.model.embeddings.patch_embedding.weight.device
        pixels = preprocess(videos, self.image_size, device).to(self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state
