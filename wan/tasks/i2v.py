"""Image-to-video with the I2V-A14B experts: mask + image latent concatenated on channels."""
import math

import torch
import torch.nn.functional as F

from .. import flow
from ..jobs import Job
from ..settings import SettingsError
from ..utils.video_io import image_to_frames, load_image, to_model_range
from .common import draw_noise, encode_prompts, require, resolve_seed, tokens


def i2v_latent_size(image_width, image_height, max_area, vae_stride=(4, 8, 8), patch_size=(1, 2, 2)):
    """The reference's output grid for an image: its aspect ratio kept within max_area pixels,
    snapped to whole DiT patches. Returns (lat_h, lat_w)."""
    aspect = image_height / image_width
    lat_h = round(math.sqrt(max_area * aspect) // vae_stride[1] // patch_size[1] * patch_size[1])
    lat_w = round(math.sqrt(max_area / aspect) // vae_stride[2] // patch_size[2] * patch_size[2])
    return lat_h, lat_w


def first_frame_mask(frame_num, lat_h, lat_w, device=None, last=False):
    """[4, T, lat_h, lat_w]: ones for latent frame 0 (the given image) and, with `last`, for the last
    pixel frame (flf2v), zeros elsewhere. Pixel frame 0 is repeated four times in front so every
    latent frame folds four pixel frames into channels."""
    mask = torch.zeros(1, frame_num + 3, lat_h, lat_w, device=device)
    mask[:, :4] = 1
    if last:
        mask[:, -1] = 1
    return mask.view(1, (frame_num + 3) // 4, 4, lat_h, lat_w).transpose(1, 2)[0]


def output_grid(models, pixels, max_area):
    """(lat_h, lat_w) of the output for an image [3, H, W], or a setting error when max_area is too small."""
    lat_h, lat_w = i2v_latent_size(pixels.shape[2], pixels.shape[1], max_area, models.config.vae_stride,
                                   models.config.patch_size)
    if lat_h < 2 or lat_w < 2:
        raise SettingsError("max_area", f"{max_area} is too small for a {pixels.shape[2]}x{pixels.shape[1]} image")
    return lat_h, lat_w


def resized(pixels, height, width):
    """The reference's resize: bicubic, no antialias, not clamped."""
    return F.interpolate(pixels[None], size=(height, width), mode="bicubic")[0]


def concat_job(models, g, frames, lat_h, lat_w, mask, clip_images, seed):
    """The Job of the channel-concat tasks: noise, and y = mask + the latent of `frames` [3, F, H, W]; CLIP
    tokens of `clip_images` when the model has the image branch (Wan2.1)."""
    latent = models.encode_video(frames)
    y = torch.cat([mask.to(latent.device), latent])
    clip_fea = models.encode_images(clip_images) if "clip_checkpoint" in models.config else None
    shape = (models.config.out_dim, latent.shape[1], lat_h, lat_w)
    context, context_null = encode_prompts(models, g.prompt, g.n_prompt, g.sampling.guide_scale)
    seq_len = tokens(models, shape)
    stride = models.config.vae_stride
    record = dict(g.replace(seed=seed).to_dict(), output_size=[lat_w * stride[2], lat_h * stride[1]])
    return Job(draw_noise(shape, seed, models.device), context, context_null, flow.ConcatCondition(y, clip_fea),
               g.sampling, seq_len, record=record)


def prepare_i2v(models, generation, image=None):
    """`image` (a PIL image) or generation.image (a path) starts the video, within generation.max_area
    (default: the area of generation.size) with the image's aspect ratio. Wan2.1's i2v-14B also
    gives the DiT CLIP tokens of the image at its original resolution."""
    g = generation
    image = image if image is not None else load_image(require(g.image, "image", g.task))
    seed = resolve_seed(g.seed)
    pixels = to_model_range(image_to_frames(image))[:, 0]
    lat_h, lat_w = output_grid(models, pixels, g.max_area or g.size[0] * g.size[1])
    height, width = lat_h * models.config.vae_stride[1], lat_w * models.config.vae_stride[2]
    frames = torch.cat([resized(pixels, height, width)[:, None], torch.zeros(3, g.frame_num - 1, height, width)], 1)
    mask = first_frame_mask(g.frame_num, lat_h, lat_w)
    return concat_job(models, g, frames, lat_h, lat_w, mask, [pixels[:, None]], seed)
