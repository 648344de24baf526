"""The toyworld-v1 scene model, renderer, captions and samplers (docs/TOYWORLD.md, sections 1-8).

A scene is one or two flat-coloured shapes that move at constant velocity and bounce off the
walls, over a static background. Everything is a closed-form function of the scene spec, so a
second implementation of docs/TOYWORLD.md renders the same bits:
- centres come from the reflection formula of section 5 (float64, numpy);
- coverage is 4x4 supersampling with closed inside tests; compositing is float64 and rounds once
  with floor(v + 0.5). Compositing only ever multiplies dyadic numbers (alpha is k/16, gradient rows
  have denominator 512), so it is exact and the operation order does not matter.

The renderer works in torch so the same code runs on the CPU (tests) and on a GPU (training data):
each object is supersampled only inside a window around its box, for all frames at once.
"""
import math
import numbers
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import WanInputError

SPEC_VERSION = "toyworld-v1"
WIDTH = HEIGHT = 256
SAMPLES_PER_AXIS = 4

OBJECT_COLORS = {
    "red": (220, 30, 50),
    "orange": (255, 130, 0),
    "yellow": (240, 240, 60),
    "green": (40, 190, 60),
    "cyan": (40, 220, 230),
    "blue": (40, 80, 240),
    "purple": (150, 50, 210),
    "pink": (250, 120, 200),
}
BACKGROUND_COLORS = {
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
    "navy": (20, 30, 90),
    "brown": (100, 60, 30),
    "forest": (20, 70, 35),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUND_KINDS = ("solid", "split", "gradient")
# Two background colours shown together must stay this far apart (RGB distance).
MIN_BACKGROUND_PAIR_DISTANCE = 75.0
# Caption direction bins, counter-clockwise from "right" in 45-degree steps (y grows down).
DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
SLOW_SPEED = 3.0  # px/frame; below it an object moves "slowly"


def color_distance(a, b):
    """Euclidean RGB distance between two colour triples."""
    return math.dist(a, b)


# Ordered pairs (A, B) allowed in a split or gradient background.
BACKGROUND_PAIRS = tuple(
    (a, b)
    for a in BACKGROUND_COLORS
    for b in BACKGROUND_COLORS
    if a != b and color_distance(BACKGROUND_COLORS[a], BACKGROUND_COLORS[b]) >= MIN_BACKGROUND_PAIR_DISTANCE
)


# --------------------------------------------------------------------------------------------
# scene specs


@dataclass(frozen=True)
class ToyObject:
    """One shape: its appearance, size (px), centre at frame 0 and velocity (px/frame)."""

    shape: str
    color: str
    size: float
    x0: float
    y0: float
    vx: float
    vy: float

    FIELDS = ("shape", "color", "size", "x0", "y0", "vx", "vy")

    def to_dict(self):
        return {key: getattr(self, key) for key in self.FIELDS}


@dataclass(frozen=True)
class Background:
    """solid (1 colour), split (left | right halves) or gradient (top -> bottom)."""

    kind: str
    colors: tuple

    def __post_init__(self):
        object.__setattr__(self, "colors", tuple(self.colors))

    def to_dict(self):
        return {"kind": self.kind, "colors": list(self.colors)}


@dataclass(frozen=True)
class Scene:
    """A clip spec: frame count (4n+1), background and objects (object 0 is drawn first)."""

    frames: int
    background: Background
    objects: tuple

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))

    def to_dict(self):
        return {
            "frames": self.frames,
            "background": self.background.to_dict(),
            "objects": [obj.to_dict() for obj in self.objects],
        }

    @classmethod
    def from_dict(cls, data, name="scene"):
        """Parse and validate a JSON scene spec; errors name the field, e.g. scene.objects[1].color."""
        _check_keys(data, ("frames", "background", "objects"), name)
        bg_data = data["background"]
        _check_keys(bg_data, ("kind", "colors"), f"{name}.background")
        colors = bg_data["colors"]
        if not isinstance(colors, list):
            raise WanInputError(f"{name}.background.colors: expected a list of colour names, got {colors!r}")
        objects_data = data["objects"]
        if not isinstance(objects_data, list):
            raise WanInputError(f"{name}.objects: expected a list of objects, got {objects_data!r}")
        objects = []
        for index, obj in enumerate(objects_data):
            obj_name = f"{name}.objects[{index}]"
            _check_keys(obj, ToyObject.FIELDS, obj_name)
            objects.append(ToyObject(**{key: obj[key] for key in ToyObject.FIELDS}))
        scene = cls(frames=data["frames"], background=Background(bg_data["kind"], colors), objects=objects)
        return scene.validate(name)

    def validate(self, name="scene"):
        """Check every field against the spec; returns self so calls chain."""
        frames = self.frames
        if isinstance(frames, bool) or not isinstance(frames, numbers.Integral) or frames < 1 or (frames - 1) % 4:
            raise WanInputError(
                f"{name}.frames: {frames!r} is not an integer frame count of the form 4n+1 (e.g. 17 or 33)"
            )
        _check_background(self.background, f"{name}.background")
        if not 1 <= len(self.objects) <= 2:
            raise WanInputError(f"{name}.objects: {SPEC_VERSION} scenes have 1 or 2 objects, got {len(self.objects)}")
        for index, obj in enumerate(self.objects):
            _check_object(obj, f"{name}.objects[{index}]")
        if len(self.objects) == 2 and self.objects[0].color == self.objects[1].color:
            raise WanInputError(
                f"{name}.objects[1].color: {self.objects[1].color!r} is also the colour of objects[0]; "
                "the objects of a scene need distinct colours"
            )
        return self


def _check_keys(data, keys, name):
    if not isinstance(data, dict):
        raise WanInputError(f"{name}: expected a JSON object with fields {', '.join(keys)}, got {data!r}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise WanInputError(f"{name}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise WanInputError(f"{name}: unknown field(s) {', '.join(unknown)}; expected {', '.join(keys)}")


def _check_choice(value, choices, name):
    if not isinstance(value, str) or value not in choices:
        raise WanInputError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def _check_number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WanInputError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise WanInputError(f"{name}: {value!r} is not a finite number")


def _check_background(background, name):
    _check_choice(background.kind, BACKGROUND_KINDS, f"{name}.kind")
    expected = 1 if background.kind == "solid" else 2
    if len(background.colors) != expected:
        raise WanInputError(
            f"{name}.colors: a {background.kind} background takes {expected} colour(s), got {len(background.colors)}"
        )
    for index, color in enumerate(background.colors):
        _check_choice(color, tuple(BACKGROUND_COLORS), f"{name}.colors[{index}]")
    if expected == 2:
        a, b = background.colors
        distance = color_distance(BACKGROUND_COLORS[a], BACKGROUND_COLORS[b])
        if distance < MIN_BACKGROUND_PAIR_DISTANCE:
            raise WanInputError(
                f"{name}.colors: {a} and {b} are {distance:.0f} apart in RGB; colours shown together "
                f"must be at least {MIN_BACKGROUND_PAIR_DISTANCE:.0f} apart"
            )


def _check_object(obj, name):
    _check_choice(obj.shape, SHAPES, f"{name}.shape")
    _check_choice(obj.color, tuple(OBJECT_COLORS), f"{name}.color")
    for key in ("size", "x0", "y0", "vx", "vy"):
        _check_number(getattr(obj, key), f"{name}.{key}")
    if not 0 < obj.size < min(WIDTH, HEIGHT):
        raise WanInputError(
            f"{name}.size: {obj.size!r} is outside the canvas; expected 0 < size < {min(WIDTH, HEIGHT)}"
        )
    half = obj.size / 2
    for key, extent in (("x0", WIDTH), ("y0", HEIGHT)):
        value = getattr(obj, key)
        if not half <= value <= extent - half:
            raise WanInputError(
                f"{name}.{key}: {value!r} puts the {obj.size:g}-px box outside the canvas; "
                f"expected {half:g} <= {key} <= {extent - half:g}"
            )


# --------------------------------------------------------------------------------------------
# motion (closed form of elastic bouncing)


def _bounce(start, velocity, size, extent, frames):
    """Per-axis centre and signed velocity for frames 0..frames-1; inputs are arrays [M]."""
    free = (extent - size)[:, None]
    steps = np.arange(frames, dtype=np.float64)
    unfolded = (start - size / 2)[:, None] + velocity[:, None] * steps
    folded = np.mod(unfolded, 2 * free)
    position = np.where(folded <= free, folded, 2 * free - folded) + (size / 2)[:, None]
    signed_velocity = np.where(folded < free, 1.0, -1.0) * velocity[:, None]
    return position, signed_velocity


def _motion(objects, frames):
    """Centres [M, F, 2] and signed velocities [M, F, 2] (float64) of a list of objects."""
    field = {key: np.array([getattr(obj, key) for obj in objects], dtype=np.float64) for key in ToyObject.FIELDS[2:]}
    cx, vx = _bounce(field["x0"], field["vx"], field["size"], WIDTH, frames)
    cy, vy = _bounce(field["y0"], field["vy"], field["size"], HEIGHT, frames)
    return np.stack([cx, cy], axis=-1), np.stack([vx, vy], axis=-1)


def centres(scene):
    """Box centres (cx, cy) per frame and object: float64 [F, n_objects, 2]."""
    scene.validate()
    return _motion(scene.objects, scene.frames)[0].transpose(1, 0, 2)


def velocity_at(obj, frame):
    """Signed velocity (vx, vy) of `obj` at `frame`: each axis flips sign after an odd number of bounces."""
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or frame < 0:
        raise WanInputError(f"frame: expected a frame index >= 0, got {frame!r}")
    velocity = _motion([obj], frame + 1)[1][0, frame]
    return float(velocity[0]), float(velocity[1])


# --------------------------------------------------------------------------------------------
# rendering


def _background_float(background):
    """Background as float64 [H, W, 3], before the final rounding."""
    first = np.array(BACKGROUND_COLORS[background.colors[0]], dtype=np.float64)
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.float64)
    if background.kind == "solid":
        image[:] = first
        return image
    second = np.array(BACKGROUND_COLORS[background.colors[1]], dtype=np.float64)
    if background.kind == "split":
        image[:, : WIDTH // 2] = first
        image[:, WIDTH // 2 :] = second
    else:  # gradient, top -> bottom
        rows = np.arange(HEIGHT, dtype=np.float64)[:, None, None]
        image[:] = first + (second - first) * (rows + 0.5) / HEIGHT
    return image


def _round_to_uint8(values):
    """floor(v + 0.5), clipped to 0..255 (numpy or torch)."""
    if isinstance(values, torch.Tensor):
        return torch.floor(values + 0.5).clamp_(0, 255).to(torch.uint8)
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def background_image(background):
    """The rounded background: uint8 [256, 256, 3]."""
    _check_background(background, "background")
    return _round_to_uint8(_background_float(background))


def edge_functions(shape, dx, dy, ys, cy, r):
    """The shape's edge functions at sample points: a point is inside iff every one is <= 0.

    dx = x - cx varies along columns ([..., 1, S]), dy = y - cy and the sample rows ys along rows
    ([..., S, 1]); cy and r broadcast. Works on torch tensors and numpy arrays. a - b <= 0 holds
    exactly when a <= b in IEEE arithmetic, so these are the spec's closed tests as written."""
    if shape == "circle":
        return [dx * dx + dy * dy - r * r]
    if shape == "square":
        return [abs(dx) - r, abs(dy) - r]
    if shape == "diamond":
        return [abs(dx) + abs(dy) - r]
    # triangle, apex up: inside the two slanted sides and above the base
    return [ys - (cy + r), abs(dx) - (ys - (cy - r)) / 2]


def _sample_windows(objects, centre):
    """Supersample coordinates in a square window of P pixels per side around each object's box.

    centre: float64 [M, F, 2] on the target device. Returns the window origins row0, col0 (long
    [M, F]), P, and per frame the sample offsets from the centre dx [M, F, 1, 4P], dy and sample
    rows ys [M, F, 4P, 1], plus cy and r shaped to broadcast. The window covers every pixel the
    box touches: floor(size) + 2 pixels per side, moved inside the canvas."""
    device = centre.device
    size = torch.tensor([obj.size for obj in objects], dtype=torch.float64, device=device)
    pixels = min(int(math.floor(max(obj.size for obj in objects))) + 2, WIDTH, HEIGHT)
    r = (size / 2)[:, None]
    cx, cy = centre[..., 0], centre[..., 1]
    col0 = torch.floor(cx - r).clamp(0, WIDTH - pixels).long()
    row0 = torch.floor(cy - r).clamp(0, HEIGHT - pixels).long()
    offsets = (torch.arange(SAMPLES_PER_AXIS, dtype=torch.float64, device=device) + 0.5) / SAMPLES_PER_AXIS
    steps = torch.arange(pixels, dtype=torch.float64, device=device)[:, None]

    def samples(origin):  # [M, F] -> [M, F, P * 4]: pixel index + (b + 0.5) / 4, exact in float64
        return ((origin.double()[..., None, None] + steps) + offsets).flatten(-2)

    xs, ys = samples(col0), samples(row0)
    dx = (xs - cx[..., None])[..., None, :]
    ys = ys[..., :, None]
    dy = ys - cy[..., None, None]
    return row0, col0, pixels, dx, dy, ys, cy[..., None, None], r[..., None, None]


def _window_counts(objects, centre):
    """Inside-sample counts (0..16) per pixel of each object's window: float64 [M, F, P, P]."""
    row0, col0, pixels, dx, dy, ys, cy, r = _sample_windows(objects, centre)
    n = SAMPLES_PER_AXIS
    counts = torch.zeros(centre.shape[:2] + (pixels, pixels), dtype=torch.float64, device=centre.device)
    for shape in SHAPES:
        index = [m for m, obj in enumerate(objects) if obj.shape == shape]
        if not index:
            continue
        pick = torch.tensor(index, device=centre.device)
        inside = None
        for edge in edge_functions(shape, dx[pick], dy[pick], ys[pick], cy[pick], r[pick]):
            inside = edge <= 0 if inside is None else inside & (edge <= 0)
        grid = inside.reshape(len(index), -1, pixels, n, pixels, n)
        counts[pick] = grid.sum(dim=(3, 5), dtype=torch.float64)
    return counts, row0, col0, pixels


def render_batch(scenes, device="cpu", return_coverage=False):
    """Render scenes that share a frame count: uint8 [N, F, 256, 256, 3].

    With return_coverage, also each object's own alpha (before occlusion) as float32
    [N, F, max_objects, 256, 256] (zeros for missing objects). Peak memory is about 60 MB per
    17-frame scene on the device: batch accordingly (64 scenes per call suit a large GPU)."""
    scenes = list(scenes)
    if not scenes:
        raise WanInputError("scenes: expected at least one scene")
    for index, scene in enumerate(scenes):
        scene.validate(f"scenes[{index}]")
    frames = scenes[0].frames
    if any(scene.frames != frames for scene in scenes):
        raise WanInputError("scenes: all scenes of a batch need the same frame count")
    device = torch.device(device)
    background = np.stack([_background_float(scene.background) for scene in scenes])
    image = torch.from_numpy(background).to(device)[:, None].repeat(1, frames, 1, 1, 1)
    layers = max(len(scene.objects) for scene in scenes)
    coverage = None
    if return_coverage:
        coverage = torch.zeros((len(scenes), frames, layers, HEIGHT, WIDTH), dtype=torch.float32, device=device)
    frame_index = torch.arange(frames, device=device)[None, :, None, None]
    for layer in range(layers):  # object 0 of every scene first, then object 1 over it
        members = [n for n, scene in enumerate(scenes) if len(scene.objects) > layer]
        objects = [scenes[n].objects[layer] for n in members]
        centre = torch.from_numpy(_motion(objects, frames)[0]).to(device)
        counts, row0, col0, pixels = _window_counts(objects, centre)
        steps = torch.arange(pixels, device=device)
        rows = (row0[..., None] + steps)[..., :, None]
        cols = (col0[..., None] + steps)[..., None, :]
        scene_index = torch.tensor(members, device=device)[:, None, None, None]
        where = (scene_index, frame_index, rows, cols)
        alpha = (counts / SAMPLES_PER_AXIS**2)[..., None]
        color = torch.tensor([OBJECT_COLORS[obj.color] for obj in objects], dtype=torch.float64, device=device)
        image[where] = image[where] * (1 - alpha) + color[:, None, None, None, :] * alpha
        if coverage is not None:
            coverage[scene_index, frame_index, layer, rows, cols] = alpha[..., 0].float()
    video = _round_to_uint8(image)
    return (video, coverage) if return_coverage else video


def render(scene, device="cpu", return_coverage=False):
    """Render one scene: uint8 [F, 256, 256, 3] (and float32 coverage [F, n_objects, 256, 256])."""
    result = render_batch([scene], device, return_coverage)
    if return_coverage:
        return result[0][0], result[1][0]
    return result[0]


def is_tie_free(scene, margin=1e-6):
    """True when no supersample lies within `margin` of any edge function of any object and frame.

    Renderers that order float operations differently can disagree on such samples, so
    hand-written test specs must pass this check (random draws do with probability ~1)."""
    scene.validate()
    centre = torch.from_numpy(_motion(scene.objects, scene.frames)[0])
    _, _, _, dx, dy, ys, cy, r = _sample_windows(scene.objects, centre)
    for m, obj in enumerate(scene.objects):
        for edge in edge_functions(obj.shape, dx[m], dy[m], ys[m], cy[m], r[m]):
            if edge.abs().min().item() <= margin:
                return False
    return True


# --------------------------------------------------------------------------------------------
# captions


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def direction_word(vx, vy):
    """The 45-degree direction bin of a velocity (y grows down, so "up" is vy < 0)."""
    angle = math.degrees(math.atan2(-vy, vx)) % 360
    return DIRECTIONS[int(math.floor((angle + 22.5) / 45)) % 8]


def object_phrase(shape, color, velocity=None):
    """"a red circle", with " moving <speed> <direction>" / " standing still" when a velocity is given."""
    phrase = f"{_article(color)} {color} {shape}"
    if velocity is None:
        return phrase
    vx, vy = velocity
    speed = math.hypot(vx, vy)
    if speed == 0:
        return phrase + " standing still"
    return phrase + f" moving {'slowly' if speed < SLOW_SPEED else 'quickly'} {direction_word(vx, vy)}"


def background_phrase(background):
    colors = background.colors
    if background.kind == "solid":
        return colors[0]
    if background.kind == "split":
        return f"{colors[0]} and {colors[1]} split"
    return f"{colors[0]} to {colors[1]} gradient"


def caption_text(object_phrases, background):
    """Join object phrases and the background into a caption sentence."""
    phrase = background_phrase(background)
    return f"{' and '.join(object_phrases)} on {_article(phrase)} {phrase} background."


def caption(scene, motion=False, frame=0):
    """The scene's caption; with motion=True each object gets its motion phrase at `frame`."""
    scene.validate()
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or not 0 <= frame < scene.frames:
        raise WanInputError(f"frame: expected a frame index in 0..{scene.frames - 1}, got {frame!r}")
    phrases = [
        object_phrase(obj.shape, obj.color, velocity_at(obj, frame) if motion else None) for obj in scene.objects
    ]
    return caption_text(phrases, scene.background)


# --------------------------------------------------------------------------------------------
# sampling


def _sample_background(rng):
    draw = rng.random()
    if draw < 0.5:
        return Background("solid", (tuple(BACKGROUND_COLORS)[rng.integers(len(BACKGROUND_COLORS))],))
    kind = "split" if draw < 0.75 else "gradient"
    return Background(kind, BACKGROUND_PAIRS[rng.integers(len(BACKGROUND_PAIRS))])


def _sample_object(rng, color, size_range, speed_range, still_probability):
    """Shape, size, position, then a velocity drawn independently of all of them."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = rng.uniform(*size_range)
    x0 = rng.uniform(size / 2, WIDTH - size / 2)
    y0 = rng.uniform(size / 2, HEIGHT - size / 2)
    if rng.random() < still_probability:
        vx = vy = 0.0
    else:
        speed = rng.uniform(*speed_range)
        angle = rng.uniform(0, 2 * math.pi)
        vx, vy = speed * math.cos(angle), -speed * math.sin(angle)
    return ToyObject(shape, color, float(size), float(x0), float(y0), float(vx), float(vy))


def _sample_colors(rng, count):
    names = tuple(OBJECT_COLORS)
    return [names[i] for i in rng.choice(len(names), size=count, replace=False)]


def sample_training_scene(rng):
    """A scene from the training distribution (section 7); `rng` is a numpy Generator."""
    frames = 17 if rng.random() < 0.75 else 33
    count = 1 if rng.random() < 0.6 else 2
    colors = _sample_colors(rng, count)
    objects = [_sample_object(rng, color, (36.0, 64.0), (1.5, 5.0), 0.05) for color in colors]
    return Scene(frames, _sample_background(rng), objects)


def _boxes_disjoint(a, b):
    reach = (a.size + b.size) / 2
    return abs(a.x0 - b.x0) > reach or abs(a.y0 - b.y0) > reach


def sample_benchmark_scene(rng, n_objects=None, frames=17):
    """A benchmark scene (section 7): sizes 40-60 px, speeds 2-4.5 px/frame, disjoint frame-0 boxes."""
    if n_objects is None:
        n_objects = 1 if rng.random() < 0.6 else 2
    if n_objects not in (1, 2):
        raise WanInputError(f"n_objects: {SPEC_VERSION} scenes have 1 or 2 objects, got {n_objects!r}")
    colors = _sample_colors(rng, n_objects)
    while True:
        objects = [_sample_object(rng, color, (40.0, 60.0), (2.0, 4.5), 0.0) for color in colors]
        if n_objects == 1 or _boxes_disjoint(*objects):
            break
    return Scene(frames, _sample_background(rng), objects).validate()


def with_frames(scene, frames):
    """The same scene over another frame count (frame k is unchanged)."""
    return replace(scene, frames=frames).validate()
