"""Image-to-video with the I2V-A14B experts: mask + image latent concatenated on channels."""
import math

import torch
import torch.nn.functional as F

from .. import flow
from ..jobs import Job
from ..settings import SettingsError
from ..utils.video_io import image_to_frames, load_image, to_model_range
from .common import draw_noise, encode_prompts, require, resolve_seed


def i2v_latent_size(image_width, image_height, max_area, vae_stride=(4, 8, 8), patch_size=(1, 2, 2)):
    """The reference's output grid for an image: its aspect ratio kept within max_area pixels,
    snapped to whole DiT patches. Returns (lat_h, lat_w)."""
    aspect = image_height / image_width
    lat_h = round(math.sqrt(max_area * aspect) // vae_stride[1] // patch_size[1] * patch_size[1])
    lat_w = round(math.sqrt(max_area / aspect) // vae_stride[2] // patch_size[2] * patch_size[2])
    return lat_h, lat_w


def first_frame_mask(frame_num, lat_h, lat_w, device=None):
    """[4, T, lat_h, lat_w]: ones for latent frame 0 (the given image), zeros after. Pixel frame 0
    is repeated four times in front so every latent frame folds four pixel frames into channels."""
    mask = torch.zeros(1, frame_num + 3, lat_h, lat_w, device=device)
    mask[:, :4] = 1
    return mask.view(1, (frame_num + 3) // 4, 4, lat_h, lat_w).transpose(1, 2)[0]


def prepare_i2v(models, generation, image=None):
    """`image` (a PIL image) or generation.image (a path) starts the video, within generation.max_area
    (default: the area of generation.size) with the image's aspect ratio."""
    g = generation
    image = image if image is not None else load_image(require(g.image, "image", g.task))
    seed = resolve_seed(g.seed)
    max_area = g.max_area or g.size[0] * g.size[1]
    stride, patch = models.config.vae_stride, models.config.patch_size
    pixels = to_model_range(image_to_frames(image))[:, 0]
    lat_h, lat_w = i2v_latent_size(pixels.shape[2], pixels.shape[1], max_area, stride, patch)
    if lat_h < 2 or lat_w < 2:
        raise SettingsError("max_area", f"{max_area} is too small for a {pixels.shape[2]}x{pixels.shape[1]} image")
    height, width = lat_h * stride[1], lat_w * stride[2]
    resized = F.interpolate(pixels[None], size=(height, width), mode="bicubic")[0]
    video = torch.cat([resized[:, None], torch.zeros(3, g.frame_num - 1, height, width)], dim=1)
    latent = models.encode_video(video)
    y = torch.cat([first_frame_mask(g.frame_num, lat_h, lat_w, latent.device), latent])
    shape = (models.config.out_dim, latent.shape[1], lat_h, lat_w)
    context, context_null = encode_prompts(models, g.prompt, g.n_prompt, g.sampling.guide_scale)
    seq_len = math.ceil(shape[1] * lat_h * lat_w / (patch[1] * patch[2]))
    record = dict(g.replace(seed=seed).to_dict(), output_size=[width, height])
    return Job(draw_noise(shape, seed, models.device), context, context_null, flow.ConcatCondition(y), g.sampling,
               seq_len, record=record)
