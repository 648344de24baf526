"""Pixel metrics for toyworld-v1 outputs (docs/TOYWORLD.md, sections 11 and 12).

Every metric is computed from uint8 frames with no learned network: pixels are segmented against
the known background and assigned to the nearest candidate object colour; masks give areas,
centroids, colours and shapes, which are compared with the same quantities on the ground truth.
Work is vectorised over frames (numpy); scoring a 17-frame case takes a fraction of a second.
"""
import logging
import math
from functools import lru_cache

import numpy as np
import torch

from ..errors import WanInputError
from ..utils.video_io import resize_center_crop
from .cases import SEAM_FRAME
from .world import (
    BACKGROUND_COLORS,
    BACKGROUND_PAIRS,
    DIRECTIONS,
    HEIGHT,
    OBJECT_COLORS,
    SHAPES,
    SLOW_SPEED,
    WIDTH,
    Background,
    background_image,
    caption_text,
    centres,
    direction_word,
    edge_functions,
    object_phrase,
    velocity_at,
)

log = logging.getLogger(__name__)

FOREGROUND_DISTANCE = 48.0  # RGB distance from the background above which a pixel is foreground
ASSIGN_DISTANCE = 100.0  # a foreground pixel joins the nearest candidate colour closer than this
MISSING_AREA_FRACTION = 0.25  # below this share of the GT area an object is missing in a frame
MISSING_ERROR = 64.0  # px, the centroid error of a missing object
MIN_GT_DISPLACEMENT = 8.0  # px, frames with less GT displacement do not vote on direction
BACKGROUND_MARGIN = 3  # px, object masks are dilated by this before scoring the background
PSNR_CAP = 100.0  # dB, the PSNR of identical pixels (keeps results finite for JSON)
SPEED_SLACK = 0.5  # px/frame around the caption's speed band
STILL_SPEED = 0.25  # px/frame; the procedural captioner calls slower objects "standing still"
MIN_OBJECT_AREA = 32  # px; the procedural captioner ignores smaller colour blobs
CONTINUATION_DIRECTION_FRAMES = 8  # frames after the seam over which direction and speed are judged

EDIT_THRESHOLDS = {
    "te_mean": 3.0,
    "te_max": 8.0,
    "direction_agreement": 0.95,
    "colour_accuracy": 0.95,
    "colour_leak": 0.05,
    "shape_accuracy": 0.9,
    "mask_iou": 0.75,
    "background_psnr": 30.0,
    "flicker": 1.5,
}
CONTINUATION_THRESHOLDS = {
    "seam_psnr": 30.0,  # used when no VAE floor is given (the floor minus 1 dB otherwise)
    "colour_accuracy": 0.95,
    "shape_accuracy": 0.9,
    "background_psnr": 30.0,
    "direction_error": 30.0,  # degrees from the caption's bin centre
}


# --------------------------------------------------------------------------------------------
# inputs


def as_video(video, name="video"):
    """uint8 frames [F, H, W, 3] from a numpy array or a torch tensor (any device)."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise WanInputError(f"{name}: expected uint8 frames [F, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    return video


def _check_shape(video, expected, name="video"):
    if video.shape != tuple(expected):
        raise WanInputError(f"{name}: shape {tuple(video.shape)} does not match the ground truth {tuple(expected)}")


def psnr(a, b, where=None):
    """PSNR in dB of two uint8 arrays (255 peak) over all pixels or those of a bool mask `where`
    (shaped like the arrays without the channel axis), capped at PSNR_CAP."""
    error = a.astype(np.int32) - b
    squared = error * error
    mse = np.mean(squared if where is None else squared[where], dtype=np.float64)
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


# --------------------------------------------------------------------------------------------
# segmentation


class Segmentation:
    """Masks of the candidate colours in a video.

    masks [F, K, H, W] (one per target object), leak [F, H, W] (pixels of an old colour),
    foreground [F, H, W], areas [F, K], centroids [F, K, 2] (x, y at pixel centres; nan if empty)."""

    def __init__(self, video, background, colors, leak_colors=()):
        difference = video.astype(np.int32) - background
        self.foreground = (difference * difference).sum(axis=-1) > FOREGROUND_DISTANCE**2
        candidates = np.array([OBJECT_COLORS[c] for c in (*colors, *leak_colors)], dtype=np.float32)
        labels = np.full(self.foreground.shape, -1, dtype=np.int8)
        pixels = video[self.foreground].astype(np.float32)  # only foreground pixels need a colour
        distance2 = (pixels**2).sum(1, keepdims=True) - 2 * pixels @ candidates.T + (candidates**2).sum(1)
        nearest = distance2.argmin(1)
        close = distance2[np.arange(len(pixels)), nearest] < ASSIGN_DISTANCE**2
        labels[self.foreground] = np.where(close, nearest, -1)
        # A 3x3 opening drops structures under 3 px wide that only resemble a candidate colour:
        # the anti-aliased rim of another object, a blurred split-background seam.
        by_color = _open(labels[:, None] == np.arange(len(candidates))[None, :, None, None])
        count = len(colors)
        self.masks = by_color[:, :count]
        self.leak = by_color[:, count:].any(axis=1)
        self.areas = np.count_nonzero(self.masks, axis=(2, 3))
        column_sums = np.count_nonzero(self.masks, axis=2)  # [F, K, W]
        row_sums = np.count_nonzero(self.masks, axis=3)  # [F, K, H]
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (column_sums @ (np.arange(WIDTH) + 0.5)) / self.areas
            cy = (row_sums @ (np.arange(HEIGHT) + 0.5)) / self.areas
        self.centroids = np.stack([cx, cy], axis=-1)


def segment(video, background, colors, leak_colors=()):
    """Segment uint8 frames [F, H, W, 3] against a background image (uint8 [H, W, 3]).

    colors: the object colours to find, in object order; leak_colors: old colours whose pixels
    are counted as leak."""
    return Segmentation(as_video(video), np.asarray(background), tuple(colors), tuple(leak_colors))


def _dilate(mask, radius):
    """Square dilation of bool masks [..., H, W] by `radius` px (shifted ORs, one axis at a time)."""
    for axis in (-1, -2):
        source, mask = mask, mask.copy()
        for shift in range(1, radius + 1):
            ahead = [slice(None)] * mask.ndim
            behind = [slice(None)] * mask.ndim
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            mask[tuple(ahead)] |= source[tuple(behind)]
            mask[tuple(behind)] |= source[tuple(ahead)]
    return mask


def _erode(mask, radius=1):
    """Square erosion (the frame edge does not erode)."""
    return ~_dilate(~mask, radius)


def _open(mask, radius=1):
    """Morphological opening: keeps the parts of a mask that a (2r+1)-px square fits into."""
    return _dilate(_erode(mask, radius), radius)


# --------------------------------------------------------------------------------------------
# shape fit


def fit_shapes(mask, area, centroid):
    """Best-fitting shape index (into SHAPES) per frame of one object's mask, -1 where empty.

    mask [T, H, W], area [T], centroid [T, 2]. Each template sits at the mask centroid with the
    size that gives the mask's area (the triangle's box centre is s/6 above its centroid) and is
    scored by IoU at pixel centres."""
    count = len(area)
    best = np.full(count, -1)
    present = area > 0
    if not present.any():
        return best
    area = area.astype(np.float64)
    sizes = {  # template size from the area
        "circle": 2 * np.sqrt(area / np.pi),
        "square": np.sqrt(area),
        "diamond": np.sqrt(2 * area),
        "triangle": np.sqrt(2 * area),
    }
    half = int(math.ceil(0.7 * sizes["diamond"][present].max())) + 2  # every template fits in +-half
    steps = np.arange(-half, half + 1)
    centre = np.where(present[:, None], centroid, 0.0)
    cols = np.floor(centre[:, 0]).astype(int)[:, None] + steps  # [T, n] absolute pixel columns
    rows = np.floor(centre[:, 1]).astype(int)[:, None] + steps
    padded = np.pad(mask, ((0, 0), (half + 1, half + 1), (half + 1, half + 1)))
    window = padded[np.arange(count)[:, None, None], rows[:, :, None] + half + 1, cols[:, None, :] + half + 1]
    in_canvas = ((rows >= 0) & (rows < HEIGHT))[:, :, None] & ((cols >= 0) & (cols < WIDTH))[:, None, :]
    xs = (cols + 0.5)[:, None, :]
    ys = (rows + 0.5)[:, :, None]
    cx = centre[:, 0, None, None]
    scores = []
    for shape in SHAPES:
        size = sizes[shape][:, None, None]
        cy = centre[:, 1, None, None] - (size / 6 if shape == "triangle" else 0)
        inside = in_canvas
        for edge in edge_functions(shape, xs - cx, ys - cy, ys, cy, size / 2):
            inside = inside & (edge <= 0)
        overlap = np.count_nonzero(inside & window, axis=(1, 2))
        union = area + np.count_nonzero(inside, axis=(1, 2)) - overlap
        scores.append(np.where(union > 0, overlap / np.maximum(union, 1), 0.0))
    best[present] = np.argmax(np.stack(scores, axis=1), axis=1)[present]
    return best


# --------------------------------------------------------------------------------------------
# shared per-object measurements


def _mean_colors(video, seg):
    """Mean colour per frame and object over the mask eroded by 1 px (the mask if erosion empties it):
    [F, K, 3], nan where the mask is empty."""
    eroded = _erode(seg.masks)
    use = np.where(eroded.any(axis=(2, 3), keepdims=True), eroded, seg.masks)
    sums = np.einsum("fkhw,fhwc->fkc", use.astype(np.float32), video.astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.count_nonzero(use, axis=(2, 3))[..., None]


def _nearest_palette_color(colors):
    """Names of the nearest object palette colour for colours [..., 3] (nan -> None)."""
    names = list(OBJECT_COLORS)
    palette = np.array([OBJECT_COLORS[n] for n in names], dtype=np.float64)
    nearest = np.argmin(((np.nan_to_num(colors)[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    return np.where(np.isnan(colors).any(-1), None, np.array(names, dtype=object)[nearest])


def _unoccluded(scene):
    """[F, K] True where an object's box overlaps no other object's box (its mask is whole)."""
    centre = centres(scene)
    size = np.array([obj.size for obj in scene.objects])
    reach = (size[:, None] + size[None, :]) / 2  # [K, K]
    gap = np.abs(centre[:, :, None, :] - centre[:, None, :, :])  # [F, K, K, 2]
    overlap = (gap < reach[None, :, :, None]).all(-1)
    overlap &= ~np.eye(len(size), dtype=bool)
    return ~overlap.any(-1)


def _appearance(video, reference, out, ref, objects, unoccluded):
    """Colour and shape accuracy, IoU, background PSNR, flicker and colour stability over frames 1..F-1.

    unoccluded [F, K]: frames where an object's ground-truth mask is whole (for the shape fit)."""
    later = slice(1, None)
    valid = ref.areas[later] > 0  # [T, K]
    present = valid & (out.areas[later] >= MISSING_AREA_FRACTION * ref.areas[later])
    mean_colors = _mean_colors(video, out)[later]
    target_colors = np.array([obj.color for obj in objects], dtype=object)
    colour_ok = (_nearest_palette_color(mean_colors) == target_colors) & present
    spreads = [  # how much each object's colour wanders over the clip
        np.linalg.norm(mean_colors[present[:, k], k].std(axis=0))
        for k in range(len(objects))
        if present[:, k].sum() > 1
    ]

    whole = unoccluded[later] & valid
    shape_ok = np.zeros_like(whole)
    for k, obj in enumerate(objects):
        fitted = fit_shapes(out.masks[later, k], out.areas[later, k], out.centroids[later, k])
        shape_ok[:, k] = (fitted == SHAPES.index(obj.shape)) & present[:, k]

    inter = np.count_nonzero(out.masks[later] & ref.masks[later], axis=(2, 3))
    union = np.count_nonzero(out.masks[later] | ref.masks[later], axis=(2, 3))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)

    background = ~_dilate(out.masks.any(axis=1) | ref.masks.any(axis=1), BACKGROUND_MARGIN)  # [F, H, W]
    # nothing of the background left scores 0 dB
    background_psnr = psnr(video[later], reference[later], background[later]) if background[later].any() else 0.0

    return {
        "colour_accuracy": _fraction(colour_ok, valid),
        "shape_accuracy": _fraction(shape_ok, whole),
        "mask_iou": _mean_over_objects(iou, valid),
        "background_psnr": background_psnr,
        "flicker": _flicker(video, background),
        "colour_std": float(np.mean(spreads)) if spreads else math.nan,
    }


def _flicker(video, background):
    """Mean over t >= 1 of the mean absolute change from frame t-1 on pixels that are background in both."""
    both = background[1:] & background[:-1]
    change = np.abs(video[1:].astype(np.int16) - video[:-1]).sum(axis=-1, dtype=np.int32) / 3
    counts = np.count_nonzero(both, axis=(1, 2))
    if not counts.any():
        return math.nan
    per_frame = (change * both).sum(axis=(1, 2))[counts > 0] / counts[counts > 0]
    return float(per_frame.mean())


def _fraction(ok, counted):
    return float(ok[counted].mean()) if counted.any() else math.nan


def _mean_over_objects(values, counted, reduce=np.mean):
    """reduce over counted frames per object, then the mean over objects (nan if none counted)."""
    per_object = [reduce(values[counted[:, k], k]) for k in range(values.shape[1]) if counted[:, k].any()]
    return float(np.mean(per_object)) if per_object else math.nan


# --------------------------------------------------------------------------------------------
# edit cases


def edit_metrics(video, case, vae_floor=None):
    """Metrics of an edited video (uint8 [17, 256, 256, 3], numpy or torch) against an EditCase.

    Frames 1..F-1 are scored (frame 0 is the given first frame, scored by first_frame_psnr).
    The dict also holds "passed" (edit_passes with vae_floor)."""
    video = as_video(video)
    reference = case.ground_truth().numpy()
    _check_shape(video, reference.shape)
    target = case.target
    colors = [obj.color for obj in target.objects]
    leak_colors = [c for c in dict.fromkeys(obj.color for obj in case.source.objects) if c not in colors]
    background = background_image(target.background)
    out = Segmentation(video, background, colors, leak_colors)
    ref = Segmentation(reference, background, colors, leak_colors)
    later = slice(1, None)
    metrics = _trajectory(out, ref)
    foreground = np.count_nonzero(out.foreground[later])
    metrics["colour_leak"] = np.count_nonzero(out.leak[later]) / foreground if foreground else 0.0
    metrics.update(_appearance(video, reference, out, ref, target.objects, _unoccluded(target)))
    metrics["first_frame_psnr"] = psnr(video[0], reference[0])
    metrics["passed"] = edit_passes(metrics, vae_floor)
    return metrics


def _trajectory(out, ref):
    """TE_mean, TE_max, TE_rel and direction agreement over frames 1..F-1."""
    later = slice(1, None)
    valid = ref.areas[later] > 0
    missing = out.areas[later] < MISSING_AREA_FRACTION * ref.areas[later]
    error = np.where(missing, MISSING_ERROR, np.linalg.norm(out.centroids[later] - ref.centroids[later], axis=-1))
    te_mean = _mean_over_objects(error, valid)
    te_max = _mean_over_objects(error, valid, np.max)

    ref_move = ref.centroids[later] - ref.centroids[:1]
    out_move = out.centroids[later] - out.centroids[:1]
    ref_distance = np.linalg.norm(ref_move, axis=-1)
    out_distance = np.linalg.norm(out_move, axis=-1)
    gt_travel = _mean_over_objects(ref_distance, valid & (ref.areas[:1] > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (out_move * ref_move).sum(-1) / (out_distance * ref_distance)
    # a missing or unmoved output object agrees with nothing
    out_missing_at_start = out.areas[:1] < MISSING_AREA_FRACTION * ref.areas[:1]
    cosine = np.where(missing | out_missing_at_start | ~np.isfinite(cosine), 0.0, cosine)
    votes = valid & (ref_distance >= MIN_GT_DISPLACEMENT)
    return {
        "te_mean": te_mean,
        "te_max": te_max,
        "te_rel": te_mean / gt_travel if gt_travel > 0 else math.nan,
        "direction_agreement": float(cosine[votes].mean()) if votes.any() else math.nan,
    }


def background_threshold(vae_floor=None):
    """Background PSNR bar: 30 dB, relaxed to the VAE floor minus 3 dB when that is lower."""
    bar = EDIT_THRESHOLDS["background_psnr"]
    return bar if vae_floor is None else min(bar, vae_floor - 3.0)


def _at_most(value, bar):
    return math.isnan(value) or value <= bar  # nan: not measurable on this case's ground truth


def _at_least(value, bar):
    return math.isnan(value) or value >= bar


def edit_passes(metrics, vae_floor=None):
    """The pass rule of an edit: every metric on its side of EDIT_THRESHOLDS.

    A nan metric (undefined on this ground truth, e.g. no frame where an object is unoccluded)
    does not fail the case."""
    bars = EDIT_THRESHOLDS
    return bool(
        _at_most(metrics["te_mean"], bars["te_mean"])
        and _at_most(metrics["te_max"], bars["te_max"])
        and _at_least(metrics["direction_agreement"], bars["direction_agreement"])
        and _at_least(metrics["colour_accuracy"], bars["colour_accuracy"])
        and _at_most(metrics["colour_leak"], bars["colour_leak"])
        and _at_least(metrics["shape_accuracy"], bars["shape_accuracy"])
        and _at_least(metrics["mask_iou"], bars["mask_iou"])
        and _at_least(metrics["background_psnr"], background_threshold(vae_floor))
        and _at_most(metrics["flicker"], bars["flicker"])
    )


# --------------------------------------------------------------------------------------------
# continuation cases


def continuation_metrics(video, case, vae_floor=None):
    """Metrics of a continuation (uint8 [17, 256, 256, 3]: frame 0 is the seam) against a
    ContinuationCase. Positions are not compared (one frame cannot fix the velocity); direction
    and speed are judged against the seam caption over the frames before the first bounce."""
    video = as_video(video)
    reference = case.ground_truth().numpy()
    _check_shape(video, reference.shape)
    scene = case.scene
    background = background_image(scene.background)
    colors = [obj.color for obj in scene.objects]
    out = Segmentation(video, background, colors)
    ref = Segmentation(reference, background, colors)

    metrics = {"seam_psnr": psnr(video[0], reference[0])}
    metrics.update(_appearance(video, reference, out, ref, scene.objects, _unoccluded(scene)[SEAM_FRAME:]))
    errors, in_band = [], []
    for k, obj in enumerate(scene.objects):
        error, ok = _caption_motion_check(obj, out, ref, k)
        if not math.isnan(error):
            errors.append(error)
            in_band.append(ok)
    metrics["direction_error"] = max(errors) if errors else math.nan
    metrics["speed_in_band"] = float(np.mean(in_band)) if in_band else math.nan
    metrics["passed"] = continuation_passes(metrics, vae_floor)
    return metrics


def _frames_before_bounce(obj, limit):
    """Largest t <= limit such that the velocity keeps its seam value over frames seam..seam+t."""
    seam = velocity_at(obj, SEAM_FRAME)
    t = 0
    while t < limit and velocity_at(obj, SEAM_FRAME + t + 1) == seam:
        t += 1
    return t


def _caption_motion_check(obj, out, ref, k):
    """(direction error in degrees, speed inside the caption's band) for object k, (nan, True)
    when a bounce follows the seam at once."""
    vx, vy = velocity_at(obj, SEAM_FRAME)
    frames = _frames_before_bounce(obj, CONTINUATION_DIRECTION_FRAMES)
    if frames == 0:
        return math.nan, True
    present = out.areas[[0, frames], k] >= MISSING_AREA_FRACTION * np.maximum(ref.areas[[0, frames], k], 1)
    if not present.all():
        return 180.0, False
    dx, dy = out.centroids[frames, k] - out.centroids[0, k]
    speed = math.hypot(dx, dy) / frames
    caption_speed = math.hypot(vx, vy)
    if caption_speed == 0:  # "standing still"
        return 0.0, speed < SPEED_SLACK
    in_band = speed < SLOW_SPEED + SPEED_SLACK if caption_speed < SLOW_SPEED else speed >= SLOW_SPEED - SPEED_SLACK
    bin_centre = 45.0 * DIRECTIONS.index(direction_word(vx, vy))
    angle = math.degrees(math.atan2(-dy, dx))
    error = abs((angle - bin_centre + 180.0) % 360.0 - 180.0)
    return error, in_band


def continuation_passes(metrics, vae_floor=None):
    """Continuation pass rule: seam PSNR >= VAE floor - 1 dB (30 dB without a floor), colour, shape
    and background as for edits, direction within 30 degrees of the caption and speed in its band."""
    bars = CONTINUATION_THRESHOLDS
    seam_bar = bars["seam_psnr"] if vae_floor is None else vae_floor - 1.0
    return bool(
        metrics["seam_psnr"] >= seam_bar
        and _at_least(metrics["colour_accuracy"], bars["colour_accuracy"])
        and _at_least(metrics["shape_accuracy"], bars["shape_accuracy"])
        and _at_least(metrics["background_psnr"], background_threshold(vae_floor))
        and _at_most(metrics["direction_error"], bars["direction_error"])
        and _at_least(metrics["speed_in_band"], 1.0)
    )


# --------------------------------------------------------------------------------------------
# seed diversity


def circular_variance(vectors):
    """1 - length of the mean unit vector of 2-D vectors [N, 2]: 0 all alike, ~1 uniform."""
    vectors = np.asarray(vectors, dtype=np.float64)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return float(1.0 - np.linalg.norm(units.mean(axis=0)))


def seed_diversity(videos, scene, frames=8):
    """Circular variance of the objects' displacement directions over the first `frames` frames
    across videos generated from one first frame (one per seed). Objects that move less than
    1 px or vanish are left out; nan if fewer than two directions remain."""
    background = background_image(scene.background)
    colors = [obj.color for obj in scene.objects]
    moves = []
    for video in videos:
        seg = segment(video, background, colors)
        last = min(frames, seg.areas.shape[0] - 1)
        move = seg.centroids[last] - seg.centroids[0]  # [K, 2]
        keep = np.isfinite(move).all(-1) & (np.linalg.norm(np.nan_to_num(move), axis=-1) >= 1.0)
        moves.extend(move[keep])
    return circular_variance(moves) if len(moves) >= 2 else math.nan


# --------------------------------------------------------------------------------------------
# procedural captioner


def _soft_centroids(video, background, mask, color):
    """Coverage-weighted centroids [F, 2] of one object: each pixel within 2 px of its mask weighs
    its alpha, estimated by projecting (pixel - background) onto (colour - background). Sub-pixel
    accurate where binary masks move in whole-pixel steps."""
    towards = np.asarray(OBJECT_COLORS[color], dtype=np.float32) - background.astype(np.float32)  # [H, W, 3]
    offset = video.astype(np.float32) - background.astype(np.float32)
    alpha = np.einsum("fhwc,hwc->fhw", offset, towards) / np.einsum("hwc,hwc->hw", towards, towards)
    weight = np.clip(alpha, 0, 1) * _dilate(mask, 2)
    total = weight.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weight.sum(axis=1) @ (np.arange(WIDTH) + 0.5)) / total
        cy = (weight.sum(axis=2) @ (np.arange(HEIGHT) + 0.5)) / total
    return np.stack([cx, cy], axis=-1)


@lru_cache(maxsize=1)
def _all_backgrounds():
    solids = [Background("solid", (color,)) for color in BACKGROUND_COLORS]
    pairs = [Background(kind, pair) for kind in ("split", "gradient") for pair in BACKGROUND_PAIRS]
    backgrounds = solids + pairs
    return backgrounds, np.stack([background_image(bg) for bg in backgrounds]).astype(np.float32)


def estimate_background(frame):
    """The palette background (any kind) that explains most pixels of one frame (uint8 [H, W, 3])."""
    backgrounds, images = _all_backgrounds()
    grid = (slice(None), slice(2, None, 4), slice(2, None, 4))  # every 4th pixel is plenty
    difference = images[grid] - frame[grid[1:]].astype(np.float32)
    explained = np.count_nonzero((difference**2).sum(-1) <= FOREGROUND_DISTANCE**2, axis=(1, 2))
    return backgrounds[int(np.argmax(explained))]


def procedural_caption(frames):
    """Caption the end of a clip with the grammar of docs/TOYWORLD.md, motion phrase included.

    frames: uint8 [F >= 2, 256, 256, 3]. The background is the palette background that explains
    most of the last frame; objects are the (at most two) palette colours with at least
    MIN_OBJECT_AREA px in the last frame, listed in palette order; each gets the best-fitting shape
    and the centroid step between the last two frames as its velocity."""
    frames = as_video(frames, "frames")
    if frames.shape[0] < 2 or frames.shape[1:3] != (HEIGHT, WIDTH):
        raise WanInputError(f"frames: expected at least 2 frames of {HEIGHT}x{WIDTH}, got {tuple(frames.shape)}")
    last_two = frames[-2:]
    background = estimate_background(last_two[-1])
    image = background_image(background)
    everything = segment(last_two[-1:], image, tuple(OBJECT_COLORS))
    areas = everything.areas[0]
    names = list(OBJECT_COLORS)
    largest = [names[i] for i in np.argsort(-areas, kind="stable")[:2] if areas[i] >= MIN_OBJECT_AREA]
    found = sorted(largest, key=names.index)
    if not found:
        raise WanInputError("frames: no object of the toy-world palette is visible in the last frame")
    seg = segment(last_two, image, found)
    phrases = []
    for k, color in enumerate(found):
        shape = SHAPES[fit_shapes(seg.masks[1:, k], seg.areas[1:, k], seg.centroids[1:, k])[0]]
        centroid = _soft_centroids(last_two, image, seg.masks[:, k], color)
        step = centroid[1] - centroid[0]
        if not np.isfinite(step).all() or np.hypot(*step) < STILL_SPEED:
            step = (0.0, 0.0)
        phrases.append(object_phrase(shape, color, (float(step[0]), float(step[1]))))
    return caption_text(phrases, background)


class ProceduralCaptioner:
    """The continuation tasks' captioner for toy-world clips (no network): procedural_caption on the
    last two frames, brought to the world's 256x256. A clip where it finds no palette object (a
    random model's output) gets an empty caption, so the continuation prompt falls back to its prefix."""

    num_frames = 2

    def caption(self, frames):
        frames = frames[-2:]
        if tuple(frames.shape[1:3]) != (HEIGHT, WIDTH):
            frames = resize_center_crop(frames, WIDTH, HEIGHT)
        try:
            return procedural_caption(frames)
        except WanInputError as err:
            log.info("procedural caption: %s", err)
            return ""
