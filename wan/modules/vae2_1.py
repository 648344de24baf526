"""Wan2.1 video VAE (also used by Wan2.2 A14B): 4x8x8 compression, 16 latent channels.

State-dict keys equal the official `Wan2.1_VAE.pth`; the channel width and the latent size are
read from the checkpoint, so a small checkpoint with the same keys loads through the same class.
"""
import torch
import torch.nn as nn

from .vae_blocks import (
    CausalConv3d,
    CausalVideoVAE,
    HeadBlock,
    StreamingDecoder,
    StreamingEncoder,
    Resample,
    ResidualBlock,
    VideoVAEWrapper,
    load_vae,
    middle_block,
    read_vae_state,
    width_of,
)

__all__ = ["Wan2_1_VAE", "WanVAE_"]

MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]


class Encoder3d(StreamingEncoder):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_downsample, in_dim=3):
        super().__init__()
        dims = [dim * u for u in [1] + dim_mult]
        self.conv1 = CausalConv3d(in_dim, dims[0], 3, padding=1)
        layers = []
        last_level = len(dim_mult) - 1
        for level, (block_in, block_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(block_in, block_out))
                block_in = block_out
            if level != last_level:
                layers.append(Resample(block_out, "downsample3d" if temperal_downsample[level] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle_block(dims[-1])
        self.head = HeadBlock(dims[-1], z_dim)


class Decoder3d(StreamingDecoder):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample, out_dim=3):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + dim_mult[::-1]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_block(dims[0])
        layers = []
        last_level = len(dim_mult) - 1
        for level, (block_in, block_out) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                block_in //= 2  # the previous level's upsample conv halved the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(block_in, block_out))
                block_in = block_out
            if level != last_level:
                layers.append(Resample(block_out, "upsample3d" if temperal_upsample[level] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = HeadBlock(dims[-1], out_dim)


class WanVAE_(CausalVideoVAE):
    """The Wan2.1 VAE network. `encode(x, scale)` / `decode(z, scale)` as in the official module."""

    def __init__(self, dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_downsample=(False, True, True)):
        super().__init__()
        dim_mult, temperal_downsample = list(dim_mult), list(temperal_downsample)
        self._assemble(Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temperal_downsample),
                       Decoder3d(dim, z_dim, dim_mult, num_res_blocks, temperal_downsample[::-1]), z_dim)


class Wan2_1_VAE(VideoVAEWrapper):
    """Wan2.1 VAE wrapper: `encode(list of [3,F,H,W]) -> list of [16,T,H/8,W/8]`, `decode` the inverse."""

    name = "Wan2.1 VAE"
    spatial_stride = 8

    def __init__(self, z_dim=16, vae_pth="cache/vae_step_411000.pth", dtype=torch.float, device="cuda"):
        self._load(read_vae_state(vae_pth, "Wan2.1 VAE"), vae_pth, z_dim, dtype, device)

    def _load(self, state, source, z_dim, dtype, device, mean=MEAN, std=STD):
        dim = width_of(state, "encoder.conv1.weight", 0, 96)
        model = load_vae(lambda: WanVAE_(dim=dim, z_dim=z_dim), state, source, z_dim, dtype, device)
        self._setup(model, mean, std, z_dim, dtype, device)
