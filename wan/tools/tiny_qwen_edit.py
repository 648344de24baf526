"""A tiny, offline Qwen-Image-Edit-2509 component set in the diffusers pipeline folder layout.

`make_tiny_qwen_edit(DIR)` writes model_index.json plus the transformer/, vae/, text_encoder/,
tokenizer/, processor/ and scheduler/ folders, so `--model_id DIR` loads through the same
`from_pretrained` code as the real checkpoint. Everything is built in code: a byte-level
tokenizer with the Qwen special tokens (no merges), a PIL image processor, and small random
networks. The VAE keeps the real layout's spatial factor 8 (three downsamples) and 16 latent
channels, with random non-trivial latents_mean/std so normalisation bugs show; the scheduler
has the Qwen-Image dynamic-shift settings, so the timestep shift is exercised too.

    python -m wan.tools.tiny_qwen_edit DIR [--seed 0]
"""
import json
from pathlib import Path

import torch

from ..cli import ArgumentParser, run_cli, setup_logging
from .randomize import randomize_

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>"]
HIDDEN = 16  # text-encoder width = transformer joint_attention_dim
Z_DIM = 16

# The scheduler settings Qwen-Image ships in its scheduler/scheduler_config.json.
SCHEDULER_CONFIG = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                        max_image_seq_len=8192, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                        num_train_timesteps=1000)


def build_tokenizer():
    """Byte-level BPE without merges: every byte is a token; the Qwen chat and vision tokens are special."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tokenizer


def build_processor(tokenizer):
    from transformers import Qwen2VLImageProcessorPil

    from ..qwen_edit.loading import ImageOnlyQwen2VLProcessor

    return ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)


def build_text_encoder(tokenizer, seed):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    pad, eos = ids("<|endoftext|>"), ids("<|im_end|>")
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=HIDDEN, intermediate_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=pad,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                         rope_theta=1000000.0),
        vision_config=dict(depth=2, hidden_size=HIDDEN, intermediate_size=HIDDEN, num_heads=2,
                           out_hidden_size=HIDDEN),
        vocab_size=len(tokenizer), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), vision_token_id=ids("<|image_pad|>"),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"))
    return randomize_(Qwen2_5_VLForConditionalGeneration(config), seed)


def build_transformer(seed):
    from diffusers import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(patch_size=2, in_channels=4 * Z_DIM, out_channels=Z_DIM, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=HIDDEN,
                                        guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    return randomize_(model, seed)


def build_vae(seed):
    from diffusers import AutoencoderKLQwenImage

    gen = torch.Generator().manual_seed(seed + 1)
    mean = (0.5 * torch.randn(Z_DIM, generator=gen)).tolist()
    std = (0.5 + 1.5 * torch.rand(Z_DIM, generator=gen)).tolist()
    model = AutoencoderKLQwenImage(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                   temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std)
    return randomize_(model, seed)


def make_tiny_qwen_edit(out_dir, seed=0):
    """Write the tiny component set to `out_dir` (diffusers pipeline layout); returns the path."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    models = {"transformer": build_transformer(seed), "vae": build_vae(seed + 1),
              "text_encoder": build_text_encoder(tokenizer, seed + 2)}
    for name, model in models.items():
        model.save_pretrained(out / name)
    tokenizer.save_pretrained(out / "tokenizer")
    _save_processor(build_processor(tokenizer), out / "processor")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    _write_model_index(out)
    return str(out)


def _save_processor(processor, folder):
    """Save under the stock class name, as the real checkpoint's processor folder is labelled."""
    processor.save_pretrained(folder)
    config_path = Path(folder) / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["processor_class"] = "Qwen2VLProcessor"
    config_path.write_text(json.dumps(config, indent=2))


def _write_model_index(out):
    import diffusers

    index = {
        "_class_name": "QwenImageEditPlusPipeline", "_diffusers_version": diffusers.__version__,
        "processor": ["transformers", "Qwen2VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    print(make_tiny_qwen_edit(args.out_dir, args.seed))


if __name__ == "__main__":
    run_cli(main)
