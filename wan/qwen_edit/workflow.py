"""The video workflow: extract (video -> init frame + edge frames), edit (frame by frame, streaming
and resumable, with a metrics CSV) and assemble (frames -> mp4).

Frame i is edited from images [edge map i, previous output] (the init frame stands in for the
previous output of frame 0; give an edited key frame there to set the style). Loss targets:
edge map i (edge), the first output frame (Gram; the init frame for frame 0), and the previous
output (temporal). Every frame uses the same seed: shared noise keeps frames alike.

Metrics per frame, measured on the saved output: edge, Gram and temporal losses (whatever their
weights were) and a perceptual distance to the previous output (LPIPS with a local trunk file,
else the VAE-feature distance, see losses.py), plus the seconds spent; a last row holds means.
"""
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import WanInputError
from ..utils.video_io import load_image, read_video, resize_center_crop, write_video
from .frames import (completed_count, image_size, list_images, load_frame, model_to_pil, output_path,
                     pil_to_model, read_metrics, save_png, write_metrics)
from .losses import luma, normalised_edges
from .pipeline import LossTargets

SIZE_MULTIPLE = 16  # the real model's output grid (VAE factor 8 x 2x2 packing)
LOSS_COLUMNS = ("edge_loss", "gram_loss", "temporal_loss")


# ------------------------------------------------------------------------------------------
# extract


def extract(video, out_dir, stride=1, size=None, max_frames=None):
    """Write OUT/init_frame.png (the first frame) and OUT/edges/edge_NNNNN.png (normalised Sobel maps)
    of every `stride`-th frame, resized and centre-cropped to `size` (w, h; default the video's size
    floored to multiples of 16). Returns (init frame path, edge folder, frame count)."""
    if stride < 1 or (max_frames is not None and max_frames < 1):
        raise WanInputError("--stride and --max_frames must be at least 1")
    limit = None if max_frames is None else stride * (max_frames - 1) + 1
    frames, _ = read_video(video, max_frames=limit)
    frames = frames[::stride][:max_frames]
    width, height = size or (frames.shape[2] // SIZE_MULTIPLE * SIZE_MULTIPLE,
                             frames.shape[1] // SIZE_MULTIPLE * SIZE_MULTIPLE)
    if width < SIZE_MULTIPLE or height < SIZE_MULTIPLE:
        raise WanInputError(f"frame size {width}x{height} is too small (at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE})")
    frames = resize_center_crop(frames, width, height)
    out = Path(out_dir)
    init_path, edge_dir = out / "init_frame.png", out / "edges"
    save_png(Image.fromarray(frames[0].numpy()), init_path)
    for index, frame in enumerate(tqdm(frames, desc="edge maps")):
        edges = normalised_edges(pil_to_model(Image.fromarray(frame.numpy())))[0, 0]
        save_png(Image.fromarray((edges * 255).round().to(torch.uint8).numpy(), mode="L"),
                 edge_dir / f"edge_{index:05d}.png")
    logging.info("extracted %d frames at %dx%d into %s", len(frames), width, height, out)
    return str(init_path), str(edge_dir), len(frames)


# ------------------------------------------------------------------------------------------
# edit


@dataclass
class EditJob:
    """One frame-by-frame edit; see qwen_video_edit.py --help for the meaning of each field."""

    init_frame: str
    edge_frames_dir: str
    out_frames_dir: str
    prompt: str
    metrics_out: str = None
    size: tuple = None
    seed: int = 0
    num_inference_steps: int = 50
    true_cfg_scale: float = 4.0
    negative_prompt: str = " "
    max_frames: int = None


def edit_frames(editor, job, perceptual):
    """Edit every edge frame not yet done (resuming after the last complete output); returns the
    metrics rows of all frames done so far. `perceptual` is a losses.PerceptualMetric."""
    edge_paths = check_job(job)
    size = _output_size(job, edge_paths[0], editor.grid)
    metrics_path = job.metrics_out or str(Path(job.out_frames_dir) / "metrics.csv")
    columns = [*LOSS_COLUMNS, perceptual.name, "seconds"]
    done = completed_count(job.out_frames_dir, len(edge_paths))
    old_rows = read_metrics(metrics_path)
    logging.info("%d of %d frames already done in %s", done, len(edge_paths), job.out_frames_dir)

    init = load_frame(job.init_frame, size, "--init_frame")
    rows = [_recorded_or_measured(editor, perceptual, job, edge_paths, index, size, init, old_rows)
            for index in range(done)]
    for index in tqdm(range(done, len(edge_paths)), desc="frames", initial=done, total=len(edge_paths)):
        start = time.perf_counter()
        edge_image = load_frame(edge_paths[index], size, "edge frame")
        previous, style = _references(job, index, size, init)
        targets = _targets(editor, edge_image, previous, style)
        output = editor.edit([edge_image, previous], job.prompt, size[1], size[0], seed=job.seed,
                             num_inference_steps=job.num_inference_steps, true_cfg_scale=job.true_cfg_scale,
                             negative_prompt=job.negative_prompt, targets=targets)
        save_png(model_to_pil(output), output_path(job.out_frames_dir, index))
        rows.append(_measure(editor, perceptual, output, targets, index, time.perf_counter() - start))
        write_metrics(metrics_path, rows, columns)  # streamed: the CSV always covers the saved frames
        logging.info("frame %d: %s", index, {k: v for k, v in rows[-1].items() if k != "frame"})
    write_metrics(metrics_path, rows, columns)
    return rows


def check_job(job):
    """Fail now on a bad input file, not after an hour of editing; returns the edge frame paths."""
    if job.max_frames is not None and job.max_frames < 1:
        raise WanInputError("--max_frames must be at least 1")
    image_size(job.init_frame)
    edge_paths = list_images(job.edge_frames_dir, "--edge_frames_dir")[: job.max_frames]
    for path in edge_paths:
        image_size(path)
    return edge_paths


def _output_size(job, first_edge_path, grid):
    width, height = job.size or image_size(first_edge_path)
    fitted = (width // grid * grid, height // grid * grid)
    if min(fitted) < grid:
        raise WanInputError(f"output size {width}x{height} is too small (at least {grid}x{grid})")
    if fitted != (width, height):
        logging.warning("output size %dx%d floored to %dx%d (multiples of %d)", width, height, *fitted, grid)
    return fitted


def _references(job, index, size, init):
    """(previous output, style reference) for frame `index`; the init frame stands in for frame 0."""
    if index == 0:
        return init, init
    previous = load_frame(output_path(job.out_frames_dir, index - 1), size, "previous output")
    return previous, load_frame(output_path(job.out_frames_dir, 0), size, "first output")


def _targets(editor, edge_image, previous, style):
    """Loss targets; the edge target is the edge image's luma in [0, 1] (grey maps from `extract`
    come back unchanged)."""
    return LossTargets(edges=luma(pil_to_model(edge_image)).to(editor.device),
                       style_grams=editor.style_grams(pil_to_model(style)),
                       previous=pil_to_model(previous).to(editor.device))


@torch.no_grad()
def _measure(editor, perceptual, output, targets, index, seconds):
    output = output.to(editor.device)
    losses = editor.losses(output, targets)
    row = {"frame": index, "seconds": f"{seconds:.3f}" if seconds is not None else ""}
    for name in ("edge", "gram", "temporal"):
        row[f"{name}_loss"] = f"{losses[name].item():.6g}"
    row[perceptual.name] = f"{perceptual(output, targets.previous):.6g}"
    return row


def _recorded_or_measured(editor, perceptual, job, edge_paths, index, size, init, old_rows):
    """An already-saved frame's metrics: from the earlier CSV, or measured again from the images
    when the run stopped between saving the frame and writing its row."""
    row = old_rows.get(index)
    if row is not None and row.get(perceptual.name) not in (None, ""):
        return row
    previous, style = _references(job, index, size, init)
    targets = _targets(editor, load_frame(edge_paths[index], size, "edge frame"), previous, style)
    output = pil_to_model(load_frame(output_path(job.out_frames_dir, index), size, "output frame"))
    return _measure(editor, perceptual, output, targets, index, None)


# ------------------------------------------------------------------------------------------
# assemble


def assemble(frames_dir, output, fps):
    """Encode the folder's frame_NNNNN.png files (sorted) into an H.264 mp4 at `fps`."""
    if fps <= 0:
        raise WanInputError(f"--fps must be positive, got {fps}")
    paths = [p for p in list_images(frames_dir, "--frames_dir") if p.name.startswith("frame_")]
    if not paths:
        raise WanInputError(f"--frames_dir {frames_dir} has no frame_NNNNN.png files")
    sizes = {image_size(p) for p in paths}
    if len(sizes) > 1:
        raise WanInputError(f"--frames_dir {frames_dir}: frames differ in size ({sorted(sizes)})")
    frames = (np.asarray(load_image(p)) for p in tqdm(paths, desc="assemble"))
    write_video(frames, output, fps)
    logging.info("wrote %d frames at %g fps to %s", len(paths), fps, output)
    return str(output)

