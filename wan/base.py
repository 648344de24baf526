"""What every task class shares: loading the three networks, placing them, encoding prompts,
drawing noise, and running a prepared job through the flow core.

A generation is split in three steps that exchange plain tensors, so they can also run as separate
stages: `prepare_*` (text encoder, VAE encoder, noise) -> `Job`; `denoise(job)` (DiT only) -> latent;
`decode(latent)` (VAE only) -> video.
"""
import contextlib
import gc
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from functools import partial

import torch

from . import distributed, flow
from .distributed import is_sharded, main_tqdm
from .errors import CheckpointError, WanInputError
from .modules.attention import set_attention_backend
from .modules.model import WanModel
from .modules.t5 import T5EncoderModel
from .modules.vae2_1 import Wan2_1_VAE
from .modules.vae2_2 import Wan2_2_VAE
from .step_cache import enable_step_cache

log = logging.getLogger(__name__)


@dataclass
class Job:
    """Everything the denoising stage needs; tensors on the CPU or the device, settings plain values."""

    noise: torch.Tensor
    context: list
    context_null: list
    settings: dict
    y: torch.Tensor = None  # i2v-A14B channel-concat conditioning
    first_frame: torch.Tensor = None  # ti2v image mode: fixed first latent frame
    extras: dict = field(default_factory=dict)

    def condition(self, patch_size):
        if self.y is not None:
            return flow.ConcatCondition(self.y)
        if self.first_frame is not None:
            return flow.FirstFrameCondition(self.first_frame, patch_size)
        return flow.Condition()


def resolve_device(device=None, device_id=0):
    """A concrete device: 'cuda' becomes 'cuda:N', so it compares equal to a tensor's device."""
    device = torch.device(device) if device is not None else (
        torch.device(f"cuda:{device_id}") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_seed(seed):
    return random.randint(0, sys.maxsize) if seed is None or seed < 0 else int(seed)


def check_frame_num(frame_num):
    if frame_num < 1 or frame_num % 4 != 1:
        raise WanInputError(f"--frame_num must be 4n+1 (1, 5, 9, ..., 81, 121), got {frame_num}")


def parallel_layout(use_sp, cfg_parallel, fsdp):
    """The process groups a task's multi-GPU flags run on: the script's `make_layout`, or one made
    here over all ranks (the official use_sp meaning: every rank in one Ulysses group)."""
    if not (use_sp or cfg_parallel or fsdp):
        return distributed.Layout()
    layout = distributed.current_layout()
    if layout.model_size == 1 and (use_sp or cfg_parallel):
        cfg_size = 2 if cfg_parallel else 1
        ulysses_size = max(1, distributed.get_world_size() // cfg_size) if use_sp else 1
        layout = distributed.make_layout(ulysses_size, cfg_parallel)
    if use_sp != (layout.ulysses_size > 1) or cfg_parallel != (layout.cfg_size > 1):
        raise WanInputError(f"use_sp={use_sp} and cfg_parallel={cfg_parallel} do not match the parallel layout "
                            f"(ulysses {layout.ulysses_size}, cfg {layout.cfg_size}); launch with torchrun and "
                            "a world size that fits the flags")
    if fsdp and layout.model_group is None:
        raise WanInputError("--dit_fsdp/--t5_fsdp shard weights over the GPUs that run one job together "
                            "(--ulysses_size > 1 or --cfg_parallel under torchrun); here there is only one")
    return layout


def vae_class_for(config):
    """Wan2.2 VAE for the 16x-compressing TI2V-5B family, Wan2.1 VAE otherwise."""
    return Wan2_2_VAE if config.vae_checkpoint == "Wan2.2_VAE.pth" else Wan2_1_VAE


class WanTaskBase:
    """Loads T5, the VAE and the DiT expert(s) of `config` from `checkpoint_dir` (official layout).

    Multi-GPU (under torchrun, see wan.distributed): t5_fsdp / dit_fsdp shard those weights over the
    ranks of a job, use_sp splits the DiT's tokens over the Ulysses group, cfg_parallel runs the
    two guidance branches on the two halves of the ranks. The process groups come from
    `wan.distributed.make_layout` when the script made one, else from the flags over all ranks."""

    def __init__(self, config, checkpoint_dir, device_id=0, rank=0, t5_fsdp=False, dit_fsdp=False, use_sp=False,
                 t5_cpu=False, init_on_cpu=True, convert_model_dtype=False, device=None, load=("t5", "vae", "dit"),
                 compile_model=False, vae_dtype=torch.float32, cfg_parallel=False, step_cache=0.0, fp8=False,
                 attention=None):
        if not os.path.isdir(checkpoint_dir):
            raise CheckpointError(f"checkpoint directory not found: {checkpoint_dir}")
        if attention is not None:  # process-wide: the DiTs' attention goes through one entry point
            try:
                set_attention_backend(attention)
            except ValueError as err:
                raise WanInputError(f"--attention {attention}: {err}") from None
        if t5_fsdp and t5_cpu:
            raise WanInputError("--t5_fsdp shards T5 over the GPUs; it cannot be combined with --t5_cpu")
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.device = resolve_device(device, device_id)
        self.rank = rank
        self.layout = parallel_layout(use_sp, cfg_parallel, t5_fsdp or dit_fsdp)
        self.cfg_parallel = distributed.CfgParallel(self.layout.cfg_group) if cfg_parallel else None
        self.t5_cpu = t5_cpu
        self.init_on_cpu = init_on_cpu
        self.num_train_timesteps = config.num_train_timesteps
        self.param_dtype = config.param_dtype
        self.patch_size = config.patch_size
        self.vae_stride = config.vae_stride
        self.sample_neg_prompt = config.sample_neg_prompt
        self.text_encoder = self.vae = None
        self.experts = ()
        if "t5" in load:
            log.info("loading T5 text encoder from %s", checkpoint_dir)
            shard_fn = partial(distributed.shard_t5, device=self.device, group=self.layout.model_group) \
                if t5_fsdp else None
            self.text_encoder = T5EncoderModel(
                text_len=config.text_len, dtype=config.t5_dtype, device="cpu",
                checkpoint_path=os.path.join(checkpoint_dir, config.t5_checkpoint),
                tokenizer_path=os.path.join(checkpoint_dir, config.t5_tokenizer), shard_fn=shard_fn)
        if "vae" in load:
            log.info("loading VAE %s", config.vae_checkpoint)
            self.vae = vae_class_for(config)(vae_pth=os.path.join(checkpoint_dir, config.vae_checkpoint),
                                             device=self.device, dtype=vae_dtype)
            if compile_model:
                self.vae.model.compile_decoder()
        if "dit" in load:
            self.experts = tuple(self._load_dit(sub, convert_model_dtype) for sub in self.dit_subfolders())
            for model in self.experts:
                if dit_fsdp:  # block by block from the CPU: the full model is never on one GPU
                    distributed.shard_dit(model, self.device, self.layout.model_group)
                elif not init_on_cpu:
                    model.to(self.device)
                if use_sp:
                    distributed.enable_sequence_parallel(model, self.layout.ulysses_group)
            for model in self.experts:
                if fp8:
                    model.quantize_fp8()
                enable_step_cache(model, step_cache)
                if compile_model:  # opt-in: fuses the element-wise work; first steps pay the compile time
                    model.compile_blocks()

    # -- loading ---------------------------------------------------------------------------
    def dit_subfolders(self):
        """DiT folders, low-noise expert first (index 0), as `GuidedVelocity` expects."""
        if "boundary" in self.config:
            return (self.config.low_noise_checkpoint, self.config.high_noise_checkpoint)
        return (None,)

    def _load_dit(self, subfolder, convert_model_dtype):
        log.info("loading DiT %s", os.path.join(self.checkpoint_dir, subfolder or ""))
        dtype = self.param_dtype if convert_model_dtype else torch.float32
        model = WanModel.from_pretrained(self.checkpoint_dir, subfolder=subfolder, torch_dtype=dtype)
        if model.model_type != self.config.model_type:
            raise CheckpointError(f"{self.checkpoint_dir}: the DiT is a {model.model_type} model, "
                                  f"but task {self.config.__name__} needs {self.config.model_type}")
        return model

    # -- placement -------------------------------------------------------------------------
    def _placer(self, offload_model):
        """The hook GuidedVelocity calls before using an expert: at most one expert on the GPU
        when offloading (or when the models were loaded on the CPU). FSDP-sharded experts stay put."""
        def place(model):
            if is_sharded(model):
                return
            if next(model.parameters()).device != self.device:
                if offload_model or self.init_on_cpu:
                    for other in self.experts:
                        if other is not model and not is_sharded(other):
                            other.to("cpu")
                model.to(self.device)
        return place

    def _release(self, offload_model):
        if offload_model:
            for model in self.experts:
                if not is_sharded(model):
                    model.to("cpu")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def autocast(self):
        """bf16 autocast on CUDA for fp32-stored DiT weights (the reference's behaviour)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.param_dtype)
        return contextlib.nullcontext()

    # -- text and noise ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompt, n_prompt, offload_model):
        n_prompt = n_prompt or self.sample_neg_prompt
        if self.t5_cpu:
            context = self.text_encoder([prompt], torch.device("cpu"))
            context_null = self.text_encoder([n_prompt], torch.device("cpu"))
        else:
            movable = not is_sharded(self.text_encoder.model)  # an FSDP-sharded T5 stays on the GPUs
            if movable:
                self.text_encoder.model.to(self.device)
            context = self.text_encoder([prompt], self.device)
            context_null = self.text_encoder([n_prompt], self.device)
            if offload_model and movable:
                self.text_encoder.model.cpu()
        return [c.to(self.device) for c in context], [c.to(self.device) for c in context_null]

    def draw_noise(self, shape, seed):
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(shape, dtype=torch.float32, generator=generator, device=self.device)

    def check_size(self, width, height):
        """Height and width must fall on the DiT's token grid (VAE stride x patch size)."""
        step = self.vae_stride[1] * self.patch_size[1]
        if width <= 0 or height <= 0 or width % step or height % step:
            raise WanInputError(f"--size {width}*{height}: width and height must be positive multiples of {step} "
                                f"for {self.config.__name__}")

    def latent_shape(self, frame_num, height, width):
        z = self.vae.z_dim if self.vae is not None else self.config.out_dim
        return (z, (frame_num - 1) // self.vae_stride[0] + 1, height // self.vae_stride[1],
                width // self.vae_stride[2])

    def job_settings(self, **values):
        """Settings recorded with a job; the denoise stage reads only these."""
        base = dict(task=self.config.__name__, shift=None, sampling_steps=None, sample_solver=None,
                    guide_scale=None, boundary=self.config.get("boundary"), seed=None,
                    num_train_timesteps=self.num_train_timesteps)
        base.update(values)
        return base

    # -- the three steps -------------------------------------------------------------------
    def velocity_field(self, job, offload_model=True):
        """The guided velocity of a job: the one place that wires experts, guidance, conditioning,
        placement and CFG parallelism together, for sampling and inversion alike."""
        s = job.settings
        return flow.GuidedVelocity(
            self.experts, job.context, job.context_null, s["guide_scale"], seq_len=s["seq_len"],
            condition=job.condition(self.patch_size), boundary=s.get("boundary"),
            num_train_timesteps=self.num_train_timesteps, prepare=self._placer(offload_model),
            cfg_parallel=self.cfg_parallel)

    @torch.no_grad()
    def denoise(self, job, offload_model=True, progress=True, callback=None, schedule=None, start=0, latent=None):
        """Run the flow core on a prepared job; returns the final latent (fp32)."""
        s = job.settings
        schedule = schedule or flow.make_schedule(s["sample_solver"], s["sampling_steps"], s["shift"],
                                                  self.num_train_timesteps)
        field = self.velocity_field(job, offload_model)
        with self.autocast():
            start_latent = job.noise if latent is None else latent
            out = flow.sample(field, start_latent.to(self.device), schedule, field.condition, progress, callback,
                              start)
        self._release(offload_model)
        return out

    @torch.no_grad()
    def invert(self, job, schedule, scheme="euler", offload_model=True):
        """Integrate the job's latent (`job.noise`, here clean data) up `schedule` reversed."""
        field = self.velocity_field(job, offload_model)
        with self.autocast():
            out = flow.invert(field, job.noise.to(self.device), schedule, scheme, field.condition)
        self._release(offload_model)
        return out

    @torch.no_grad()
    def decode(self, latent):
        return self.vae.decode([latent.to(self.device)])[0]

    @torch.no_grad()
    def decode_chunks(self, latent):
        """decode(latent) piece by piece along frames, as the causal VAE makes them: for writing the
        video while it is still being decoded (wan.utils.utils.save_video takes the pieces)."""
        chunks = self.vae.decode_chunks(latent.to(self.device))
        yield from main_tqdm(chunks, total=latent.shape[1], desc="decode", unit="latent frame")
