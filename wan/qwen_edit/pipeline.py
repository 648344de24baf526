"""One Qwen-Image-Edit-2509 edit with test-time loss guidance (TTLG), on the diffusers components.

The denoising loop is our own (the pipeline's `__call__` exposes neither the velocity nor a
place for a gradient step), built from the pipeline's helpers so that with guidance off it
computes exactly what `QwenImageEditPlusPipeline.__call__` does; the only deliberate difference
is that the latents are kept in fp32 throughout (a bf16 latent cannot hold small updates), which
changes nothing in an fp32 run.

Guidance, in the last K steps every M steps: x0 = x_t - sigma_t * v (v detached, so the gradient
never enters the transformer), unpack, de-normalise, VAE-decode to pixels, evaluate the losses,
and move an fp32 copy of the latents against the weighted sum of the per-term gradient
directions. Each term's gradient is normalised to unit RMS before weighting (so the weights
balance terms whose raw scales differ by orders of magnitude) and the sum is normalised again, so
`lr` is the RMS size of one update in latent units (latents have unit variance).
"""
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..errors import WanInputError
from ..settings import SettingsError
from .losses import VaeEncoderFeatures, edge_loss, gram_loss, gram_matrix, temporal_loss

# The model's own condition sizes (pixel areas), as in diffusers' pipeline_qwenimage_edit_plus.
CONDITION_IMAGE_AREA = 384 * 384
VAE_IMAGE_AREA = 1024 * 1024
TRANSFORMER_CONFIG_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "joint_attention_dim")


@dataclass(frozen=True)
class GuidanceSettings:
    """Loss weights (0 disables a term), step size and schedule of test-time loss guidance."""

    edge_scale: float = 0.0
    gram_scale: float = 0.0
    temporal_scale: float = 0.0
    lr: float = 0.03
    last_steps: int = 10
    every: int = 1

    def __post_init__(self):
        for name in ("edge_scale", "gram_scale", "temporal_scale", "lr"):
            if not getattr(self, name) >= 0:
                raise SettingsError(name, f"must not be negative, got {getattr(self, name)}")
        if self.last_steps < 0:
            raise SettingsError("last_steps", f"must be >= 0, got {self.last_steps}")
        if self.every < 1:
            raise SettingsError("every", f"must be >= 1, got {self.every}")

    @property
    def weights(self):
        return {"edge": self.edge_scale, "gram": self.gram_scale, "temporal": self.temporal_scale}

    def applies_at(self, step, num_steps):
        start = max(num_steps - self.last_steps, 0)
        active = self.lr > 0 and any(self.weights.values())
        return active and step >= start and (step - start) % self.every == 0


@dataclass
class LossTargets:
    """What a frame is compared against; a missing target drops its term."""

    edges: torch.Tensor = None  # [1, 1, H, W] in [0, 1]
    style_grams: list = None  # Gram matrices of the style reference's features
    previous: torch.Tensor = None  # [1, 3, H, W] in [-1, 1]


def calculate_dimensions(area, ratio):
    """Width and height of about `area` pixels at aspect `ratio` = w / h, on multiples of 32
    (the rule of diffusers' pipeline_qwenimage_edit_plus)."""
    width = (area * ratio) ** 0.5
    return round(width / 32) * 32, round(width / ratio / 32) * 32


class QwenFrameEditor:
    """Edits one frame at a time with a loaded QwenImageEditPlusPipeline (see loading.py).

    condition_area / vae_condition_area: pixel areas at which the condition images are given to
    the vision-language encoder and to the VAE (defaults: the model's, 384^2 and 1024^2); smaller
    areas trade quality for speed."""

    def __init__(self, pipe, guidance=GuidanceSettings(), condition_area=CONDITION_IMAGE_AREA,
                 vae_condition_area=VAE_IMAGE_AREA, feature_layers=None):
        self.pipe = pipe
        self.guidance = guidance
        self.condition_area = condition_area
        self.vae_condition_area = vae_condition_area
        pipe.vae.requires_grad_(False)  # guidance differentiates w.r.t. latents only
        self.features = VaeEncoderFeatures(pipe.vae, feature_layers)
        config = pipe.vae.config
        self._latents_mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        self._latents_std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)

    @classmethod
    def from_pretrained(cls, model_id, device="cpu", dtype=torch.float32, **kwargs):
        """Load a local Qwen-Image-Edit-2509 folder (see loading.py); kwargs as for the constructor."""
        from .loading import load_edit_pipeline

        return cls(load_edit_pipeline(model_id, device, dtype), **kwargs)

    @property
    def device(self):
        return self.pipe.transformer.device

    @property
    def grid(self):
        """Output sizes are multiples of this (VAE factor x 2x2 packing)."""
        return self.pipe.vae_scale_factor * 2

    def config(self):
        """What decides the outputs besides the job (for run reports): network sizes and dtype, the
        scheduler's settings, the condition sizes and the guidance settings."""
        transformer = self.pipe.transformer
        return {"transformer": {key: transformer.config[key] for key in TRANSFORMER_CONFIG_KEYS},
                "dtype": str(transformer.dtype).removeprefix("torch."), "device": str(self.device),
                "vae_latent_channels": self.pipe.vae.config.z_dim, "grid": self.grid,
                "scheduler": {k: v for k, v in self.pipe.scheduler.config.items() if not k.startswith("_")},
                "condition_area": self.condition_area, "vae_condition_area": self.vae_condition_area,
                "guidance": asdict(self.guidance)}

    # ---------------------------------------------------------------------------------------
    # the edit

    def edit(self, images, prompt, height, width, *, seed=0, num_inference_steps=50, true_cfg_scale=4.0,
             negative_prompt=" ", targets=None):
        """Edit conditioned on `images` (PIL, in "Picture 1, 2, ..." order) -> float [1, 3, H, W] in
        [-1, 1] (H, W floored to multiples of `grid`). CFG runs when true_cfg_scale > 1 and a
        negative prompt is given, as in the pipeline. `targets` feed the guidance losses."""
        height, width = self._output_size(height, width)
        conditions = self._encode_conditions(images, prompt, negative_prompt if true_cfg_scale > 1 else None)
        generator = torch.Generator().manual_seed(seed)  # CPU: same noise on every device
        with torch.no_grad():
            latents, image_latents = self.pipe.prepare_latents(
                conditions["vae_images"], 1, self.pipe.transformer.config.in_channels // 4, height, width,
                conditions["embeds"].dtype, self.device, generator)
        latents = latents.float()  # fp32 master copy
        img_shapes = [[(1, height // self.grid, width // self.grid), *conditions["shapes"]]]
        timesteps = self._timesteps(num_inference_steps, latents.shape[1])
        for step, t in enumerate(tqdm(timesteps, desc="denoising", leave=False)):
            with torch.no_grad():
                velocity = self._velocity(latents, image_latents, t, conditions, img_shapes, true_cfg_scale).float()
            if targets is not None and self.guidance.applies_at(step, len(timesteps)):
                latents = self._guide(latents, velocity, self.pipe.scheduler.sigmas[step].item(), targets,
                                      height, width)
            latents = self.pipe.scheduler.step(velocity, t, latents, return_dict=False)[0]
        with torch.no_grad():
            return self.decode(latents, height, width)

    def _output_size(self, height, width):
        height, width = height // self.grid * self.grid, width // self.grid * self.grid
        if height < self.grid or width < self.grid:
            raise WanInputError(f"output size must be at least {self.grid}x{self.grid} pixels")
        return height, width

    @torch.no_grad()
    def _encode_conditions(self, images, prompt, negative_prompt):
        """Condition images at the VL and VAE sizes, prompt embeddings (and negative ones for CFG)."""
        processor = self.pipe.image_processor
        vl_images, vae_images, shapes = [], [], []
        for image in images:
            ratio = image.width / image.height
            cond_w, cond_h = calculate_dimensions(self.condition_area, ratio)
            vae_w, vae_h = calculate_dimensions(self.vae_condition_area, ratio)
            vl_images.append(processor.resize(image, cond_h, cond_w))
            vae_images.append(processor.preprocess(image, vae_h, vae_w).unsqueeze(2))
            shapes.append((1, vae_h // self.grid, vae_w // self.grid))
        embeds, mask = self.pipe.encode_prompt(prompt=prompt, image=vl_images, device=self.device)
        negative = None
        if negative_prompt is not None:
            negative = self.pipe.encode_prompt(prompt=negative_prompt, image=vl_images, device=self.device)
        return {"vae_images": vae_images, "shapes": shapes, "embeds": embeds, "mask": mask, "negative": negative}

    def _timesteps(self, num_steps, image_seq_len):
        """The pipeline's schedule: sigmas linspace(1, 1/N, N), dynamic shift mu from the token count."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift, retrieve_timesteps

        if num_steps < 1:
            raise SettingsError("num_inference_steps", f"must be at least 1, got {num_steps}")
        scheduler = self.pipe.scheduler
        config = scheduler.config
        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        timesteps, _ = retrieve_timesteps(scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)
        return timesteps

    def _velocity(self, latents, image_latents, t, conditions, img_shapes, true_cfg_scale):
        velocity = self._transformer(latents, image_latents, t, conditions["embeds"], conditions["mask"],
                                     img_shapes, "cond")
        if conditions["negative"] is None:
            return velocity
        negative = self._transformer(latents, image_latents, t, *conditions["negative"], img_shapes, "uncond")
        combined = negative + true_cfg_scale * (velocity - negative)
        # the pipeline's per-token rescale back to the conditional prediction's norm
        return combined * (torch.norm(velocity, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    def _transformer(self, latents, image_latents, t, embeds, mask, img_shapes, context):
        transformer = self.pipe.transformer
        hidden = torch.cat([latents.to(transformer.dtype), image_latents], dim=1)
        timestep = t.expand(latents.shape[0]).to(transformer.dtype) / 1000
        with transformer.cache_context(context):
            out = transformer(hidden_states=hidden, timestep=timestep, guidance=None,
                              encoder_hidden_states_mask=mask, encoder_hidden_states=embeds,
                              img_shapes=img_shapes, attention_kwargs={}, return_dict=False)[0]
        return out[:, : latents.shape[1]]  # the generated image's tokens; the rest are conditions

    # ---------------------------------------------------------------------------------------
    # guidance

    def _guide(self, latents, velocity, sigma, targets, height, width):
        """One gradient step on an fp32 copy of the latents against the weighted losses of x0."""
        weights = self.guidance.weights
        with torch.enable_grad():
            x = latents.detach().float().requires_grad_()
            image = self.decode(x - sigma * velocity, height, width)
            losses = {name: loss for name, loss in self.losses(image, targets).items() if weights[name] > 0}
            direction = torch.zeros_like(x)
            for name, loss in losses.items():
                (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
                direction += weights[name] * grad / (_rms(grad) + 1e-12)
        logging.debug("TTLG sigma %.4f: %s", sigma, {name: round(loss.item(), 5) for name, loss in losses.items()})
        return (latents - self.guidance.lr * direction / (_rms(direction) + 1e-12)).detach()

    def losses(self, image, targets):
        """Every loss term whose target is present, on image [1, 3, H, W] in [-1, 1]."""
        terms = {}
        if targets.edges is not None:
            terms["edge"] = edge_loss(image, targets.edges.to(image))
        if targets.style_grams is not None:
            terms["gram"] = gram_loss(self.features(image), targets.style_grams)
        if targets.previous is not None:
            terms["temporal"] = temporal_loss(image, targets.previous.to(image))
        return terms

    @torch.no_grad()
    def style_grams(self, image):
        """Gram matrices of a style reference frame [1, 3, H, W] in [-1, 1]."""
        return [gram_matrix(feat) for feat in self.features(image.to(self.device))]

    # ---------------------------------------------------------------------------------------
    # latents <-> pixels

    def decode(self, packed_latents, height, width):
        """Packed normalised latents [1, tokens, 4C] -> float image [1, 3, H, W] in [-1, 1]."""
        vae = self.pipe.vae
        z = self.pipe._unpack_latents(packed_latents.float(), height, width, self.pipe.vae_scale_factor)
        z = z * self._latents_std.to(z.device) + self._latents_mean.to(z.device)  # de-normalise
        return vae.decode(z.to(vae.dtype), return_dict=False)[0][:, :, 0].float()


def _rms(tensor):
    return tensor.pow(2).mean().sqrt()
