"""Models: the loaded networks of one checkpoint and where they run.

`Models.load(config, ckpt_dir, LoadOptions(...), parts=("t5", "vae", "dit"))` reads a checkpoint;
`Models(config, text_encoder=..., vae=..., experts=...)` wraps networks already in memory (a
benchmark's full-size random networks, a model being trained, a web UI's warm models). Either way
the rest of the toolkit sees the same object: text encoding, VAE encoding and decoding, the DiT
expert(s) with their placement hook, and the autocast they run under.

Multi-GPU (under torchrun, see wan.distributed): t5_fsdp / dit_fsdp shard those weights over the
ranks of a job, ulysses_size > 1 splits the DiT's tokens over the Ulysses group, cfg_parallel runs
the two guidance branches on the two halves of the ranks. The process groups come from
`wan.distributed.make_layout` when the script made one, else from the options over all ranks.
"""
import contextlib
import gc
import logging
import os
from functools import partial

import torch

from . import distributed
from .distributed import is_sharded, main_tqdm
from .errors import CheckpointError
from .modules.attention import set_attention_backend
from .modules.clip import CLIPModel
from .modules.model import WanModel
from .modules.t5 import T5EncoderModel
from .modules.vlm import VideoCaptioner
from .modules.vae2_1 import Wan2_1_VAE
from .modules.vae2_2 import Wan2_2_VAE
from .settings import LoadOptions, SettingsError
from .step_cache import enable_step_cache
from .utils.checkpoint import checkpoint_fingerprint
from .utils.video_io import to_model_range

log = logging.getLogger(__name__)

PARTS = ("t5", "vae", "clip", "dit")  # "clip" loads only for configs with a CLIP encoder; "vlm" is opt-in
VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(device=None):
    """A concrete device: 'cuda' becomes 'cuda:N', so it compares equal to a tensor's device."""
    device = torch.device(device) if device is not None else (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def vae_class_for(config):
    """Wan2.2 VAE for the 16x-compressing TI2V-5B family, Wan2.1 VAE otherwise."""
    return Wan2_2_VAE if config.vae_checkpoint == "Wan2.2_VAE.pth" else Wan2_1_VAE


def dit_subfolders(config):
    """DiT folders, low-noise expert first (index 0), as the velocity field expects."""
    if "boundary" in config:
        return (config.low_noise_checkpoint, config.high_noise_checkpoint)
    return (None,)


def parallel_layout(options):
    """The process groups the options run on: the script's `make_layout`, or one made here over all
    ranks (the official use_sp meaning: every rank in one Ulysses group)."""
    use_sp, cfg_parallel = options.ulysses_size > 1, options.cfg_parallel
    fsdp = options.t5_fsdp or options.dit_fsdp
    if not (use_sp or cfg_parallel or fsdp):
        return distributed.Layout()
    layout = distributed.current_layout()
    if layout.model_size == 1 and (use_sp or cfg_parallel):
        layout = distributed.make_layout(options.ulysses_size, cfg_parallel)
    if fsdp and layout.model_group is None:
        raise SettingsError("dit_fsdp" if options.dit_fsdp else "t5_fsdp",
                            "shards weights over the GPUs that run one job together (ulysses_size > 1 or "
                            "cfg_parallel under torchrun); here there is only one")
    return layout


class Models:
    """The networks of one checkpoint and their placement.

    experts: one DiT, or (low-noise, high-noise) for the A14B models. offload_model: keep each
    network on the CPU when it is not running. t5_cpu: run the text encoder on the CPU."""

    def __init__(self, config, text_encoder=None, vae=None, experts=(), device=None, offload_model=False,
                 t5_cpu=False, layout=None, fingerprint=None, captioner=None, clip=None):
        self.config = config
        self.text_encoder, self.vae, self.experts = text_encoder, vae, tuple(experts)
        self.captioner = captioner  # a wan.modules.vlm.VideoCaptioner for the continuation tasks
        self.clip = clip  # a wan.modules.clip.CLIPModel for Wan2.1's i2v / flf2v
        self.device = resolve_device(device)
        self.offload_model, self.t5_cpu = offload_model, t5_cpu
        self.layout = layout or distributed.Layout()
        self.cfg_parallel = distributed.CfgParallel(self.layout.cfg_group) if self.layout.cfg_size > 1 else None
        self.fingerprint = fingerprint

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, config, ckpt_dir, options=None, parts=PARTS):
        """Read `parts` of the checkpoint in `ckpt_dir` (official layout) and place them."""
        options = options or LoadOptions()
        if not os.path.isdir(ckpt_dir):
            raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
        if options.attention is not None:  # process-wide: every DiT's attention goes through one entry point
            try:
                set_attention_backend(options.attention)
            except ValueError as err:
                raise SettingsError("attention", f"{options.attention}: {err}") from None
        layout = parallel_layout(options)
        device = resolve_device(options.device)
        # The captioner first: a bad folder fails in seconds, before gigabytes of video model.
        captioner = cls._captioner(options, device) if "vlm" in parts and options.vlm_path else None
        text_encoder = cls._load_t5(config, ckpt_dir, options, device, layout) if "t5" in parts else None
        clip = None
        if "clip" in parts and "clip_checkpoint" in config:
            clip = CLIPModel(config.clip_dtype, "cpu", os.path.join(ckpt_dir, config.clip_checkpoint),
                             os.path.join(ckpt_dir, config.clip_tokenizer))
        vae = cls._load_vae(config, ckpt_dir, options, device) if "vae" in parts else None
        experts = cls._load_experts(config, ckpt_dir, options, device, layout) if "dit" in parts else ()
        return cls(config, text_encoder, vae, experts, device, options.offload_model, options.t5_cpu, layout,
                   checkpoint_fingerprint(ckpt_dir, config.__name__), captioner, clip)

    @staticmethod
    def _captioner(options, device):
        vlm_device = resolve_device(options.vlm_device) if options.vlm_device else device
        # Sharing a device with the video model: park the VLM on the CPU between captions.
        return VideoCaptioner(options.vlm_path, device=vlm_device, offload=vlm_device == device)

    @staticmethod
    def _load_t5(config, ckpt_dir, options, device, layout):
        log.info("loading T5 text encoder from %s", ckpt_dir)
        shard_fn = partial(distributed.shard_t5, device=device, group=layout.model_group) if options.t5_fsdp \
            else None
        return T5EncoderModel(text_len=config.text_len, dtype=config.t5_dtype, device="cpu",
                              checkpoint_path=os.path.join(ckpt_dir, config.t5_checkpoint),
                              tokenizer_path=os.path.join(ckpt_dir, config.t5_tokenizer), shard_fn=shard_fn)

    @staticmethod
    def _load_vae(config, ckpt_dir, options, device):
        log.info("loading VAE %s", config.vae_checkpoint)
        vae = vae_class_for(config)(vae_pth=os.path.join(ckpt_dir, config.vae_checkpoint), device=device,
                                    dtype=VAE_DTYPES[options.vae_dtype])
        if options.compile:
            vae.model.compile_decoder()
        return vae

    @staticmethod
    def _load_experts(config, ckpt_dir, options, device, layout):
        dtype = config.param_dtype if options.convert_model_dtype else torch.float32
        experts = []
        for subfolder in dit_subfolders(config):
            log.info("loading DiT %s", os.path.join(ckpt_dir, subfolder or ""))
            model = WanModel.from_pretrained(ckpt_dir, subfolder=subfolder, torch_dtype=dtype)
            if model.model_type != config.model_type:
                raise CheckpointError(f"{ckpt_dir}: the DiT is a {model.model_type} model, but "
                                      f"{config.__name__} needs {config.model_type}")
            if model.has_image_branch != ("clip_checkpoint" in config):  # Wan2.1 and Wan2.2 i2v share model_type
                needs = "with" if "clip_checkpoint" in config else "without"
                raise CheckpointError(f"{ckpt_dir}: {config.__name__} needs a DiT {needs} the CLIP image branch "
                                      f"(img_emb); this checkpoint is the other i2v family")
            if options.dit_fsdp:  # block by block from the CPU: the full model is never on one GPU
                distributed.shard_dit(model, device, layout.model_group)
            if options.ulysses_size > 1:
                distributed.enable_sequence_parallel(model, layout.ulysses_group)
            if options.fp8:
                model.quantize_fp8()
            enable_step_cache(model, options.step_cache)
            if options.compile:  # opt-in: fuses the element-wise work; the first steps pay the compile time
                model.compile_blocks()
            experts.append(model)
        return tuple(experts)

    # -- placement -------------------------------------------------------------------------
    def place(self, model):
        """Called before an expert runs: it goes to the device, and with two experts at most one is
        there (the other moves to the CPU first). FSDP-sharded experts stay where they are."""
        if is_sharded(model) or next(model.parameters()).device == self.device:
            return
        for other in self.experts:
            if other is not model and not is_sharded(other):
                other.to("cpu")
        model.to(self.device)

    def release(self):
        """After a DiT pass, with offload_model: every expert back to the CPU, memory freed."""
        if not self.offload_model:
            return
        for model in self.experts:
            if not is_sharded(model):
                model.to("cpu")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def autocast(self):
        """bf16 autocast on CUDA for fp32-stored DiT weights (the reference's behaviour)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.config.param_dtype)
        return contextlib.nullcontext()

    # -- text and pixels -------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, *prompts):
        """One [L, dim] embedding per prompt, on the device. Each prompt is encoded on its own, as the
        official pipelines do, so the numbers are theirs."""
        encoder = self.text_encoder
        where = torch.device("cpu") if self.t5_cpu else self.device
        movable = not self.t5_cpu and not is_sharded(encoder.model)  # an FSDP-sharded T5 stays on the GPUs
        if movable:
            encoder.model.to(self.device)
        contexts = [encoder([prompt], where)[0].to(self.device) for prompt in prompts]
        if self.offload_model and movable:
            encoder.model.cpu()
        return contexts

    @torch.no_grad()
    def encode_images(self, images):
        """CLIP tokens of images [3, 1, H, W] in [-1, 1] (any size: CLIP resizes): [N, 257, width]."""
        if self.clip is None:
            raise CheckpointError(f"{self.config.__name__} needs its CLIP image encoder, which was not loaded")
        self.clip.model.to(self.device)
        tokens = self.clip.visual([image.to(self.device) for image in images])
        if self.offload_model:
            self.clip.model.cpu()
        return tokens

    @torch.no_grad()
    def encode_frames(self, frames):
        """uint8 frames [F, H, W, 3] -> normalised latent [z, T, h, w] (fp32, on the device)."""
        return self.vae.encode([to_model_range(frames).to(self.device)])[0]

    @torch.no_grad()
    def encode_video(self, video):
        """A video [3, F, H, W] in [-1, 1] -> its latent."""
        return self.vae.encode([video.to(self.device)])[0]

    @torch.no_grad()
    def decode(self, latent):
        """Latent -> video [3, F, H, W] in [-1, 1] (fp32)."""
        return self.vae.decode([latent.to(self.device)])[0]

    @torch.no_grad()
    def decode_chunks(self, latent):
        """decode(latent) piece by piece along frames, as the causal VAE makes them: for writing the
        video while it is still being decoded."""
        chunks = self.vae.decode_chunks(latent.to(self.device))
        yield from main_tqdm(chunks, total=latent.shape[1], desc="decode", unit="latent frame")

    @property
    def latent_channels(self):
        return self.vae.z_dim if self.vae is not None else self.config.out_dim

    @property
    def num_train_timesteps(self):
        return self.config.num_train_timesteps
