"""Write a tiny random-weight checkpoint in the official Wan directory layout.

    python -m wan.tools.make_tiny_checkpoint --task ti2v-5B DIR
    python -m wan.tools.make_tiny_checkpoint --vlm internvl DIR     # a tiny captioner (or qwen2_5_vl)
    python -m wan.tools.make_tiny_checkpoint --prompt_extender text DIR  # a tiny prompt rewriter (or vl)

Same files, file names and key sets as the real checkpoints; only the widths are small, so every
loader, task and script runs through the same code as with real weights, in seconds on a CPU.
"""
import argparse
import logging
import os

import torch

from ..configs import WAN_CONFIGS
from ..modules.model import WanModel
from .randomize import randomize_
from .tiny_clip import write_tiny_clip
from .tiny_prompt_extend import KINDS as PROMPT_EXTENDER_KINDS
from .tiny_prompt_extend import write_tiny_prompt_extender
from .tiny_t5 import write_tiny_t5
from .tiny_vae import write_tiny_wan21_vae, write_tiny_wan22_vae
from .tiny_vlm import ARCHITECTURES as VLM_ARCHITECTURES
from .tiny_vlm import write_tiny_vlm

TASKS = ("ti2v-5B", "i2v-A14B", "t2v-A14B", "t2v-1.3B", "t2v-14B", "v2v-14B", "v2v-5B", "i2v-14B", "flf2v-14B",
         "t2i-14B")
TINY_DIT = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=256)
TINY_T5_DIM = 32
SHARD_BYTES = 200_000  # small enough that every DiT is sharded with an index, like the real ones

log = logging.getLogger(__name__)


def write_tiny_dit(folder, config, seed, image_dim=None):
    """image_dim: the CLIP width, for Wan2.1 i2v / flf2v DiTs (which have the image branch)."""
    model = WanModel(model_type=config.model_type, in_dim=config.in_dim, out_dim=config.out_dim,
                     text_dim=TINY_T5_DIM, text_len=config.text_len, image_dim=image_dim, **TINY_DIT)
    randomize_(model, seed)
    model.save_pretrained(folder, max_shard_bytes=SHARD_BYTES)


def make_tiny_checkpoint(task, ckpt_dir, seed=0):
    """Write the tiny checkpoint for `task` into `ckpt_dir` (created if needed); returns ckpt_dir."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    config = WAN_CONFIGS[task]
    os.makedirs(ckpt_dir, exist_ok=True)
    write_tiny_t5(ckpt_dir, seed=seed, dim=TINY_T5_DIM)
    vae_path = os.path.join(ckpt_dir, config.vae_checkpoint)
    if config.vae_checkpoint == "Wan2.2_VAE.pth":
        write_tiny_wan22_vae(vae_path, seed=seed + 1)
    else:
        write_tiny_wan21_vae(vae_path, seed=seed + 1)
    image_dim = None
    if "clip_checkpoint" in config:  # Wan2.1 i2v / flf2v: the CLIP file, its tokenizer folder, image branch
        image_dim = write_tiny_clip(ckpt_dir, seed=seed + 4)
    if "boundary" in config:
        write_tiny_dit(os.path.join(ckpt_dir, config.low_noise_checkpoint), config, seed + 2)
        write_tiny_dit(os.path.join(ckpt_dir, config.high_noise_checkpoint), config, seed + 3)
    else:
        write_tiny_dit(ckpt_dir, config, seed + 2, image_dim)
    return ckpt_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=TASKS, help="a tiny Wan checkpoint for this task")
    what.add_argument("--vlm", choices=VLM_ARCHITECTURES, help="a tiny captioner (transformers layout)")
    what.add_argument("--prompt_extender", choices=PROMPT_EXTENDER_KINDS,
                      help="a tiny prompt-extension model: a text LM or a vision-language model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("ckpt_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with torch.no_grad():
        if args.vlm:
            write_tiny_vlm(args.vlm, args.ckpt_dir, args.seed)
        elif args.prompt_extender:
            write_tiny_prompt_extender(args.prompt_extender, args.ckpt_dir, args.seed)
        else:
            make_tiny_checkpoint(args.task, args.ckpt_dir, args.seed)
    written = args.vlm or (args.prompt_extender and f"{args.prompt_extender} prompt extender") or args.task
    log.info("wrote a tiny %s checkpoint to %s", written, args.ckpt_dir)


if __name__ == "__main__":
    main()
