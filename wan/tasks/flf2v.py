"""First-last-frame-to-video with Wan2.1 FLF2V-14B: the video starts at one image and ends at another.

Like i2v-14B, with the last frame added: to the VAE input (first frame, zero frames, last frame), to
the mask (the last pixel frame is known too) and to the CLIP tokens (first and last, in that order).
Unlike the upstream pipeline, a last frame of another size is resized to the output (bicubic, like
the first) rather than cropped, and the mask is built for any 4n+1 frame count, not only 81.
"""
import torch

from ..settings import SettingsError
from ..utils.video_io import image_to_frames, load_image, to_model_range
from .common import require, resolve_seed
from .i2v import concat_job, first_frame_mask, output_grid, resized


def prepare_flf2v(models, generation, first=None, last=None):
    """generation.first_frame and generation.last_frame (paths; or PIL images `first`, `last`) bound
    the video; the output takes the first frame's aspect ratio within generation.max_area."""
    g = generation
    if g.frame_num < 5:
        raise SettingsError("frame_num", f"must be at least 5 for {g.task} (a first and a last frame), got {g.frame_num}")
    first = first if first is not None else load_image(require(g.first_frame, "first_frame", g.task))
    last = last if last is not None else load_image(require(g.last_frame, "last_frame", g.task))
    seed = resolve_seed(g.seed)
    start, end = (to_model_range(image_to_frames(image))[:, 0] for image in (first, last))
    lat_h, lat_w = output_grid(models, start, g.max_area or g.size[0] * g.size[1])
    height, width = lat_h * models.config.vae_stride[1], lat_w * models.config.vae_stride[2]
    frames = torch.cat([resized(start, height, width)[:, None], torch.zeros(3, g.frame_num - 2, height, width),
                        resized(end, height, width)[:, None]], dim=1)
    mask = first_frame_mask(g.frame_num, lat_h, lat_w, last=True)
    return concat_job(models, g, frames, lat_h, lat_w, mask, [start[:, None], end[:, None]], seed)
