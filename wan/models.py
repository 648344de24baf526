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
import hashlib
import logging
import os
from functools import partial

import torch

from . import distributed
from .distributed import is_sharded, main_tqdm
from .errors import CheckpointError
from .modules.attention import set_attention_backend
from .loading import (LoraSpec, apply_loras, build_dit, build_t5, build_vae, check_dit_for_task, locate, read_dit,
                      read_t5, read_vae, tokenizer_folder)
from .loading.sources import resolve_source
from .modules.clip import CLIPModel
from .modules.vlm import VideoCaptioner
from .settings import LoadOptions, SettingsError
from .step_cache import enable_step_cache
from .streaming import is_streamed, stream_blocks
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


def parts_fingerprint(sources, name):
    """A cheap identity of the checkpoint's parts (config files and weight file sizes, no weights read)."""
    digest = hashlib.sha256(name.encode())
    if sources.source:
        digest.update(checkpoint_fingerprint(resolve_source(sources.source)).encode())
    for part in [*sources.dit.values(), sources.vae, sources.t5, sources.clip]:
        if part is not None and part.layout == "file":
            digest.update(f"{part.path}:{os.path.getsize(part.path)}".encode())
    return digest.hexdigest()[:16]


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
    def load(cls, config, ckpt_dir=None, options=None, parts=PARTS):
        """Read `parts` of a checkpoint and place them. `ckpt_dir`: an official folder, a Diffusers
        pipeline folder or a Hugging Face repo id in the local cache (wan.loading.locate); single
        files in `options` (dit, vae, t5, ...) replace or supply parts; LoRAs in `options` are applied."""
        options = options or LoadOptions()
        if options.attention is not None:  # process-wide: every DiT's attention goes through one entry point
            try:
                set_attention_backend(options.attention)
            except ValueError as err:
                raise SettingsError("attention", f"{options.attention}: {err}") from None
        layout = parallel_layout(options)
        device = resolve_device(options.device)
        # The captioner first: a bad folder fails in seconds, before gigabytes of video model.
        captioner = cls._captioner(options, device) if "vlm" in parts and options.vlm_path else None
        need = [{"t5": "t5", "vae": "vae", "dit": "dit", "clip": "clip"}[p] for p in parts
                if p in ("t5", "vae", "dit") or (p == "clip" and "clip_checkpoint" in config)]
        sources = locate(ckpt_dir, dit=options.dit, dit_high=options.dit_high, dit_low=options.dit_low,
                         vae=options.vae, t5=options.t5, clip=options.clip, tokenizer=options.tokenizer,
                         need=tuple(need) + (("tokenizer",) if "t5" in need else ()))
        text_encoder = cls._load_t5(config, sources, options, device, layout) if "t5" in need else None
        clip = cls._load_clip(config, sources) if "clip" in need else None
        vae = cls._load_vae(config, sources, options, device) if "vae" in need else None
        experts = cls._load_experts(config, sources, options, device, layout) if "dit" in need else ()
        return cls(config, text_encoder, vae, experts, device, options.offload_model, options.t5_cpu, layout,
                   parts_fingerprint(sources, config.__name__), captioner, clip)

    @staticmethod
    def _captioner(options, device):
        vlm_device = resolve_device(options.vlm_device) if options.vlm_device else device
        # Sharing a device with the video model: park the VLM on the CPU between captions.
        return VideoCaptioner(options.vlm_path, device=vlm_device, offload=vlm_device == device)

    @staticmethod
    def _load_t5(config, sources, options, device, layout):
        shard_fn = partial(distributed.shard_t5, device=device, group=layout.model_group) if options.t5_fsdp \
            else None
        state, _ = read_t5(sources.t5, config.t5_dtype)
        return build_t5(state, tokenizer_folder(sources.tokenizer), config.text_len, config.t5_dtype, "cpu", shard_fn,
                        source=sources.t5.path)

    @staticmethod
    def _load_clip(config, sources):
        return CLIPModel(config.clip_dtype, "cpu", sources.clip.path, None)

    @staticmethod
    def _load_vae(config, sources, options, device):
        state, vae_config = read_vae(sources.vae)
        wanted = "2.2" if config.vae_checkpoint == "Wan2.2_VAE.pth" else "2.1"
        if vae_config["version"] != wanted:
            raise CheckpointError(f"{sources.vae.path} is a Wan{vae_config['version']} VAE; {config.__name__} "
                                  f"needs the Wan{wanted} VAE ({config.vae_checkpoint})")
        if sources.vae_mean is not None:  # a Diffusers folder records its latent statistics
            vae_config.update(mean=sources.vae_mean, std=sources.vae_std)
        vae = build_vae(state, vae_config, VAE_DTYPES[options.vae_dtype], device)
        if options.compile:
            vae.model.compile_decoder()
        return vae

    @staticmethod
    def _load_experts(config, sources, options, device, layout):
        if ("boundary" in config) != sources.has_experts():
            needs = "two experts (high- and low-noise)" if "boundary" in config else "one DiT"
            raise CheckpointError(f"{config.__name__} needs {needs}; {sources.source or 'the given files'} has "
                                  f"{'two experts' if sources.has_experts() else 'one DiT'}")
        dtype = config.param_dtype if options.convert_model_dtype else torch.float32
        experts = {}
        for role, part in sources.dit.items():
            state, dit_config = read_dit(part)
            check_dit_for_task(dit_config, config, part.path)
            experts[role] = build_dit(state, dit_config, dtype, fp8_matmul=options.fp8 and device.type == "cuda")
        loras = [LoraSpec.parse(text) for text in options.lora] + \
            [LoraSpec.parse(text, "high") for text in options.lora_high] + \
            [LoraSpec.parse(text, "low") for text in options.lora_low]
        if loras:
            apply_loras(experts, loras)
        ordered = [experts[role] for role in (("low", "high") if "boundary" in config else ("main",))]
        for model in ordered:
            if options.dit_fsdp:  # block by block from the CPU: the full model is never on one GPU
                distributed.shard_dit(model, device, layout.model_group)
            if options.ulysses_size > 1:
                distributed.enable_sequence_parallel(model, layout.ulysses_group)
            if options.fp8:
                model.quantize_fp8()
            enable_step_cache(model, options.step_cache)
            if options.compile:  # opt-in: fuses the element-wise work; the first steps pay the compile time
                model.compile_blocks()
            if options.offload_model == "blocks" and device.type == "cuda":
                stream_blocks(model, device)
        return tuple(ordered)

    # -- placement -------------------------------------------------------------------------
    def place(self, model):
        """Called before an expert runs: it goes to the device, and with two experts at most one is
        there (the other moves to the CPU first). FSDP-sharded experts stay where they are."""
        if is_sharded(model) or is_streamed(model) or next(model.parameters()).device == self.device:
            return
        for other in self.experts:
            if other is not model and not (is_sharded(other) or is_streamed(other)):
                other.to("cpu")
        model.to(self.device)

    def release(self):
        """After a DiT pass, with offload_model: every expert back to the CPU, memory freed."""
        if not self.offload_model:
            return
        for model in self.experts:
            if not (is_sharded(model) or is_streamed(model)):
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
