"""What the prepare functions of every task share: seeds, noise, prompts, sizes."""
import random
import sys

import torch

from ..flow import seq_len_for
from ..settings import SettingsError, on_grid


def resolve_seed(seed):
    """A seed < 0 means "random": draw one (the job records the one used)."""
    return random.randint(0, sys.maxsize) if seed is None or seed < 0 else int(seed)


def draw_noise(shape, seed, device):
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, dtype=torch.float32, generator=generator, device=device)


def grid_of(config):
    """Pixel sizes must be multiples of this: VAE stride x DiT patch size."""
    return config.vae_stride[1] * config.patch_size[1]


def check_on_grid(config, size, name="size"):
    on_grid(name, size, grid_of(config), config.__name__)


def latent_shape(models, frame_num, width, height):
    stride = models.config.vae_stride
    return (models.latent_channels, (frame_num - 1) // stride[0] + 1, height // stride[1], width // stride[2])


def encode_prompts(models, prompt, n_prompt, guide_scale):
    """(context, context_null): the negative prompt (the model's default when empty) is encoded only
    when guidance needs it."""
    guided = any(s != 1.0 for s in (guide_scale if isinstance(guide_scale, tuple) else (guide_scale,)))
    if not guided:
        return models.encode_text(prompt)[0], None
    context, context_null = models.encode_text(prompt, n_prompt or models.config.sample_neg_prompt)
    return context, context_null


def tokens(models, shape):
    return seq_len_for(shape, models.config.patch_size)


def require(value, name, task):
    if not value:
        raise SettingsError(name, f"is required for {task}")
    return value
