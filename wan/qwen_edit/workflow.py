"""The video workflow: extract (video -> init frame + edge frames), edit (frame by frame, streaming
and resumable, with a metrics CSV), assemble (frames -> mp4), and process_video, the three in one
work folder, where a rerun skips what is done.

Frame i is edited from images [edge map i, previous output] (the init frame stands in for the
previous output of frame 0; give an edited key frame there to set the style). Loss targets:
edge map i (edge), the first output frame (Gram; the init frame for frame 0), and the previous
output (temporal). Every frame uses the same seed: shared noise keeps frames alike.

Metrics per frame, measured on the saved output: edge, Gram and temporal losses (whatever their
weights were) and a perceptual distance to the previous output (LPIPS with a local trunk file,
else the VAE-feature distance, see losses.py), plus the seconds spent; a last row holds means.
"""
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import WanInputError
from ..settings import SettingsError
from ..utils.fileio import write_json_atomic
from ..utils.video_io import load_image, probe_video, read_video, resize_center_crop, write_video
from .frames import (completed_count, image_size, list_images, load_frame, model_to_pil, output_path,
                     pil_to_model, read_metrics, save_png, write_metrics)
from .losses import luma, normalised_edges
from .pipeline import LossTargets

SIZE_MULTIPLE = 16  # the real model's output grid (VAE factor 8 x 2x2 packing)
LOSS_COLUMNS = ("edge_loss", "gram_loss", "temporal_loss")
DEFAULT_PROMPT = ("Picture 1 is the edge map of a video frame and Picture 2 is the previous frame of the edited "
                  "video. Draw the scene outlined in Picture 1, keeping its outlines, layout and poses exactly, "
                  "in the style, colours and lighting of Picture 2.")


# ------------------------------------------------------------------------------------------
# extract


def extract(video, out_dir, stride=1, size=None, max_frames=None):
    """Write OUT/init_frame.png (the first frame) and OUT/edges/edge_NNNNN.png (normalised Sobel maps)
    of every `stride`-th frame, resized and centre-cropped to `size` (w, h; default the video's size
    floored to multiples of 16). Returns (init frame path, edge folder, frame count)."""
    if stride < 1:
        raise SettingsError("stride", f"must be at least 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise SettingsError("max_frames", f"must be at least 1, got {max_frames}")
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
    prompt: str = DEFAULT_PROMPT
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
    metrics_path = metrics_file(job)
    columns = [*LOSS_COLUMNS, perceptual.name, "seconds"]
    done = completed_count(job.out_frames_dir, len(edge_paths))
    old_rows = read_metrics(metrics_path)
    logging.info("%d of %d frames already done in %s", done, len(edge_paths), job.out_frames_dir)

    init = load_frame(job.init_frame, size, "init frame")
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


def metrics_file(job):
    return job.metrics_out or str(Path(job.out_frames_dir) / "metrics.csv")


def finished_rows(job):
    """The metrics rows when every frame of `job` is saved and measured, else None (work remains)."""
    total = len(check_job(job))
    rows = read_metrics(metrics_file(job))
    if completed_count(job.out_frames_dir, total) < total or any(index not in rows for index in range(total)):
        return None
    return [rows[index] for index in range(total)]


def check_job(job):
    """Fail now on a bad input file, not after an hour of editing; returns the edge frame paths."""
    if job.max_frames is not None and job.max_frames < 1:
        raise SettingsError("max_frames", f"must be at least 1, got {job.max_frames}")
    image_size(job.init_frame)
    edge_paths = list_images(job.edge_frames_dir, "edge_frames_dir")[: job.max_frames]
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
# the whole video
EXTRACT_RECORD = "extract.json"
EDIT_RECORD = "edit_settings.json"


@dataclass
class VideoJob:
    """A whole-video run in `work_dir`: extract into it, edit into WORK_DIR/frames, assemble `output`."""

    video: str
    output: str
    work_dir: str
    stride: int = 1
    size: tuple = None
    max_frames: int = None
    fps: float = None  # default: the source's frame rate / stride


@dataclass
class VideoResult:
    init_frame: str
    frames_dir: str
    output: str
    fps: float
    rows: list  # metrics rows, one per frame
    editor: object = None  # the QwenFrameEditor when one was loaded (None: every frame was already done)


def process_video(job, edit_job, edit_settings, load_editor, timer):
    """extract -> edit -> assemble, each step skipped when its output is complete.

    edit_job: the edit settings; its folders are replaced by the work folder's, and an init_frame
    of None means the first source frame. edit_settings: the values that decide the edited frames
    (a dict); the first run records them, and a rerun with other values is refused rather than
    mixing two edits in one video. load_editor() -> (QwenFrameEditor, PerceptualMetric) is called
    only if frames remain. timer: a wan.report.StageTimer."""
    with timer.stage("extract"):
        extracted = extract_once(job)
    work = Path(job.work_dir)
    edit_job = replace(edit_job, init_frame=edit_job.init_frame or str(work / "init_frame.png"),
                       edge_frames_dir=str(work / "edges"), out_frames_dir=str(work / "frames"))
    # Settings may change freely until the first frame is saved (e.g. after a failed model load).
    _record_or_compare(work / EDIT_RECORD, edit_settings, work,
                       overwrite=not output_path(edit_job.out_frames_dir, 0).is_file())
    rows, editor = finished_rows(edit_job), None
    if rows is None:
        editor, perceptual = load_editor()
        with timer.stage("edit"):
            rows = edit_frames(editor, edit_job, perceptual)
    else:
        logging.info("all %d frames already edited in %s", len(rows), edit_job.out_frames_dir)
    fps = job.fps or extracted["fps"] / job.stride
    with timer.stage("assemble"):
        _assemble_if_stale(edit_job.out_frames_dir, job.output, fps, len(rows))
    return VideoResult(edit_job.init_frame, edit_job.out_frames_dir, job.output, fps, rows, editor)


def extract_once(job):
    """extract() into job.work_dir unless an earlier run did it with the same request; returns the record
    (the request plus the frame count and the source fps)."""
    _, fps, _, _ = probe_video(job.video)  # a missing or unreadable video fails here
    work = Path(job.work_dir)
    request = {"video": str(Path(job.video).resolve()), "video_bytes": Path(job.video).stat().st_size,
               "stride": job.stride, "size": list(job.size) if job.size else None, "max_frames": job.max_frames}
    if (work / EXTRACT_RECORD).is_file():
        record = _record_or_compare(work / EXTRACT_RECORD, request, work)
        logging.info("frames already extracted in %s", work)
        return record
    _, _, count = extract(job.video, work, stride=job.stride, size=job.size, max_frames=job.max_frames)
    record = {**request, "frames": count, "fps": fps}
    write_json_atomic(work / EXTRACT_RECORD, record)  # last: its presence means the extraction is whole
    return record


def _record_or_compare(path, wanted, work, overwrite=False):
    """Write `wanted` to `path` if absent (or `overwrite`), else require the recorded values to match;
    returns the record."""
    wanted = json.loads(json.dumps(wanted))  # tuples -> lists, as they come back from the file
    if overwrite or not path.is_file():
        write_json_atomic(path, wanted)
        return wanted
    recorded = json.loads(path.read_text())
    for key, value in wanted.items():
        if recorded.get(key) != value:
            raise WanInputError(f"work_dir {work} holds a run with {key}={recorded.get(key)!r}, this one has "
                                f"{key}={value!r}; use another work_dir or delete that one")
    return recorded


def _assemble_if_stale(frames_dir, output, fps, count):
    """assemble() unless `output` is newer than every frame and has their count and `fps`."""
    newest_frame = max(output_path(frames_dir, index).stat().st_mtime_ns for index in range(count))
    output = Path(output)
    if output.is_file() and output.stat().st_mtime_ns >= newest_frame:
        frames, output_fps, _, _ = probe_video(output)
        if frames == count and abs(output_fps - fps) < 1e-3 * fps:
            logging.info("%s is up to date", output)
            return str(output)
    return assemble(frames_dir, output, fps)


# ------------------------------------------------------------------------------------------
# assemble


def assemble(frames_dir, output, fps):
    """Encode the folder's frame_NNNNN.png files (sorted) into an H.264 mp4 at `fps`."""
    if fps <= 0:
        raise SettingsError("fps", f"must be positive, got {fps}")
    paths = [p for p in list_images(frames_dir, "frames_dir") if p.name.startswith("frame_")]
    if not paths:
        raise SettingsError("frames_dir", f"{frames_dir} has no frame_NNNNN.png files")
    sizes = {image_size(p) for p in paths}
    if len(sizes) > 1:
        raise SettingsError("frames_dir", f"{frames_dir}: frames differ in size ({sorted(sizes)})")
    frames = (np.asarray(load_image(p)) for p in tqdm(paths, desc="assemble"))
    write_video(frames, output, fps)
    logging.info("wrote %d frames at %g fps to %s", len(paths), fps, output)
    return str(output)

