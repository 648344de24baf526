"""Rebuild the bundled test media from the full-size cases (see SOURCES.md in this folder).

    python tests/data/derive.py /path/to/media      # folder with <case>/source.mp4, case.json, ...

Each clip keeps its first frames, is scaled and centre-cropped with the toolkit's own
`resize_center_crop` (LANCZOS) and re-encoded with `write_video` (libx264, yuv420p, crf 18, same
fps). The edited first frame goes through the same resize, so it still lines up with frame 0.
"""
import json
import sys
from pathlib import Path

from wan.utils.video_io import load_image, read_video, resize_center_crop, write_video

HERE = Path(__file__).resolve().parent
CRF = 18

# case -> (frames kept, output width, output height)
CASES = {
    "kitten-turning-head": (16, 256, 256),
    "ballet": (16, 256, 256),
    "rabbit-figurine": (33, 256, 176),
}


def derive_case(source_dir, name, num_frames, width, height):
    target = HERE / name
    target.mkdir(exist_ok=True)
    frames, fps = read_video(source_dir / "source.mp4", max_frames=num_frames, backend="pyav")
    write_video(resize_center_crop(frames, width, height), target / "source.mp4", fps=fps, crf=CRF)
    edited = source_dir / "edited_first_frame.png"
    if edited.exists():
        resize_center_crop(load_image(edited), width, height).save(target / "edited_first_frame.png", optimize=True)
    case = json.loads((source_dir / "case.json").read_text())
    case.update(frames=len(frames), resolution=[width, height],
                derived=f"first {len(frames)} frames, LANCZOS resize + centre crop to {width}x{height}, "
                        f"libx264 crf {CRF} yuv420p; see tests/data/SOURCES.md")
    (target / "case.json").write_text(json.dumps(case, indent=2) + "\n")


def main(media_root):
    for name, (num_frames, width, height) in CASES.items():
        derive_case(Path(media_root) / name, name, num_frames, width, height)


if __name__ == "__main__":
    # Default: the full-size media set in shared/ beside the repository checkout.
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "media")
