"""The official Wan2.2 pipeline classes, with their constructor and `generate(...)` signatures, as thin
layers over load (wan.models) + prepare (wan.tasks) + run (wan.runner); and the documented
`TI2VInversionEditor`. Scripts written against the official code keep working:

    pipe = wan.WanTI2V(WAN_CONFIGS["ti2v-5B"], "Wan2.2-TI2V-5B", device_id=0, convert_model_dtype=True)
    video = pipe.generate("A red fox in the snow", size=(1280, 704), frame_num=121)   # [3, F, H, W] in [-1, 1]

Beyond the official arguments, the constructors take the toolkit's load options (device, compile,
vae_dtype, fp8, attention, step_cache, cfg_parallel, vlm_path...) and `load` (which networks).
"""
import torch

from . import tasks
from .configs import WAN_CONFIGS
from .models import Models
from .runner import Runner
from .settings import EditSettings, Generation, InversionSettings, LoadOptions, Sampling
from .tasks.continuation import DEFAULT_CONTINUATION_PROMPT, continuation_inputs
from .tasks.edit import inversion_result, load_source, prepare_inversion, prepare_regeneration
from .tasks.ti2v import fit_image
from .utils.video_io import load_image

VAE_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


class _Pipeline:
    task = None  # the task name its generate() runs

    def __init__(self, config, checkpoint_dir, device_id=0, rank=0, t5_fsdp=False, dit_fsdp=False, use_sp=False,
                 t5_cpu=False, init_on_cpu=True, convert_model_dtype=False, device=None,
                 load=("t5", "vae", "clip", "dit"),
                 compile_model=False, vae_dtype=torch.float32, cfg_parallel=False, step_cache=0.0, fp8=False,
                 attention=None, vlm_path=None, vlm_device=None):
        del rank  # the official argument; the rank comes from torch.distributed
        device = device or (f"cuda:{device_id}" if torch.cuda.is_available() else "cpu")
        ulysses = max(1, torch.distributed.get_world_size()) if use_sp and torch.distributed.is_initialized() else 1
        options = LoadOptions(device=device, t5_cpu=t5_cpu, convert_model_dtype=convert_model_dtype,
                              vae_dtype=VAE_DTYPE_NAMES[vae_dtype], compile=compile_model, fp8=fp8,
                              attention=attention, step_cache=step_cache, t5_fsdp=t5_fsdp, dit_fsdp=dit_fsdp,
                              ulysses_size=ulysses // (2 if cfg_parallel else 1), cfg_parallel=cfg_parallel,
                              vlm_path=vlm_path, vlm_device=vlm_device)
        self.config = config
        self.models = Models.load(config, checkpoint_dir, options, parts=(*load, "vlm"))
        if not init_on_cpu:
            for model in self.models.experts:
                model.to(self.models.device)
        self.device = self.models.device
        self.text_encoder, self.vae = self.models.text_encoder, self.models.vae
        if len(self.models.experts) == 2:
            self.low_noise_model, self.high_noise_model = self.models.experts
        elif self.models.experts:
            self.model = self.models.experts[0]
        self.sample_neg_prompt = config.sample_neg_prompt

    def _generate(self, offload_model, **values):
        """Prepare, denoise and decode one generation; [3, F, H, W] in [-1, 1]."""
        self.models.offload_model = offload_model
        generation = Generation.from_dict({**tasks.defaults(self.task), **values})
        job = tasks.prepare(self.models, generation)
        return self.models.decode(Runner(self.models).denoise(job))


def _sampling(shift, sample_solver, sampling_steps, guide_scale):
    return Sampling(solver=sample_solver, steps=sampling_steps, shift=shift, guide_scale=guide_scale)


class WanT2V(_Pipeline):
    """Text-to-video: t2v-A14B (two experts), t2v-14B / t2v-1.3B (Wan2.1, one)."""

    def __init__(self, config, checkpoint_dir, *args, **kwargs):
        self.task = _task_of(config, "t2v-A14B")
        super().__init__(config, checkpoint_dir, *args, **kwargs)

    def generate(self, input_prompt, size=(1280, 720), frame_num=81, shift=5.0, sample_solver="unipc",
                 sampling_steps=50, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        return self._generate(offload_model, prompt=input_prompt, n_prompt=n_prompt, size=size, frame_num=frame_num,
                              seed=seed, sampling=_sampling(shift, sample_solver, sampling_steps, guide_scale))


class WanI2V(_Pipeline):
    """Image-to-video with the I2V-A14B experts; `img` is a PIL image."""

    task = "i2v-A14B"

    def generate(self, input_prompt, img, max_area=720 * 1280, frame_num=81, shift=5.0, sample_solver="unipc",
                 sampling_steps=40, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        self.models.offload_model = offload_model
        generation = Generation(task=self.task, prompt=input_prompt, n_prompt=n_prompt, max_area=max_area,
                                frame_num=frame_num, seed=seed,
                                sampling=_sampling(shift, sample_solver, sampling_steps, guide_scale))
        job = tasks.prepare_i2v(self.models, generation, image=img)
        return self.models.decode(Runner(self.models).denoise(job))


class WanTI2V(_Pipeline):
    """TI2V-5B: text-to-video, or text+image-to-video when `img` (a PIL image) is given."""

    task = "ti2v-5B"

    def generate(self, input_prompt, img=None, size=(1280, 704), max_area=704 * 1280, frame_num=121, shift=5.0,
                 sample_solver="unipc", sampling_steps=50, guide_scale=5.0, n_prompt="", seed=-1,
                 offload_model=True):
        self.models.offload_model = offload_model
        generation = Generation(task=self.task, prompt=input_prompt, n_prompt=n_prompt, size=size,
                                max_area=max_area, frame_num=frame_num, seed=seed,
                                sampling=_sampling(shift, sample_solver, sampling_steps, guide_scale))
        job = tasks.prepare_ti2v(self.models, generation, image=img)
        return self.models.decode(Runner(self.models).denoise(job))


class _Continuation:
    """`v2v(video_path, prompt=None, **generate_kwargs)`: continue a clip from its last frame, with the
    captioner's description (after `prompt`, a prefix) as the prompt. Returns (video, prompt)."""

    def v2v(self, video_path, prompt=None, **generate_kwargs):
        image, prompt = continuation_inputs(self.models, video_path, prompt)
        return self.generate(prompt, image, **generate_kwargs), prompt


class WanV2V(_Continuation, WanI2V):
    """Continuation with the I2V-A14B experts."""

    task = "v2v-14B"


class WanV2V5B(_Continuation, WanTI2V):
    """Continuation with TI2V-5B."""

    task = "v2v-5B"


def _task_of(config, default):
    for name, candidate in WAN_CONFIGS.items():
        if candidate is config or candidate.__name__ == config.__name__:
            return name
    return default


class TI2VInversionEditor:
    """Edit videos with a Wan2.2 TI2V-5B checkpoint; load once, run many edits.

        editor = TI2VInversionEditor("Wan2.2-TI2V-5B", device="cuda")
        inversion = editor.invert("source.mp4", "A kitten ...", frame_num=49)
        edited = editor.generate_from_inversion(inversion, "A dog ...", target_image="dog.png")
    """

    def __init__(self, ckpt_dir, device=None, offload_model=False, t5_cpu=False, convert_model_dtype=False,
                 config=None, compile_model=False, vae_dtype=torch.float32, load=("t5", "vae", "dit"),
                 t5_fsdp=False, dit_fsdp=False, use_sp=False, cfg_parallel=False, step_cache=0.0, fp8=False,
                 attention=None):
        self.config = config or WAN_CONFIGS["ti2v-5B"]
        pipeline = WanTI2V(self.config, ckpt_dir, device=device, t5_cpu=t5_cpu,
                           convert_model_dtype=convert_model_dtype, compile_model=compile_model, vae_dtype=vae_dtype,
                           load=load, t5_fsdp=t5_fsdp, dit_fsdp=dit_fsdp, use_sp=use_sp, cfg_parallel=cfg_parallel,
                           step_cache=step_cache, fp8=fp8, attention=attention)
        self.models = pipeline.models
        self.models.offload_model = offload_model
        self.device = self.models.device

    @torch.no_grad()
    def invert(self, source_video, source_prompt, frame_num=17, max_area=704 * 1280, shift=5.0, inversion_steps=50,
               guide_scale_inversion=1.0, n_prompt="", scheme="euler", strength=1.0):
        """Invert the source clip to noise (or, with strength < 1, part of the way): a jobs.Inversion."""
        settings = EditSettings(frame_num=frame_num, max_area=max_area, n_prompt=n_prompt,
                                sampling=Sampling(solver="euler", shift=shift),
                                inversion=InversionSettings(scheme, inversion_steps, guide_scale_inversion, strength))
        source = load_source(self.config, source_video, frame_num, max_area)
        job = prepare_inversion(self.models, source, source_prompt, settings)
        return inversion_result(job, source, source_prompt, Runner(self.models).invert(job), self.models.fingerprint)

    @torch.no_grad()
    def generate_from_inversion(self, inversion, target_prompt, target_image=None, generation_steps=50,
                                guide_scale_generation=5.0, n_prompt="", sample_solver="euler", decode=True):
        """Regenerate from an inversion with a new first frame (a path or PIL image; None: the
        source's) and prompt. Returns [3, F, H, W] in [-1, 1] (or the latent with decode=False)."""
        s = inversion.settings
        settings = EditSettings(frame_num=inversion.source["frame_num"], n_prompt=n_prompt,
                                sampling=Sampling(sample_solver, generation_steps, s["shift"], guide_scale_generation),
                                inversion=InversionSettings(s["scheme"], s["steps"], s["guide_scale"], s["strength"]))
        if target_image is None:  # the source's, which the inversion kept fixed in frame 0
            first_frame = inversion.latent[:, :1]
        else:
            image = load_image(target_image) if not hasattr(target_image, "convert") else target_image
            first_frame = self.models.encode_frames(fit_image(image, tuple(inversion.source["size"])))
        job = prepare_regeneration(self.models, first_frame, target_prompt, settings,
                                   tasks.common.tokens(self.models, inversion.latent.shape))
        job.latent = inversion.latent
        latent = Runner(self.models).denoise(job)
        return self.models.decode(latent) if decode else latent


__all__ = ["WanT2V", "WanI2V", "WanTI2V", "WanV2V", "WanV2V5B", "TI2VInversionEditor", "DEFAULT_CONTINUATION_PROMPT"]
