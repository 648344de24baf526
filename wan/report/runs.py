"""The run reports of the generation scripts: one self-contained page per generation, edit, manifest of
edits, chain or stage, from what the run wrote (videos, first frames), its resolved settings, its
per-stage timer and whatever metrics it has."""

import numpy as np

from ..utils.video_io import load_image, output_kind, output_stem, read_video
from .html import Report


def first_frame(video):
    """The first frame of what the run wrote (a video, or an image), uint8 [H, W, 3]."""
    if output_kind(video) == "image":
        return np.asarray(load_image(video))
    return read_video(video, max_frames=1)[0][0]


def video_psnr(video, reference):
    """PSNR (dB) of uint8 frames against reference frames (the common frame count)."""
    count = min(len(video), len(reference))
    error = video[:count].numpy().astype(np.float64) - reference[:count].numpy()
    mse = float(np.mean(error * error))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def write_run_report(path, title, videos, settings, timer, prompts=None, images=(), tables=()):
    """videos: [(path, caption)] written by the run (each shown, and its first frame); images:
    [(array or path, caption)]; tables: [(rows, title)]. Returns the path."""
    report = Report(title)
    report.section("Result")
    for video, caption in videos:
        report.video(video, caption)
    for video, caption in videos:
        report.image(first_frame(video), f"first frame: {caption}")
    for image, caption in images:
        report.image(image, caption)
    for rows, table_title in tables:
        report.table(rows, table_title)
    report.section("Run")
    if prompts:
        report.prompts(prompts)
    report.settings(settings)
    report.timings(timer)
    report.environment()
    return report.write(path)


def default_report_path(output, explicit):
    """The report of a run whose main output is `output`: `explicit` if given, else OUTPUT.report.html
    beside it (beside a PNG-frames folder, not inside it)."""
    return explicit or f"{output_stem(output)}.report.html"
