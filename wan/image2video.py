"""WanI2V: image-to-video with the I2V-A14B experts (mask + image latent concatenated on channels)."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Job, WanTaskBase, check_frame_num, resolve_seed
from .errors import WanInputError
from .utils.video_io import image_to_frames, to_model_range


def i2v_latent_size(image_width, image_height, max_area, vae_stride=(4, 8, 8), patch_size=(1, 2, 2)):
    """The reference's output grid for an image: keep its aspect ratio within max_area pixels,
    snapped to whole DiT patches. Returns (lat_h, lat_w)."""
    aspect = image_height / image_width
    lat_h = round(np.sqrt(max_area * aspect) // vae_stride[1] // patch_size[1] * patch_size[1])
    lat_w = round(np.sqrt(max_area / aspect) // vae_stride[2] // patch_size[2] * patch_size[2])
    return lat_h, lat_w


def first_frame_mask(frame_num, lat_h, lat_w, device=None):
    """[4, T, lat_h, lat_w]: ones for latent frame 0 (the given image), zeros after. Pixel frame 0
    is repeated four times in front so every latent frame folds four pixel frames into channels."""
    mask = torch.zeros(1, frame_num + 3, lat_h, lat_w, device=device)
    mask[:, :4] = 1
    return mask.view(1, (frame_num + 3) // 4, 4, lat_h, lat_w).transpose(1, 2)[0]


class WanI2V(WanTaskBase):
    def prepare(self, input_prompt, img, max_area=720 * 1280, frame_num=81, shift=5.0, sample_solver="unipc",
                sampling_steps=40, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        if img is None:
            raise WanInputError("i2v-A14B needs an input image (--image)")
        check_frame_num(frame_num)
        seed = resolve_seed(seed)
        image = to_model_range(image_to_frames(img))[:, 0]
        lat_h, lat_w = i2v_latent_size(image.shape[2], image.shape[1], max_area, self.vae_stride, self.patch_size)
        if lat_h < 2 or lat_w < 2:
            raise WanInputError(f"max_area {max_area} is too small for a {image.shape[2]}x{image.shape[1]} image")
        height, width = lat_h * self.vae_stride[1], lat_w * self.vae_stride[2]
        resized = F.interpolate(image[None], size=(height, width), mode="bicubic")[0]
        video = torch.cat([resized[:, None], torch.zeros(3, frame_num - 1, height, width)], dim=1)
        latent = self.vae.encode([video.to(self.device)])[0]
        y = torch.cat([first_frame_mask(frame_num, lat_h, lat_w, latent.device), latent])
        shape = (self.config.out_dim, latent.shape[1], lat_h, lat_w)
        context, context_null = self.encode_prompts(input_prompt, n_prompt, offload_model)
        seq_len = math.ceil(shape[1] * lat_h * lat_w / (self.patch_size[1] * self.patch_size[2]))
        settings = self.job_settings(size=[width, height], frame_num=frame_num, shift=shift,
                                     sample_solver=sample_solver, sampling_steps=sampling_steps,
                                     guide_scale=guide_scale, seed=seed, seq_len=seq_len, max_area=max_area)
        return Job(noise=self.draw_noise(shape, seed), context=context, context_null=context_null,
                   settings=settings, y=y)

    def generate(self, input_prompt, img, max_area=720 * 1280, frame_num=81, shift=5.0, sample_solver="unipc",
                 sampling_steps=40, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        """Returns the video [3, frame_num, H, W] in [-1, 1] whose first frame follows `img`."""
        job = self.prepare(input_prompt, img, max_area, frame_num, shift, sample_solver, sampling_steps,
                           guide_scale, n_prompt, seed, offload_model)
        return self.decode(self.denoise(job, offload_model))
