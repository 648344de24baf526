"""Wan2.2 video VAE (TI2V-5B): 4x16x16 compression, 48 latent channels.

Differences from Wan2.1: a 2x2 pixel patchify before the encoder (12 input channels), residual
down/up levels with parameter-free shortcuts (AvgDown3D / DupUp3D), a wider decoder with its own
base width, and upsample convolutions that keep their channel count. State-dict keys equal the
official `Wan2.2_VAE.pth`; widths are read from the checkpoint.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .vae_blocks import (
    CausalConv3d,
    CausalVideoVAE,
    HeadBlock,
    StreamingDecoder,
    StreamingEncoder,
    Resample,
    ResidualBlock,
    Streaming,
    VideoVAEWrapper,
    channels_last,
    from_channels_last,
    load_vae,
    middle_block,
    read_vae_state,
    run_layers,
    width_of,
)

__all__ = ["Wan2_2_VAE", "WanVAE_"]

PATCH = 2

MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]


def patchify(x, patch=PATCH):
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p]; channel = c*p*p + col_offset*p + row_offset."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // patch, patch, w // patch, patch)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * patch * patch, t, h // patch, w // patch)


def unpatchify(x, patch=PATCH):
    """Inverse of `patchify`."""
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (patch * patch), patch, patch, t, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (patch * patch), t, h * patch, w * patch)


class AvgDown3D(nn.Module):
    """Parameter-free shortcut: fold (t, h, w) blocks into channels, then average channel groups."""

    def __init__(self, in_dim, out_dim, factor_t, factor_s=1):
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        self.out_dim = out_dim
        self.group = in_dim * factor_t * factor_s * factor_s // out_dim

    def forward(self, x):
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))  # zero frames in front up to a multiple of ft
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut: repeat channels, then unfold channel groups into (t, h, w) blocks."""

    def __init__(self, in_dim, out_dim, factor_t, factor_s=1):
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        self.out_dim = out_dim
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x):
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = channels_last(x).repeat_interleave(self.repeats, dim=-1).unflatten(-1, (self.out_dim, ft, fs, fs))
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [b, t, ft, h, fs, w, fs, out]
        return from_channels_last(x.reshape(b, t * ft, h * fs, w * fs, self.out_dim))


class Down_ResidualBlock(nn.Module, Streaming):
    """Residual blocks (+ downsample) plus an AvgDown3D shortcut from the level's input."""

    def __init__(self, in_dim, out_dim, num_res_blocks, temperal_downsample, down_flag):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temperal_downsample else 1, 2 if down_flag else 1)
        layers = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down_flag:
            layers.append(Resample(out_dim, "downsample3d" if temperal_downsample else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x, cache):
        return run_layers(self.downsamples, x, cache) + self.avg_shortcut(x)


class Up_ResidualBlock(nn.Module, Streaming):
    """Residual blocks (+ upsample) plus a DupUp3D shortcut from the level's input when upsampling."""

    def __init__(self, in_dim, out_dim, num_res_blocks, temperal_upsample, up_flag):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temperal_upsample else 1, 2) if up_flag else None
        layers = []
        for _ in range(num_res_blocks + 1):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up_flag:
            layers.append(Resample(out_dim, "upsample3d" if temperal_upsample else "upsample2d", out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x, cache):
        out = run_layers(self.upsamples, x, cache)
        if self.avg_shortcut is None:
            return out
        # On the first chunk the main path does not upsample in time; the reference then drops the
        # shortcut's leading frames, which is keeping as many trailing frames as the main path has.
        return out + self.avg_shortcut(x)[:, :, -out.shape[2]:]


class Encoder3d(StreamingEncoder):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_downsample, in_dim=3 * PATCH * PATCH):
        super().__init__()
        dims = [dim * u for u in [1] + dim_mult]
        self.conv1 = CausalConv3d(in_dim, dims[0], 3, padding=1)
        last_level = len(dim_mult) - 1
        self.downsamples = nn.Sequential(*[
            Down_ResidualBlock(block_in, block_out, num_res_blocks,
                               temperal_downsample[level] if level != last_level else False,
                               down_flag=level != last_level)
            for level, (block_in, block_out) in enumerate(zip(dims[:-1], dims[1:]))
        ])
        self.middle = middle_block(dims[-1])
        self.head = HeadBlock(dims[-1], z_dim)


class Decoder3d(StreamingDecoder):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample, out_dim=3 * PATCH * PATCH):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + dim_mult[::-1]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_block(dims[0])
        last_level = len(dim_mult) - 1
        self.upsamples = nn.Sequential(*[
            Up_ResidualBlock(block_in, block_out, num_res_blocks,
                             temperal_upsample[level] if level != last_level else False,
                             up_flag=level != last_level)
            for level, (block_in, block_out) in enumerate(zip(dims[:-1], dims[1:]))
        ])
        self.head = HeadBlock(dims[-1], out_dim)


class WanVAE_(CausalVideoVAE):
    """The Wan2.2 VAE network. `encode(x, scale)` / `decode(z, scale)` as in the official module."""

    def __init__(self, dim=160, dec_dim=256, z_dim=48, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_downsample=(False, True, True)):
        super().__init__()
        dim_mult, temperal_downsample = list(dim_mult), list(temperal_downsample)
        self._assemble(Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temperal_downsample),
                       Decoder3d(dec_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample[::-1]), z_dim)

    def to_encoder_input(self, x):
        return patchify(x)

    def from_decoder_output(self, x):
        return unpatchify(x)


class Wan2_2_VAE(VideoVAEWrapper):
    """Wan2.2 VAE wrapper: `encode(list of [3,F,H,W]) -> list of [48,T,H/16,W/16]`, `decode` the inverse.

    `c_dim` (the official encoder width) is accepted for compatibility; the encoder and decoder
    widths are read from the checkpoint."""

    name = "Wan2.2 VAE"
    spatial_stride = 16

    def __init__(self, z_dim=48, c_dim=160, vae_pth=None, dim_mult=(1, 2, 4, 4),
                 temperal_downsample=(False, True, True), dtype=torch.float, device="cuda"):
        self._load(read_vae_state(vae_pth, "Wan2.2 VAE"), vae_pth, z_dim, dtype, device, c_dim=c_dim,
                   dim_mult=dim_mult, temperal_downsample=temperal_downsample)

    def _load(self, state, source, z_dim, dtype, device, mean=MEAN, std=STD, c_dim=160, dim_mult=(1, 2, 4, 4),
              temperal_downsample=(False, True, True)):
        dim = width_of(state, "encoder.conv1.weight", 0, c_dim)
        dec_dim = width_of(state, "decoder.head.2.weight", 1, 256 * dim_mult[0]) // dim_mult[0]

        def build():
            return WanVAE_(dim=dim, dec_dim=dec_dim, z_dim=z_dim, dim_mult=dim_mult,
                           temperal_downsample=temperal_downsample)

        model = load_vae(build, state, source, z_dim, dtype, device)
        self._setup(model, mean, std, z_dim, dtype, device)
