"""Tiny random-weight VAE checkpoints in the official key layout (small channel widths only).

The layer structure (levels, residual blocks, attention, resample modes) and the latent size stay
official, so the key set equals the real checkpoint's and the file loads through Wan2_1_VAE /
Wan2_2_VAE unchanged.
"""


from ..modules import vae2_1, vae2_2
from ..utils.fileio import torch_save_atomic
from .randomize import randomize_


def write_tiny_wan21_vae(path, seed=0, dim=8):
    """Write a Wan2.1-layout VAE `.pth` with encoder/decoder base width `dim` (official: 96)."""
    _save(vae2_1.WanVAE_(dim=dim, z_dim=16), path, seed)
    return path


def write_tiny_wan22_vae(path, seed=0, dim=8, dec_dim=16):
    """Write a Wan2.2-layout VAE `.pth` with encoder width `dim` (official: 160) and decoder
    width `dec_dim` (official: 256)."""
    _save(vae2_2.WanVAE_(dim=dim, dec_dim=dec_dim, z_dim=48), path, seed)
    return path


def _save(model, path, seed):
    randomize_(model, seed)
    torch_save_atomic(model.state_dict(), path)
