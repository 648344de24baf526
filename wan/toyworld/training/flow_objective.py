"""Wan's flow-matching objective, with TI2V's image-conditioned samples.

A clean latent x0 and Gaussian noise eps give x_sigma = (1 - sigma) x0 + sigma eps; the network,
told t = 1000 sigma, predicts the velocity eps - x0 and is scored by mean squared error. This is
the convention the released sampler assumes (x0 = x_sigma - sigma v).

Image-conditioned samples (TI2V's image mode) keep latent frame 0 clean, as the sampler re-imposes
the image latent after every step: its tokens get t = 0 and carry no loss. In some of them a small
share of the noisy latent is blended into frame 0 (share exp(N(-3.5, 0.5)), about 3 %), the
branch of the official masks_like that inference never takes, which reads as a training-time
robustness measure. The other samples are text-only: every token at t, loss everywhere.
"""
from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
BLEND_LOG_MEAN, BLEND_LOG_STD = -3.5, 0.5


@dataclass
class StepDraws:
    """The per-sample randomness of one training step, drawn on the CPU (the model reads
    timesteps on the CPU without waiting for the GPU)."""

    clip: torch.Tensor  # long [B]: which training clip
    sigma: torch.Tensor  # [B] noise level in (0, 1)
    image: torch.Tensor  # bool [B]: image-conditioned (frame 0 clean, no loss there)
    blend: torch.Tensor  # [B] share of the noisy latent in frame 0 (0 when not blended)
    motion: torch.Tensor  # bool [B]: the caption carries the motion phrase
    drop: torch.Tensor  # bool [B]: the caption is replaced by the negative prompt

    def to(self, device):
        """All fields on `device` with one host-to-device copy."""
        packed = torch.stack([self.clip.float(), self.sigma, self.image.float(), self.blend, self.motion.float(),
                              self.drop.float()])
        if torch.device(device).type == "cuda":
            packed = packed.pin_memory()
        clip, sigma, image, blend, motion, drop = packed.to(device, non_blocking=True)
        return StepDraws(clip.long(), sigma, image > 0.5, blend, motion > 0.5, drop > 0.5)


def shifted_sigma(u, shift):
    """Wan's timestep shift applied to u in [0, 1]: shift u / (1 + (shift - 1) u). Shift > 1
    spends more samples at high noise, where shift-5 sampling spends most of its steps."""
    return shift * u / (1 + (shift - 1) * u)


def draw_step(batch, clips, generator, shift, image_share, blend_share, motion_share, drop_share):
    """One step's StepDraws: `clips` to choose from, sigma from the shifted uniform, the
    conditioning mix and the caption choices, all from the CPU `generator`."""
    def coin(p):
        return torch.rand(batch, generator=generator) < p

    image = coin(image_share)
    blended = image & coin(blend_share)
    share = torch.exp(BLEND_LOG_MEAN + BLEND_LOG_STD * torch.randn(batch, generator=generator))
    return StepDraws(
        clip=torch.randint(clips, (batch,), generator=generator),
        sigma=shifted_sigma(torch.rand(batch, generator=generator), shift),
        image=image,
        blend=torch.where(blended, share, torch.zeros(batch)),
        motion=coin(motion_share),
        drop=coin(drop_share),
    )


def token_timesteps(sigma, image, tokens, first_frame_tokens):
    """Per-token timesteps [B, tokens] (CPU): 1000 sigma, and 0 on the first latent frame's tokens
    of image-conditioned samples (the sampler's FirstFrameCondition does the same)."""
    t = (sigma * NUM_TRAIN_TIMESTEPS)[:, None].expand(-1, tokens).clone()
    t[:, :first_frame_tokens] *= (~image).float()[:, None]
    return t


def noisy_latents(x0, noise, sigma, image, blend):
    """x_sigma for every sample; frame 0 of image-conditioned samples is x0 plus `blend` of the
    way to x_sigma."""
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    conditioned = image.view(-1, 1, 1, 1)
    share = blend.view(-1, 1, 1, 1)
    first = torch.where(conditioned, x0[:, :, 0] + share * (noisy[:, :, 0] - x0[:, :, 0]), noisy[:, :, 0])
    return torch.cat([first[:, :, None], noisy[:, :, 1:]], dim=2)


def flow_matching_loss(prediction, x0, noise, image):
    """Mean squared error to the velocity eps - x0 over the scored elements: all frames of
    text-only samples, frames 1.. of image-conditioned ones."""
    error = (prediction.float() - (noise - x0)).square().mean(dim=(1, 3, 4))  # [B, F]
    scored = torch.ones_like(error)
    scored[:, 0] = (~image).float()
    return (error * scored).sum() / scored.sum()
