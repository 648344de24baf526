"""Building blocks shared by the Wan2.1 and Wan2.2 video VAEs, and the wrapper logic both share.

Both VAEs are causal in time and run in chunks: the encoder sees frame 0 alone, then 4 frames at a
time; the decoder sees one latent frame at a time. Every temporal convolution remembers the last
frames of its input from the previous chunk (a `StreamCache` carries them), so the chunked result is
the streaming numerics of the official implementation, including its first-chunk special cases.
Module attribute names and Sequential indices follow the official checkpoints exactly.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, WanInputError
from ..utils.checkpoint import load_into, load_pth

# A k=3 temporal convolution needs the two frames before the chunk.
CACHE_FRAMES = 2
ENCODE_CHUNK = 4  # pixel frames per encoder chunk after the first frame
# From the third decoder chunk on, every cache holds its full CACHE_FRAMES frames: the decoder then
# sees the same shapes chunk after chunk (the first chunk has no history, the second a short one).
STEADY_CHUNK = 2


class StreamCache:
    """The trailing input frames each temporal convolution saw in the previous chunk.

    Keyed by module, so no global layer counter is needed; a fresh cache starts a new video."""

    def __init__(self):
        self._tails = {}

    def get(self, module):
        return self._tails.get(module)

    def put(self, module, frames):
        self._tails[module] = frames


class Streaming:
    """Marker for layers whose forward is (x, cache): they carry state from one chunk to the next."""


class CausalConv3d(nn.Conv3d, Streaming):
    """3D convolution padded only in front in time (2*p frames), p on both spatial sides.

    With a cache, the previous chunk's last frames replace (part of) the front padding."""

    def __init__(self, in_dim, out_dim, kernel_size, stride=1, padding=0):
        padding = nn.modules.utils._triple(padding)
        # Spatial zero padding is left to the convolution itself (no padded copy of the input).
        super().__init__(in_dim, out_dim, kernel_size, stride, padding=(0, padding[1], padding[2]))
        self.time_pad = 2 * padding[0]

    def forward(self, x, cache=None):
        front = self.time_pad
        if cache is not None and front:
            tail = cache.get(self)
            cache.put(self, _next_tail(tail, x))
            if tail is not None:
                x = torch.cat([tail, x], dim=2)
                front -= tail.shape[2]
        if front:
            x = F.pad(x, (0, 0, 0, 0, front, 0))
        return super().forward(x)


def _next_tail(tail, x):
    """The last CACHE_FRAMES frames of (previous tail + x), in memory of their own so x's can be freed.

    A multiplication by one, not clone(): in the compiled decoder (compile_decoder) inductor drops
    a clone of a slice and returns a view of the whole [tail, x] buffer instead, which the cache
    would keep alive until the next chunk (11 GB more at 720p). `* 1` gives the same values."""
    if x.shape[2] >= CACHE_FRAMES or tail is None:
        return x[:, :, -CACHE_FRAMES:] * 1
    return torch.cat([tail[:, :, -1:], x], dim=2)


def conv2d_per_frame(conv, x):
    """Apply a Conv2d to every frame of a [B, C, T, H, W] tensor, without folding time into batch."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, (1, *conv.stride), (0, *conv.padding))


def channels_last(x):
    """View of [B, C, T, H, W] as [B, T, H, W, C]. Rearrangements below are written on this view and
    their results turned back with `from_channels_last`, so they come out laid out channels-last
    (NDHWC), the layout in which cuDNN runs its convolutions without transposing (on the GPU the
    decoder runs in it throughout). The values never depend on the layout."""
    return x.permute(0, 2, 3, 4, 1)


def from_channels_last(x):
    """[B, T, H, W, C] -> [B, C, T, H, W] (a view)."""
    return x.permute(0, 4, 1, 2, 3)


def upsample2x_nearest(x):
    """Spatial 2x nearest upsampling of [B, C, T, H, W]; equals the reference's 'nearest-exact'
    interpolation (output pixel i reads input i // 2) bit for bit in any dtype, since values are
    only copied, and runs as one copy instead of the much slower interpolation kernel."""
    b, c, t, h, w = x.shape
    y = channels_last(x)[:, :, :, None, :, None].expand(b, t, h, 2, w, 2, c)
    return from_channels_last(y.reshape(b, t, 2 * h, 2 * w, c))


class RMS_norm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma (no bias). gamma is [C,1,1,1] for video, [C,1,1] for frames."""

    def __init__(self, dim, images=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x):
        return rms_normalize(x, self.gamma)


def rms_normalize(x, gamma):
    """x / ||x||_channels * sqrt(C) * gamma, written as x / rms(x) so that no factor depends on the
    channel count (one compiled kernel then serves every width). The mean of squares accumulates
    in fp32 so a bf16 model keeps the reference's normalisation accuracy; the floor stands in for
    the reference's 1e-12 floor on the norm (they differ only for activations below 1e-12)."""
    mean_square = x.float().square().mean(dim=1, keepdim=True).clamp_min(1e-24)
    return x * torch.rsqrt(mean_square).to(x.dtype) * gamma


def _normalize_silu(x, gamma):
    return F.silu(rms_normalize(x, gamma))


@functools.lru_cache(maxsize=None)
def fused_normalize_silu():
    """`_normalize_silu` compiled into one kernel: one read and one write of the activations instead
    of the five passes of the separate norm, scale, gain and SiLU kernels (those passes were about a
    tenth of a 720p decode on the GPU). Past torch's recompilation limit a new shape would run
    uncompiled, with the same values."""
    return torch.compile(_normalize_silu, dynamic=True)


def norm_silu(norm, x, fused=None):
    """silu(norm(x)) for an RMS_norm `norm` and a [B, C, T, H, W] x; fused (the default on the GPU)
    it runs as one compiled kernel over x seen as [pixels, C] (channels-last) or [B, C, pixels], so
    that one compilation per layout serves every layer, width and chunk length. Same values up to
    rounding. The fused kernel takes the gains detached, so when autograd needs their gradient
    (training the VAE) the separate layers run instead."""
    fused = x.is_cuda if fused is None else fused
    if not fused or torch.compiler.is_compiling() or (torch.is_grad_enabled() and norm.gamma.requires_grad):
        return _normalize_silu(x, norm.gamma)
    gamma = norm.gamma.detach().view(1, -1)  # detached: compiled code keeps parameter shapes static
    b, c, t, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        rows = fused_normalize_silu()(channels_last(x).reshape(-1, c), gamma)
        return from_channels_last(rows.view(b, t, h, w, c))
    return fused_normalize_silu()(x.reshape(b, c, -1), gamma[..., None]).view(b, c, t, h, w)


class ResidualBlock(nn.Module, Streaming):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim),
            nn.SiLU(),
            nn.Identity(),  # the official dropout slot (p=0); keeps the checkpoint's layer indices
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x, cache):
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        y = conv1(norm_silu(norm1, x), cache)
        return conv2(norm_silu(norm2, y), cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMS_norm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2)  # [bt, hw, 3c]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # [bt, 1, hw, c]
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.view(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module, Streaming):
    """Spatial 2x down/up sampling per frame, optionally with a 2x temporal step (the '3d' modes).

    `upsample_out_dim`: Wan2.1's upsample convolution halves the channels, Wan2.2's keeps them."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim, mode, upsample_out_dim=None):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            out_dim = dim // 2 if upsample_out_dim is None else upsample_out_dim
            # Index 0 is the parameter-free upsample/pad step; the conv is index 1 as in the checkpoint.
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x, cache):
        if self.mode == "upsample3d":
            x = self._upsample_time(x, cache)
        conv = self.resample[1]
        if self.mode.startswith("upsample"):
            x = upsample2x_nearest(x)
        else:
            x = F.pad(x, (0, 1, 0, 1))  # zero pad right and bottom, then a stride-2 conv
        x = conv2d_per_frame(conv, x)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x

    def _upsample_time(self, x, cache):
        if cache.get(self.time_conv) is None:
            # First chunk: frame 0 is not upsampled in time. Later chunks see it as absent, i.e. as
            # zeros, which is what an all-zero history gives the causal conv.
            b, c, _, h, w = x.shape
            cache.put(self.time_conv, x.new_zeros(b, c, CACHE_FRAMES, h, w))
            return x
        b, c, t, h, w = x.shape
        x = channels_last(self.time_conv(x, cache))  # [b, t, h, w, 2c]: two output frames per input frame
        x = x.unflatten(-1, (2, c)).permute(0, 1, 4, 2, 3, 5)  # [b, t, 2, h, w, c]
        return from_channels_last(x.reshape(b, 2 * t, h, w, c))

    def _downsample_time(self, x, cache):
        previous = cache.get(self.time_conv)
        cache.put(self.time_conv, x[:, :, -1:].clone())
        if previous is None:
            return x  # first chunk: frame 0 passes through alone
        return self.time_conv(torch.cat([previous, x], dim=2))  # windows (0,1,2), (2,3,4), ...


def middle_block(dim):
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


class HeadBlock(nn.Sequential, Streaming):
    """RMS_norm -> SiLU -> causal conv (the official Sequential indices 0, 1, 2)."""

    def __init__(self, in_dim, out_dim):
        super().__init__(RMS_norm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))

    def forward(self, x, cache):
        return self[2](norm_silu(self[0], x), cache)


def run_layers(layers, x, cache):
    """Run a Sequential, handing the stream cache to the layers that carry state across chunks."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, Streaming) else layer(x)
    return x


class StreamingEncoder(nn.Module):
    """conv1 -> downsamples -> middle -> head, every layer streaming through the chunk cache."""

    def forward(self, x, cache):
        x = self.conv1(x, cache)
        for stage in (self.downsamples, self.middle):
            x = run_layers(stage, x, cache)
        return self.head(x, cache)


class StreamingDecoder(nn.Module):
    """conv1 -> middle -> upsamples -> head, every layer streaming through the chunk cache."""

    def forward(self, x, cache):
        x = self.conv1(x, cache)
        for stage in (self.middle, self.upsamples):
            x = run_layers(stage, x, cache)
        return self.head(x, cache)


class CausalVideoVAE(nn.Module):
    """Shared encode/decode driver. Subclasses define `encoder`, `decoder`, `conv1` (posterior
    1x1x1 conv), `conv2` (latent 1x1x1 conv), `z_dim`, and `to_encoder_input` / `from_decoder_output`."""

    def _assemble(self, encoder, decoder, z_dim):
        """Register the parts in the official order: encoder, posterior conv, latent conv, decoder."""
        self.z_dim = z_dim
        self.decode_layout = torch.contiguous_format
        self.steady_decoder = None  # the decoder's forward for steady-state chunks, see compile_decoder
        self.encoder = encoder
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = decoder

    def use_channels_last(self):
        """Keep the convolution weights and the decoder's activations channels-last (NDHWC): on the
        GPU cuDNN then runs the convolutions without transposing to and from NCDHW around each one
        (about a tenth of the decode time at 720p), and the element-wise work runs vectorised.
        Same values in either layout."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                layout = torch.channels_last_3d if module.weight.dim() == 5 else torch.channels_last
                module.weight.data = module.weight.data.contiguous(memory_format=layout)
        self.decode_layout = torch.channels_last_3d
        return self

    def compile_decoder(self, **options):
        """Opt-in (the scripts' --compile): decode the steady-state chunks (STEADY_CHUNK on) through
        one torch.compile graph of the whole decoder, cache reads and writes included. Inductor
        fuses what eager mode runs as separate passes over the activations (norm + SiLU with the
        cache concatenation and the tail copy, residual and shortcut adds, up-sampling copies):
        on an H200 the 121-frame 720p decode goes from 4.0 to 3.3 s (docs/PERFORMANCE.md). The
        first two chunks run eagerly, so one compilation serves every video of a size. Same
        values up to rounding. A compiled function, not a module, so the state dict is unchanged.

        Inductor's locality reordering is off: it moves each cache concatenation's copy of the old
        tail (which depends only on the graph's inputs) to the start of the graph, and so allocates
        every concatenated buffer at once: 8.5 instead of 5.1 GB per 720p chunk (4.2 GB eager)."""
        options = {"fullgraph": True, "dynamic": False, **options}
        if options.get("backend", "inductor") == "inductor":
            options.setdefault("options", {"reorder_for_locality": False})
        self.steady_decoder = torch.compile(self.decoder.forward, **options)
        return self

    def to_encoder_input(self, x):
        return x

    def from_decoder_output(self, x):
        return x

    def posterior(self, x):
        """[B, C, F, H, W] -> (mu, logvar) of the latent posterior, each [B, z, 1 + (F-1)//4, h, w] in
        fp32, before the per-channel normalisation `encode` applies (logvar is not clamped). Extra
        trailing frames are ignored. Differentiable: training samples mu + exp(logvar / 2) * noise."""
        x = self.to_encoder_input(x)
        starts = range(1, x.shape[2] - ENCODE_CHUNK + 1, ENCODE_CHUNK)
        chunks = [x[:, :, :1]] + [x[:, :, i:i + ENCODE_CHUNK] for i in starts]
        cache = StreamCache()
        out = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        mu, logvar = self.conv1(out).float().chunk(2, dim=1)
        return mu, logvar

    def encode(self, x, scale):
        """[B, C, F, H, W] -> normalised posterior mean [B, z, 1 + (F-1)//4, h, w].
        `scale` = [mean, 1/std] per channel (the official convention); extra trailing frames are ignored."""
        mu, _ = self.posterior(x)
        mean, inv_std = (_channel_view(s, mu) for s in scale)
        return (mu - mean) * inv_std

    def decode(self, z, scale):
        """Normalised latent [B, z, T, h, w] -> video [B, C, 1 + 4(T-1), H, W] (not clamped)."""
        return torch.cat(list(self.decode_chunks(z, scale)), dim=2)

    def decode_chunks(self, z, scale):
        """The same video, yielded as the causal decoder makes it: one chunk [B, C, f, H, W] per
        latent frame (f = 1 for the first, then the temporal stride). With compile_decoder, the
        steady chunks run compiled unless autograd needs the result (a latent or decoder weights
        that require grad, grad mode on): training decodes eagerly."""
        mean, inv_std = (_channel_view(s, z) for s in scale)
        x = (z.float() / inv_std + mean).to(self.conv2.weight.dtype).contiguous(memory_format=self.decode_layout)
        x = self.conv2(x)
        cache = StreamCache()
        compiled = self.steady_decoder is not None and not self._needs_autograd(x)
        for i in range(x.shape[2]):
            chunk = x[:, :, i:i + 1]
            out = self._steady_chunk(chunk, cache) if compiled and i >= STEADY_CHUNK else self.decoder(chunk, cache)
            yield self.from_decoder_output(out)

    def _needs_autograd(self, x):
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.decoder.parameters()))

    def _steady_chunk(self, chunk, cache):
        """One steady chunk through the compiled decoder, its input made so that the graph's guards
        only ever see the chunk's own shape: a slice of the latent has strides that carry the
        latent's frame count (a video of another length recompiled the whole decoder, ~10 s on an
        H200), so the chunk is copied into a fresh tensor of the decode layout; and autograd is off
        (grad mode is guarded too; nothing here needs gradients, see decode_chunks)."""
        chunk = chunk.clone(memory_format=self.decode_layout)
        with torch.no_grad():
            return self.steady_decoder(chunk, cache)


def _channel_view(value, like):
    if torch.is_tensor(value):
        return value.to(device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return value


# ----------------------------------------------------------------------------------------------
# Wrapper logic shared by Wan2_1_VAE and Wan2_2_VAE


def width_of(state, key, axis, default):
    """A channel width read from a tensor shape; `default` when the key is absent (the strict
    loader then reports the missing key)."""
    tensor = state.get(key)
    return tensor.shape[axis] if tensor is not None and tensor.dim() > axis else default


def load_vae(build, state, path, z_dim, dtype, device):
    """Build the network on the meta device, load `state` strictly, move it to `device`."""
    found_z = width_of(state, "conv2.weight", 0, z_dim)
    if found_z != z_dim:
        raise CheckpointError(f"VAE checkpoint {path} has {found_z} latent channels, expected z_dim={z_dim}")
    with torch.device("meta"):
        model = build()
    load_into(model, state, str(path), dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


def read_vae_state(vae_pth, what):
    if vae_pth is None:
        raise CheckpointError(f"{what} checkpoint path (vae_pth) was not given")
    return load_pth(str(vae_pth), what)


class VideoVAEWrapper:
    """List-in, list-out encode/decode around a CausalVideoVAE (the official wrapper API)."""

    name = "VAE"
    spatial_stride = 8
    in_channels = 3

    @classmethod
    def from_state_dict(cls, state, source="VAE state dict", dtype=torch.float, device="cpu", mean=None, std=None):
        """The wrapper around a state dict already in memory (official key names, e.g. from
        wan.loading.read_vae); the latent size is read from it, mean/std default to the official
        constants."""
        wrapper = cls.__new__(cls)
        z_dim = width_of(state, "conv2.weight", 0, None)
        if z_dim is None:
            raise CheckpointError(f"{source} has no conv2.weight; not a Wan VAE state dict")
        overrides = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
        wrapper._load(state, source, z_dim, dtype, device, **overrides)
        return wrapper

    def _setup(self, model, mean, std, z_dim, dtype, device):
        self.model = model
        self.z_dim = z_dim
        self.dtype = dtype
        self.device = device
        # Kept in fp32 whatever the model dtype: normalisation is cheap and this keeps it exact.
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        self.scale = [self.mean, 1.0 / self.std]
        if torch.device(device).type == "cuda":
            model.use_channels_last()

    def encode(self, videos):
        """list of [3, F, H, W] in [-1, 1], F = 4n+1 -> list of normalised fp32 latents [z, T, h, w]."""
        self._check_list(videos, "encode", "videos")
        for index, video in enumerate(videos):
            self._check_video(index, video)
        return [
            self.model.encode(u.to(self.device, self.dtype).unsqueeze(0), self.scale).float().squeeze(0)
            for u in videos
        ]

    def decode(self, zs):
        """list of normalised latents [z, T, h, w] -> list of fp32 videos [3, 4(T-1)+1, H, W] in [-1, 1]."""
        self._check_list(zs, "decode", "latents")
        for index, z in enumerate(zs):
            self._check_latent(index, z)
        return [
            self.model.decode(z.to(self.device, self.dtype).unsqueeze(0), self.scale).float().clamp_(-1, 1).squeeze(0)
            for z in zs
        ]

    def decode_chunks(self, z):
        """One normalised latent [z, T, h, w] -> its video as it is decoded: fp32 chunks [3, f, H, W]
        in [-1, 1] that concatenate along frames to decode([z])[0] (to write while decoding)."""
        self._check_latent(0, z)
        for chunk in self.model.decode_chunks(z.to(self.device, self.dtype).unsqueeze(0), self.scale):
            yield chunk.float().clamp_(-1, 1).squeeze(0)

    def _check_latent(self, index, z):
        if not torch.is_tensor(z) or z.dim() != 4 or z.shape[0] != self.z_dim:
            raise WanInputError(
                f"{self.name} decode: latent {index} must be a [{self.z_dim}, T, h, w] tensor, got {_describe(z)}"
            )

    def _check_list(self, items, method, what):
        if not isinstance(items, (list, tuple)):
            raise WanInputError(f"{self.name} {method} expects a list of {what} tensors, got {_describe(items)}")

    def _check_video(self, index, video):
        if not torch.is_tensor(video) or video.dim() != 4 or video.shape[0] != self.in_channels:
            raise WanInputError(
                f"{self.name} encode: video {index} must be a [{self.in_channels}, F, H, W] tensor, "
                f"got {_describe(video)}"
            )
        frames, height, width = video.shape[1:]
        if frames % 4 != 1:
            raise WanInputError(f"{self.name} encode: video {index} has {frames} frames; expected 4n+1 (1, 5, 9, ...)")
        s = self.spatial_stride
        if height % s or width % s:
            raise WanInputError(
                f"{self.name} encode: video {index} is {height}x{width}; height and width must be multiples of {s}"
            )


def _describe(value):
    if torch.is_tensor(value):
        return f"tensor of shape {list(value.shape)}"
    return type(value).__name__
