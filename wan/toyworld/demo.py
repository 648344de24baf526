"""A real edit with the trained toy-world model: a source scene rendered on the fly, its first frame
recoloured and reshaped, the edited video, the side-by-side comparison, and the metric line against
ground truth (what `make demo` shows first).

    python -m wan.toyworld.demo --out_dir demo_out/toyworld
"""
import argparse
import logging
import os

from ..configs import WAN_CONFIGS
from ..models import Models
from ..settings import LoadOptions
from ..tasks.edit import write_comparison
from ..utils.video_io import to_model_range, write_video
from .cases import make_edit_cases
from .evaluate import FPS, edit_case, preset_settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo_case(seed):
    """The first recolour+reshape case of the benchmark's mix for `seed`."""
    return next(case for case in make_edit_cases(64, seed) if case.edit_type == "recolour+reshape")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_dir", default=os.path.join(REPO, "assets", "toyworld-ti2v"))
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "edit_toyworld.yaml"))
    parser.add_argument("--out_dir", default="demo_out/toyworld")
    parser.add_argument("--seed", type=int, default=0, help="which benchmark case mix to draw the scene from")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = preset_settings(args.config)
    case = demo_case(args.seed)
    print(f"source: {case.source_caption}\ntarget: {case.target_caption}")
    models = Models.load(WAN_CONFIGS["ti2v-5B"], args.ckpt_dir, LoadOptions(device=args.device, offload_model=False))
    video, result = edit_case(models, case, settings)
    os.makedirs(args.out_dir, exist_ok=True)
    source, edited = os.path.join(args.out_dir, "source.mp4"), os.path.join(args.out_dir, "edited.mp4")
    source_frames = case.source_video()
    write_video(source_frames, source, fps=FPS)
    write_video(video, edited, fps=FPS)
    write_comparison(edited, source_frames, case.edited_first_frame()[None], to_model_range(video), FPS)
    m = result.metrics
    print(f"metrics vs ground truth: trajectory error {m['te_mean']:.1f} px (max {m['te_max']:.1f}), direction "
          f"agreement {m['direction_agreement']:.2f}, colour accuracy {m['colour_accuracy']:.2f}, shape accuracy "
          f"{m['shape_accuracy']:.2f}, background PSNR {m['background_psnr']:.1f} dB -> "
          f"{'PASS' if result.passed else 'fail'} (pass rule: docs/TOYWORLD.md; quality: docs/QUALITY.md)")
    print(f"wrote {source}, {edited}, {os.path.splitext(edited)[0]}_comparison.mp4")
    return result


if __name__ == "__main__":
    main()
