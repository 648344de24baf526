"""Generate a video with a Wan model: text-to-video, image-to-video, text+image-to-video, or the
continuation of a video (v2v: its last frame and a VLM caption condition image-to-video).

    python generate.py --task ti2v-5B --ckpt_dir ./Wan2.2-TI2V-5B --size 1280*704 --prompt "..."
    python generate.py --task v2v-5B --ckpt_dir ./Wan2.2-TI2V-5B --video in.mp4 --vlm_path ./InternVL3_5-8B-HF

Flags and defaults follow the official Wan2.2 generate.py; --device and --fps are additions."""
import logging
import os
from datetime import datetime

import wan
from wan.configs import SUPPORTED_SIZES, WAN_CONFIGS
from wan import distributed, staged
from wan.errors import WanInputError
from wan.utils.cli import ArgumentParser, add_speed_flags, parse_size, run_cli, setup_logging, vae_dtype
from wan.utils.utils import save_video, str2bool
from wan.utils.video_io import load_image, probe_video

log = logging.getLogger("generate")

TASK_CLASSES = {"t2v-A14B": "WanT2V", "t2v-14B": "WanT2V", "t2v-1.3B": "WanT2V", "i2v-A14B": "WanI2V",
                "ti2v-5B": "WanTI2V", "v2v-14B": "WanV2V", "v2v-5B": "WanV2V5B"}
V2V_TASKS = ("v2v-14B", "v2v-5B")
DEFAULT_SIZE = {"ti2v-5B": "1280*704", "v2v-5B": "1280*704", "t2v-1.3B": "832*480"}
EXAMPLE_PROMPT = {
    "t2v": "A red fox trots through fresh snow in a quiet pine forest at sunrise, its breath steaming in the cold air.",
    "i2v": "The scene comes alive: gentle camera push-in, natural motion, soft light.",
}


def parse_args(argv=None):
    p = ArgumentParser(description="Generate a video from text and/or an image with Wan2.2 / Wan2.1.")
    p.add_argument("--task", default="t2v-A14B", choices=sorted(TASK_CLASSES), help="the task to run")
    p.add_argument("--size", default=None, help="output WIDTH*HEIGHT (i2v: maximum area); default per task")
    p.add_argument("--frame_num", type=int, default=None, help="frames to generate, 4n+1 (default per task)")
    p.add_argument("--ckpt_dir", required=True, help="checkpoint directory (official layout)")
    p.add_argument("--offload_model", type=str2bool, default=None,
                   help="move models to the CPU after use to save GPU memory (default: true)")
    p.add_argument("--ulysses_size", type=int, default=1,
                   help="Ulysses sequence-parallel size: the DiT's tokens split over this many GPUs (torchrun)")
    p.add_argument("--t5_fsdp", action="store_true", help="shard T5 over the GPUs of a job with FSDP (torchrun)")
    p.add_argument("--dit_fsdp", action="store_true", help="shard the DiT over the GPUs of a job with FSDP (torchrun)")
    p.add_argument("--cfg_parallel", action="store_true",
                   help="prompt and negative-prompt passes on two halves of the GPUs (torchrun; 2 x --ulysses_size "
                        "processes)")
    p.add_argument("--t5_cpu", action="store_true", help="run the T5 encoder on the CPU")
    p.add_argument("--convert_model_dtype", action="store_true", help="cast the DiT weights to bf16 on load")
    p.add_argument("--save_file", default=None, help="output .mp4 (default: a name from task, size, prompt, time)")
    p.add_argument("--prompt", default=None,
                   help="the text prompt (v2v: used as is without --vlm_path, else put before the caption)")
    p.add_argument("--n_prompt", default="", help="negative prompt (default: the official one)")
    p.add_argument("--use_prompt_extend", action="store_true", help="prompt rewriting (not available)")
    p.add_argument("--prompt_extend_method", default="local_qwen", choices=["dashscope", "local_qwen"])
    p.add_argument("--prompt_extend_model", default=None)
    p.add_argument("--prompt_extend_target_lang", default="zh", choices=["zh", "en"])
    p.add_argument("--base_seed", type=int, default=-1, help="random seed (-1: random)")
    p.add_argument("--image", default=None, help="input image (required for i2v-A14B, optional for ti2v-5B)")
    p.add_argument("--sample_solver", default=None, choices=["unipc", "dpm++", "euler"], help="default unipc")
    p.add_argument("--sample_steps", type=int, default=None, help="sampling steps (default per task)")
    p.add_argument("--sample_shift", type=float, default=None, help="noise schedule shift (default per task)")
    p.add_argument("--sample_guide_scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--video", default=None, help="v2v: the video to continue (its last frame starts the output)")
    p.add_argument("--vlm_path", default=None,
                   help="v2v: captioner checkpoint folder (InternVL3.5 -HF, Qwen2.5-VL, Qwen3-VL)")
    p.add_argument("--vlm_device", default=None, help="v2v: device of the captioner (default: --device)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:0 if available, else cpu)")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the mp4 (default per task)")
    p.add_argument("--stage", default="all", choices=list(staged.STAGE_MODELS),
                   help="run one stage: encode (T5 + VAE), denoise (DiT), decode (VAE); default all")
    p.add_argument("--stage_dir", default=None, help="folder for the files the stages exchange")
    p.add_argument("--save_every", type=int, default=0,
                   help="denoise stage: keep a resumable checkpoint every N steps (a rerun resumes from it)")
    p.add_argument("--stop_after_steps", type=int, default=None,
                   help="denoise stage: stop after N steps of this run (resumable), e.g. to fit a time slot")
    add_speed_flags(p)
    args = p.parse_args(argv)
    # What was given explicitly; a later stage checks it against the settings of its stage file.
    args.requested = dict(size=None if args.size is None else list(parse_size(args.size)), frame_num=args.frame_num,
                          shift=args.sample_shift, sampling_steps=args.sample_steps,
                          sample_solver=args.sample_solver, guide_scale=args.sample_guide_scale,
                          seed=None if args.base_seed < 0 else args.base_seed)
    return args


def check_args(args):
    cfg = WAN_CONFIGS[args.task]
    if args.ulysses_size < 1 or cfg.num_heads % args.ulysses_size:
        raise WanInputError(f"--ulysses_size {args.ulysses_size} must divide the {cfg.num_heads} attention heads "
                            f"of {args.task}")
    if distributed.launched_with_torchrun() and args.device:
        raise WanInputError("--device: under torchrun each process uses cuda:LOCAL_RANK")
    if args.use_prompt_extend:
        raise WanInputError("--use_prompt_extend: prompt extension is not available in this toolkit")
    if not os.path.isdir(args.ckpt_dir):
        raise WanInputError(f"--ckpt_dir: checkpoint directory not found: {args.ckpt_dir}")
    args.size = args.size or DEFAULT_SIZE.get(args.task, "1280*720")
    args.frame_num = args.frame_num or cfg.frame_num
    if args.frame_num < 1 or args.frame_num % 4 != 1:
        raise WanInputError(f"--frame_num must be 4n+1 (1, 5, 9, ..., 81, 121), got {args.frame_num}")
    width, height = parse_size(args.size)
    grid = cfg.vae_stride[1] * cfg.patch_size[1]
    if width <= 0 or height <= 0 or width % grid or height % grid:
        raise WanInputError(f"--size {args.size}: width and height must be positive multiples of {grid} "
                            f"for {args.task}")
    if args.size not in SUPPORTED_SIZES[args.task]:
        log.warning("--size %s is outside the sizes %s was trained at (%s); quality may suffer",
                    args.size, args.task, ", ".join(SUPPORTED_SIZES[args.task]))
    if args.task == "i2v-A14B" and not args.image:
        raise WanInputError("--image is required for i2v-A14B")
    check_v2v_args(args)
    if args.sample_steps is not None and args.sample_steps < 1:
        raise WanInputError(f"--sample_steps must be at least 1, got {args.sample_steps}")
    args.offload_model = True if args.offload_model is None else args.offload_model
    args.sample_steps = args.sample_steps or cfg.sample_steps
    args.sample_solver = args.sample_solver or "unipc"
    args.sample_shift = cfg.sample_shift if args.sample_shift is None else args.sample_shift
    args.sample_guide_scale = cfg.sample_guide_scale if args.sample_guide_scale is None else args.sample_guide_scale
    args.fps = args.fps or cfg.sample_fps
    if args.task not in V2V_TASKS:
        args.prompt = args.prompt or EXAMPLE_PROMPT["t2v" if args.image is None else "i2v"]
    return width, height


def check_v2v_args(args):
    if args.task not in V2V_TASKS:
        if args.video or args.vlm_path or args.vlm_device:
            raise WanInputError(f"--video/--vlm_path/--vlm_device are for {' and '.join(V2V_TASKS)}, not {args.task}")
        return
    if not args.video:
        raise WanInputError(f"--video is required for {args.task}")
    if args.image:
        raise WanInputError(f"--image is not used by {args.task}: the last frame of --video starts the output")
    if not args.prompt and not args.vlm_path:
        raise WanInputError(f"--vlm_path is required for {args.task} without --prompt (the captioner writes "
                            "the prompt)")
    probe_video(args.video)  # a missing or unreadable video fails before any model loads


def default_save_file(args):
    prompt = (args.prompt or os.path.basename(args.video or "staged")).replace(" ", "_").replace("/", "_")[:50]
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    return f"{args.task}_{args.size.replace('*', 'x')}_{args.ulysses_size}_{prompt}_{stamp}.mp4"


def build_task(args):
    task_class = getattr(wan, TASK_CLASSES[args.task])
    v2v = dict(vlm_path=args.vlm_path, vlm_device=args.vlm_device) if args.task in V2V_TASKS else {}
    return task_class(config=WAN_CONFIGS[args.task], checkpoint_dir=args.ckpt_dir, device=args.device,
                      t5_cpu=args.t5_cpu, convert_model_dtype=args.convert_model_dtype, compile_model=args.compile,
                      vae_dtype=vae_dtype(args.vae_dtype), load=staged.STAGE_MODELS[args.stage],
                      rank=distributed.get_rank(), t5_fsdp=args.t5_fsdp, dit_fsdp=args.dit_fsdp,
                      use_sp=args.ulysses_size > 1, cfg_parallel=args.cfg_parallel, step_cache=args.step_cache,
                      fp8=args.fp8, attention=args.attention, **v2v)


def prepare_job(task, args, width, height, image):
    """The encode step of every task: text embeddings, condition latents, noise."""
    common = dict(frame_num=args.frame_num, shift=args.sample_shift, sample_solver=args.sample_solver,
                  sampling_steps=args.sample_steps, guide_scale=args.sample_guide_scale, n_prompt=args.n_prompt,
                  seed=args.base_seed, offload_model=args.offload_model)
    if args.task in V2V_TASKS:
        image, args.prompt = task.continuation_inputs(args.video, args.prompt)
        log.info("continuing %s with the prompt: %s", args.video, args.prompt)
    if args.task in ("i2v-A14B", "v2v-14B"):
        return task.prepare(args.prompt, image, max_area=width * height, **common)
    if args.task in ("ti2v-5B", "v2v-5B"):
        return task.prepare(args.prompt, img=image, size=(width, height), max_area=width * height, **common)
    return task.prepare(args.prompt, size=(width, height), **common)


def check_stage_args(args):
    if args.stage == "all":
        return
    if not args.stage_dir:
        raise WanInputError(f"--stage {args.stage} needs --stage_dir")
    if not os.path.isdir(args.ckpt_dir):
        raise WanInputError(f"--ckpt_dir: checkpoint directory not found: {args.ckpt_dir}")
    if args.save_every < 0 or (args.stop_after_steps is not None and args.stop_after_steps < 1):
        raise WanInputError("--save_every must be >= 0 and --stop_after_steps >= 1")


def run_stages(args, image=None):
    """Encode and denoise, all in this process or the one --stage names; returns (task, latent)
    when the video is to be decoded and written here, else None."""
    fingerprint = staged.checkpoint_fingerprint(args.ckpt_dir, WAN_CONFIGS[args.task])
    encoded, latent_file = (os.path.join(args.stage_dir or "", name) for name in (staged.ENCODED, staged.LATENT))
    task = build_task(args)
    if args.stage in ("all", "encode"):
        width, height = parse_size(args.size)
        job = prepare_job(task, args, width, height, image)
        if args.stage == "encode":
            if distributed.is_main_process():
                staged.save_job(job, encoded, fingerprint)
            log.info("encoded to %s; next: --stage denoise", encoded)
            return None
    elif args.stage == "denoise":
        job = staged.load_job(encoded, fingerprint, task.device)
        staged.check_requested(job.settings, args.requested, encoded)
    if args.stage == "denoise":
        latent = staged.denoise(task, job, args.stage_dir, fingerprint, args.save_every, args.stop_after_steps,
                                args.offload_model)
        if latent is not None and distributed.is_main_process():
            staged.save_latent(latent, job.settings, fingerprint, latent_file)
            log.info("denoised to %s; next: --stage decode", latent_file)
        return None
    if args.stage == "all":
        latent = task.denoise(job, args.offload_model)
    else:
        latent, settings = staged.load_latent(latent_file, fingerprint)
        staged.check_requested(settings, args.requested, latent_file)
    return task, latent


def main(argv=None):
    env = distributed.init_distributed()  # a no-op without torchrun
    setup_logging(env.rank)
    args = parse_args(argv)
    check_stage_args(args)
    distributed.make_layout(args.ulysses_size, args.cfg_parallel)
    args.base_seed = distributed.shared_seed(args.base_seed)
    image = None
    if args.stage in ("all", "encode"):
        width, height = check_args(args)
        image = load_image(args.image) if args.image else None  # a bad image fails before models load
        log.info("task %s, size %dx%d, %d frames, %d %s steps, shift %s, guide %s", args.task, width, height,
                 args.frame_num, args.sample_steps, args.sample_solver, args.sample_shift, args.sample_guide_scale)
    else:
        args.offload_model = True if args.offload_model is None else args.offload_model
        args.size = args.size or DEFAULT_SIZE.get(args.task, "1280*720")
        args.fps = args.fps or WAN_CONFIGS[args.task].sample_fps
    args.device = args.device or env.device
    decoding = run_stages(args, image)
    if decoding is None or not distributed.is_main_process():  # one decoder and writer under torchrun
        return None
    task, latent = decoding
    save_file = args.save_file or default_save_file(args)
    log.info("decoding and writing %s", save_file)
    # Each chunk is encoded to mp4 while the VAE decodes the next one.
    save_video((chunk[None] for chunk in task.decode_chunks(latent)), save_file=save_file, fps=args.fps, nrow=1,
               normalize=True, value_range=(-1, 1))
    frames, fps, width, height = probe_video(save_file)
    log.info("saved %s (%d frames, %dx%d, %s fps)", save_file, frames, width, height, fps)
    return save_file


if __name__ == "__main__":
    run_cli(main)
