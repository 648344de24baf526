"""Small helpers with the official Wan2.2 names: best_output_size, masks_like, save_video, str2bool.

Call conventions follow Wan2.2's `wan/utils/utils.py`, so scripts
written against the official codebase keep working. Differences, all deliberate: save_video needs no
torchvision, writes atomically through `wan.utils.video_io.write_video_streamed` and raises on failure
instead of logging and returning.
"""
import argparse
import math
import os
import tempfile
import uuid

import torch

from .video_io import write_video_streamed

# imageio's quality=8 (what the reference passes) becomes libx264 crf int((1 - 8/10) * 51) = 10.
REFERENCE_CRF = 10


def best_output_size(w, h, dw, dh, expected_area):
    """Output (width, height), multiples of (dw, dh), with area near `expected_area` and aspect near w/h.

    Two candidates: floor the width to dw first, or floor the height to dh first; the one whose
    aspect ratio is closer to w/h wins, ties going to the height-first candidate (as the reference).
    """
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow

    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh)
    ratio1 = ow1 / oh1

    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    ratio2 = ow2 / oh2

    score1 = max(ratio / ratio1, ratio1 / ratio)
    score2 = max(ratio / ratio2, ratio2 / ratio)
    if score1 < score2:
        return ow1, oh1
    return ow2, oh2


def masks_like(tensor, zero=False, generator=None, p=0.2):
    """Two lists of ones shaped like the tensors in `tensor`; with `zero`, latent frame 0 is masked.

    zero=True, no generator (inference): index 0 of dim 1 is 0 in both outputs.
    zero=True with a generator (training): with probability p, out1[:, 0] becomes one scalar
    exp(N(-3.5, 0.5)) and out2[:, 0] becomes 0; otherwise both stay ones.
    """
    if not isinstance(tensor, (list, tuple)):
        raise TypeError(f"masks_like expects a list of tensors, got {type(tensor).__name__}")
    out1 = [torch.ones_like(u) for u in tensor]
    out2 = [torch.ones_like(u) for u in tensor]
    if not zero:
        return out1, out2
    for u, v in zip(out1, out2):
        if generator is None:
            u[:, 0] = 0
            v[:, 0] = 0
            continue
        draw = torch.rand(1, generator=generator, device=generator.device).item()
        if draw < p:
            noise = torch.normal(mean=-3.5, std=0.5, size=(1,), generator=generator, device=generator.device)
            u[:, 0] = noise.exp().to(device=u.device, dtype=u.dtype)
            v[:, 0] = 0
    return out1, out2


def _grid(images, nrow, padding=2):
    """Tile [B, C, H, W] into one [C, H', W'] image the way torchvision's make_grid does.

    A batch of one is the image itself (no border); otherwise min(nrow, B) columns, a 2 px black
    border around and between tiles.
    """
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    count, channels, height, width = images.shape
    if count == 1:
        return images[0]
    cols = min(nrow, count)
    rows = math.ceil(count / cols)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_zeros(channels, rows * cell_h + padding, cols * cell_w + padding)
    for index in range(count):
        row, col = divmod(index, cols)
        top, left = row * cell_h + padding, col * cell_w + padding
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


def _video_to_uint8_frames(tensor, nrow, normalize, value_range):
    """[B, C, T, H, W] float -> [T, H', W', 3] uint8 with the reference's clamp, scale and truncation."""
    low, high = min(value_range), max(value_range)
    video = tensor.detach().float().clamp(low, high)
    if normalize:
        video = (video - low) / max(high - low, 1e-5)
    frames = torch.stack([_grid(video[:, :, t], nrow) for t in range(video.shape[2])])
    # The reference truncates (no rounding): keep it so outputs match byte for byte.
    return (frames * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def save_video(tensor, save_file=None, fps=30, suffix=".mp4", nrow=8, normalize=True, value_range=(-1, 1),
               crf=REFERENCE_CRF):
    """Write a [B, C, T, H, W] video tensor (values in `value_range`) as an H.264 mp4; return the path.

    `tensor` may also be an iterable of such tensors, consecutive pieces of one video along T (a
    chunked VAE decode, say): each piece is encoded while the next one is produced. With B > 1 each
    frame is a grid of the batch, `nrow` per row. Without `save_file` a fresh name in the temp
    folder is used. The file appears only when complete; errors are raised, not logged.
    """
    if save_file is None:
        save_file = os.path.join(tempfile.gettempdir(), f"wan_{uuid.uuid4().hex[:12]}{suffix}")
    pieces = [tensor] if torch.is_tensor(tensor) else tensor

    def frame_batches():
        for piece in pieces:
            if piece.dim() != 5:
                raise ValueError(f"save_video expects [B, C, T, H, W], got shape {tuple(piece.shape)}")
            yield _video_to_uint8_frames(piece, nrow, normalize, value_range)

    write_video_streamed(frame_batches(), save_file, fps=fps, crf=crf)
    return save_file


def str2bool(value):
    """argparse type for yes/no flags: yes/true/t/y/1 and no/false/f/n/0, any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "t", "y", "1"):
        return True
    if text in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (yes/no, true/false, 1/0), got {value!r}")
