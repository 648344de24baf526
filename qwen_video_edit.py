"""Training-free video stylisation with Qwen-Image-Edit-2509 and test-time loss guidance (TTLG).

Frame by frame, the model edits [edge map of source frame i, previous output frame] with a
prompt; in the last denoising steps gradient steps on the latents pull the result toward the
source structure (edge loss), the first output's style (Gram loss) and the previous output
(temporal loss).

    python qwen_video_edit.py extract --video in.mp4 --out_dir work --stride 2 --size 512*512
    python qwen_video_edit.py edit --model_id Qwen-Image-Edit-2509 --init_frame key.png \\
        --edge_frames_dir work/edges --out_frames_dir work/out --prompt "Picture 1 is an edge map, \\
        Picture 2 the previous frame: paint the scene of Picture 1 in the style of Picture 2"
    python qwen_video_edit.py assemble --frames_dir work/out --output out.mp4 --fps 12

`edit` writes each frame as soon as it is done and resumes after the last complete frame.
"""
import logging

import torch

from wan.errors import WanInputError
from wan.cli import ArgumentParser, run_cli, setup_logging
from wan.settings import size


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_extract(commands.add_parser("extract", help="video -> init frame + Sobel edge frames"))
    _add_edit(commands.add_parser("edit", help="edit the edge frames one by one (resumable)"))
    _add_assemble(commands.add_parser("assemble", help="frames -> mp4"))
    return parser.parse_args(argv)


def _add_extract(p):
    p.add_argument("--video", required=True, help="source video")
    p.add_argument("--out_dir", required=True, help="writes OUT/init_frame.png and OUT/edges/edge_NNNNN.png")
    p.add_argument("--stride", type=int, default=1, help="keep every STRIDE-th frame")
    p.add_argument("--size", default=None, help="WIDTH*HEIGHT (resize + centre crop); default: the video's, "
                                                "floored to multiples of 16")
    p.add_argument("--max_frames", type=int, default=None, help="at most this many frames")


def _add_edit(p):
    p.add_argument("--model_id", required=True, help="Qwen-Image-Edit-2509 folder (diffusers layout) or a "
                                                     "repo id already in the HF cache; nothing is downloaded")
    p.add_argument("--init_frame", required=True,
                   help="stands in for the previous output of frame 0 and is its style reference "
                        "(an edited key frame sets the style)")
    p.add_argument("--edge_frames_dir", required=True, help="edge maps, one per frame, in sorted name order")
    p.add_argument("--out_frames_dir", required=True, help="output frames frame_NNNNN.png")
    p.add_argument("--metrics_out", default=None, help="metrics CSV (default OUT_FRAMES_DIR/metrics.csv)")
    p.add_argument("--prompt", required=True, help="edit instruction; Picture 1 is the edge map, Picture 2 "
                                                   "the previous frame")
    p.add_argument("--negative_prompt", default=" ", help="negative prompt for true CFG")
    p.add_argument("--size", default=None, help="output WIDTH*HEIGHT (default: the first edge frame's), "
                                                "floored to the model grid")
    p.add_argument("--num_inference_steps", type=int, default=50)
    p.add_argument("--true_cfg_scale", type=float, default=4.0, help="true CFG scale (<= 1: off, one pass)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every frame")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="network dtype (auto: bf16 on CUDA, fp32 on CPU); latents stay fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--condition_image_size", default="384*384",
                   help="area W*H at which condition images enter the vision-language encoder (model: 384*384)")
    p.add_argument("--vae_image_size", default="1024*1024",
                   help="area W*H at which condition images are VAE-encoded (model: 1024*1024); smaller is "
                        "faster, at some cost in quality")
    p.add_argument("--ttlg_edge_scale", type=float, default=1.0, help="edge-loss weight (0: off)")
    p.add_argument("--ttlg_gram_scale", type=float, default=0.5, help="Gram (style) loss weight (0: off)")
    p.add_argument("--ttlg_temporal_scale", type=float, default=0.25, help="temporal loss weight (0: off)")
    p.add_argument("--ttlg_lr", type=float, default=0.03,
                   help="RMS size of one guidance update in latent units (0: guidance off)")
    p.add_argument("--ttlg_last_steps", type=int, default=10, help="guide only in the last K steps")
    p.add_argument("--ttlg_every", type=int, default=2, help="guide every M-th of those steps")
    p.add_argument("--max_frames", type=int, default=None,
                   help="stop once this many frames (counted from the first) are done")
    p.add_argument("--lpips_weights", default=None,
                   help="local torchvision trunk file (e.g. alexnet-owt-7be5be79.pth) for an LPIPS column; "
                        "needs the lpips package. Without it the CSV reports the VAE-feature distance")
    p.add_argument("--lpips_net", default="alex", choices=["alex", "vgg", "squeeze"])


def _add_assemble(p):
    p.add_argument("--frames_dir", required=True, help="folder of frame_NNNNN.png")
    p.add_argument("--output", required=True, help="output .mp4")
    p.add_argument("--fps", type=float, default=16.0)


def _area(text, flag):
    width, height = size(flag, text)
    if width < 1 or height < 1:
        raise WanInputError(f"{flag} must be positive, got {text!r}")
    return width * height


def run_extract(args):
    from wan.qwen_edit import extract

    frame_size = size("--size", args.size) if args.size else None
    extract(args.video, args.out_dir, stride=args.stride, size=frame_size, max_frames=args.max_frames)


def run_edit(args):
    from wan.qwen_edit import EditJob, GuidanceSettings, PerceptualMetric, QwenFrameEditor, edit_frames
    from wan.qwen_edit.loading import resolve_dtype
    from wan.qwen_edit.workflow import check_job

    guidance = GuidanceSettings(edge_scale=args.ttlg_edge_scale, gram_scale=args.ttlg_gram_scale,
                                temporal_scale=args.ttlg_temporal_scale, lr=args.ttlg_lr,
                                last_steps=args.ttlg_last_steps, every=args.ttlg_every)
    job = EditJob(init_frame=args.init_frame, edge_frames_dir=args.edge_frames_dir,
                  out_frames_dir=args.out_frames_dir, prompt=args.prompt, metrics_out=args.metrics_out,
                  size=size("--size", args.size) if args.size else None, seed=args.seed,
                  num_inference_steps=args.num_inference_steps, true_cfg_scale=args.true_cfg_scale,
                  negative_prompt=args.negative_prompt, max_frames=args.max_frames)
    check_job(job)  # before the (large) model loads
    editor = QwenFrameEditor.from_pretrained(
        args.model_id, args.device, resolve_dtype(args.dtype, args.device), guidance=guidance,
        condition_area=_area(args.condition_image_size, "--condition_image_size"),
        vae_condition_area=_area(args.vae_image_size, "--vae_image_size"))
    perceptual = PerceptualMetric(editor.features, args.lpips_weights, args.lpips_net, args.device)
    edit_frames(editor, job, perceptual)


def run_assemble(args):
    from wan.qwen_edit import assemble

    assemble(args.frames_dir, args.output, args.fps)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("qwen_video_edit %s", args.command)
    {"extract": run_extract, "edit": run_edit, "assemble": run_assemble}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
