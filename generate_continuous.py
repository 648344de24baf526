"""Make a long video by chained continuation: each video starts from the previous one's last frame,
with a VLM caption of the previous video as its prompt.

    python generate_continuous.py --video start.mp4 --ckpt_dir ./Wan2.2-I2V-A14B \
        --vlm_path ./InternVL3_5-8B-HF --num_videos 12 --output_dir ./continuous_outputs

Writes video_01_seed<S>.mp4 ... , prompts_log.txt (file, seed and prompt of every video) and
stitched_video.mp4 (the whole chain, each boundary frame once). A rerun keeps the finished videos
and continues after the last one."""
import logging
import os

import wan
from wan.base import check_frame_num
from wan.configs import WAN_CONFIGS
from wan.errors import WanInputError
from wan.utils.cli import ArgumentParser, add_speed_flags, parse_size, run_cli, setup_logging, vae_dtype
from wan.utils.utils import str2bool
from wan.utils.video_io import probe_video
from wan.video2video import DEFAULT_CONTINUATION_PROMPT, continue_chain

log = logging.getLogger("generate_continuous")

TASK_CLASSES = {"v2v-14B": "WanV2V", "v2v-5B": "WanV2V5B"}
DEFAULT_SIZE = {"v2v-14B": "1280*720", "v2v-5B": "1280*704"}


def parse_args(argv=None):
    p = ArgumentParser(description="Chain video continuations into one long video.")
    p.add_argument("--video", required=True, help="the video to continue")
    p.add_argument("--num_videos", type=int, default=12, help="videos in the chain")
    p.add_argument("--output_dir", default="./continuous_outputs", help="folder for videos, log, stitched video")
    p.add_argument("--ckpt_dir", required=True, help="checkpoint directory of the base model (official layout)")
    p.add_argument("--task", default="v2v-14B", choices=sorted(TASK_CLASSES), help="v2v-14B (I2V-A14B) or v2v-5B")
    p.add_argument("--size", default=None, help="maximum output area as WIDTH*HEIGHT (aspect ratio of the video)")
    p.add_argument("--frame_num", type=int, default=81, help="frames per video, 4n+1")
    p.add_argument("--sample_solver", default="unipc", choices=["unipc", "dpm++", "euler"])
    p.add_argument("--sample_steps", type=int, default=None, help="sampling steps (default per task)")
    p.add_argument("--sample_shift", type=float, default=None, help="noise schedule shift (default per task)")
    p.add_argument("--sample_guide_scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--base_seed", type=int, default=42, help="video i (from 1) uses base_seed + i - 1")
    p.add_argument("--custom_prompt", default=DEFAULT_CONTINUATION_PROMPT, help="text put before every caption")
    p.add_argument("--n_prompt", default="", help="negative prompt (default: the official one)")
    p.add_argument("--vlm_path", required=True,
                   help="captioner checkpoint folder (InternVL3.5 -HF, Qwen2.5-VL, Qwen3-VL)")
    p.add_argument("--vlm_device", default=None, help="device of the captioner (default: --device)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:0 if available, else cpu)")
    p.add_argument("--offload_model", type=str2bool, default=True, help="move models to the CPU after use")
    p.add_argument("--t5_cpu", action="store_true", help="run the T5 encoder on the CPU")
    p.add_argument("--convert_model_dtype", action="store_true", help="cast the DiT weights to bf16 on load")
    add_speed_flags(p)
    return p.parse_args(argv)


def check_args(args):
    cfg = WAN_CONFIGS[args.task]
    if args.num_videos < 1:
        raise WanInputError(f"--num_videos must be at least 1, got {args.num_videos}")
    check_frame_num(args.frame_num)
    if args.sample_steps is not None and args.sample_steps < 1:
        raise WanInputError(f"--sample_steps must be at least 1, got {args.sample_steps}")
    if not os.path.isdir(args.ckpt_dir):
        raise WanInputError(f"--ckpt_dir: checkpoint directory not found: {args.ckpt_dir}")
    width, height = parse_size(args.size or DEFAULT_SIZE[args.task])
    if width <= 0 or height <= 0:
        raise WanInputError(f"--size must be positive, got {args.size}")
    probe_video(args.video)  # a missing or unreadable video fails before any model loads
    args.sample_steps = args.sample_steps or cfg.sample_steps
    args.sample_shift = cfg.sample_shift if args.sample_shift is None else args.sample_shift
    args.sample_guide_scale = cfg.sample_guide_scale if args.sample_guide_scale is None else args.sample_guide_scale
    return width, height


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    width, height = check_args(args)

    def load_task():
        task_class = getattr(wan, TASK_CLASSES[args.task])
        return task_class(config=WAN_CONFIGS[args.task], checkpoint_dir=args.ckpt_dir, device=args.device,
                          t5_cpu=args.t5_cpu, convert_model_dtype=args.convert_model_dtype,
                          compile_model=args.compile, vae_dtype=vae_dtype(args.vae_dtype),
                          step_cache=args.step_cache, fp8=args.fp8, attention=args.attention,
                          vlm_path=args.vlm_path, vlm_device=args.vlm_device)

    area = dict(size=(width, height)) if args.task == "v2v-5B" else {}
    paths, stitched = continue_chain(
        load_task, args.video, args.output_dir, args.num_videos, base_seed=args.base_seed,
        prompt_prefix=args.custom_prompt, max_area=width * height, frame_num=args.frame_num,
        shift=args.sample_shift, sample_solver=args.sample_solver, sampling_steps=args.sample_steps,
        guide_scale=args.sample_guide_scale, n_prompt=args.n_prompt, offload_model=args.offload_model, **area)
    log.info("chain of %d videos in %s; stitched: %s", len(paths), args.output_dir, stitched)
    return paths, stitched


if __name__ == "__main__":
    run_cli(main)
