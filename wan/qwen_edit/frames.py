"""Frame folders and the metrics CSV of the frame-by-frame editor.

Output frames are `frame_00000.png, frame_00001.png, ...`, numbered by the position of their edge
frame in the sorted edge folder. Every file is written under a temporary name and renamed when
complete, so a frame that exists is whole: a rerun continues after the last contiguous one.
"""
import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import WanInputError
from ..settings import SettingsError
from ..utils.fileio import atomic_path
from ..utils.video_io import from_model_range, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OUTPUT_PATTERN = "frame_{:05d}.png"
SUMMARY_LABEL = "mean"


def list_images(folder, name):
    """Sorted image files of `folder`, the setting `name` (hidden and partial files skipped); at least one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SettingsError(name, f"is not a folder: {folder}")
    images = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not images:
        raise SettingsError(name, f"{folder} has no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return images


def image_size(path):
    """(width, height) from the header, without decoding the pixels."""
    if not Path(path).is_file():
        raise WanInputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise WanInputError(f"cannot read image {path}: {' '.join(str(exc).split())}") from None


def load_frame(path, size, what):
    """An RGB image resized to `size` (w, h), with a warning when it had another size."""
    image = load_image(path)
    if image.size != tuple(size):
        logging.warning("%s %s is %dx%d; resized to %dx%d", what, path, *image.size, *size)
        image = image.resize(tuple(size), Image.LANCZOS)
    return image


def pil_to_model(image):
    """PIL RGB -> float [1, 3, H, W] in [-1, 1]."""
    array = np.array(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1


def model_to_pil(image):
    """float [1, 3, H, W] in [-1, 1] -> PIL RGB (rounded like the pipeline's postprocess)."""
    return Image.fromarray(from_model_range(image[0].unsqueeze(1))[0].numpy())


def save_png(image, path):
    with atomic_path(path) as temp:
        image.save(temp, format="PNG")


def output_path(folder, index):
    return Path(folder) / OUTPUT_PATTERN.format(index)


def completed_count(folder, total):
    """How many output frames exist contiguously from frame 0."""
    count = 0
    while count < total and output_path(folder, count).is_file():
        count += 1
    return count


def read_metrics(path):
    """Per-frame rows of an earlier run's CSV, keyed by frame index (empty if none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {int(row["frame"]): row for row in csv.DictReader(f) if row.get("frame", "").isdigit()}


def write_metrics(path, rows, columns):
    """Per-frame rows plus a summary row (the mean of every numeric column), written atomically."""
    with atomic_path(path) as temp:
        with open(temp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["frame", *columns], extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
            writer.writerow({"frame": SUMMARY_LABEL, **_column_means(rows, columns)})


def _column_means(rows, columns):
    means = {}
    for column in columns:
        values = [float(row[column]) for row in rows if _is_number(row.get(column))]
        if values:
            means[column] = f"{sum(values) / len(values):.6g}"
    return means


def _is_number(value):
    try:
        return value not in (None, "") and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
