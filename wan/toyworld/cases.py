"""Benchmark cases of toyworld-v1 (docs/TOYWORLD.md, section 9).

An edit case is a source scene and a target scene that differ only in appearance: the target keeps
every object's size, start and velocity, so its render is the ground truth of the edit. A
continuation case is one 33-frame scene: the editor sees frames 0..16 and the seam caption, and
the ground truth is frames 16..32. Cases are small JSON records; videos are rendered on demand.
"""
import json
import numbers
from dataclasses import dataclass, replace

import numpy as np

from ..errors import WanInputError
from ..utils.fileio import write_json_atomic
from .world import (
    BACKGROUND_COLORS,
    BACKGROUND_PAIRS,
    OBJECT_COLORS,
    SHAPES,
    SPEC_VERSION,
    Background,
    Scene,
    caption,
    render,
    sample_benchmark_scene,
    with_frames,
)

# Edit types and their shares of the non-reconstruction cases.
EDIT_SHARES = {
    "recolour": 0.30,
    "reshape": 0.20,
    "recolour+reshape": 0.15,
    "background": 0.15,
    "recolour-one-of-two": 0.20,
}
NO_EDIT = "none"  # reconstruction: target = source
NO_EDIT_EVERY = 8  # every 8th case is a reconstruction, on top of the shares
# Objects in the source scene per edit type (None: the benchmark mix of one or two).
SOURCE_OBJECTS = {
    "recolour": 1,
    "reshape": 1,
    "recolour+reshape": 1,
    "background": None,
    "recolour-one-of-two": 2,
    NO_EDIT: None,
}
EDIT_FRAMES = 17
CONTINUATION_FRAMES = 33
SEAM_FRAME = 16


@dataclass(frozen=True)
class EditCase:
    """Source and target scenes (17 frames); `edited_object` is the changed object's index, if any."""

    case_id: str
    edit_type: str
    source: Scene
    target: Scene
    edited_object: int = None

    kind = "edit"

    def source_video(self, device="cpu"):
        return render(self.source, device)

    def edited_first_frame(self, device="cpu"):
        """Frame 0 of the target, uint8 [256, 256, 3] (a one-frame render of the same scene)."""
        return render(with_frames(self.target, 1), device)[0]

    @property
    def source_caption(self):
        return caption(self.source)

    @property
    def target_caption(self):
        return caption(self.target)

    def ground_truth(self, device="cpu"):
        return render(self.target, device)

    def to_dict(self):
        return {
            "spec_version": SPEC_VERSION,
            "case_id": self.case_id,
            "kind": self.kind,
            "edit_type": self.edit_type,
            "edited_object": self.edited_object,
            "source": self.source.to_dict(),
            "target": self.target.to_dict(),
        }


@dataclass(frozen=True)
class ContinuationCase:
    """A 33-frame scene: the given clip is frames 0..16, the ground truth frames 16..32."""

    case_id: str
    scene: Scene

    kind = "continuation"

    def clip(self, device="cpu"):
        return render(with_frames(self.scene, SEAM_FRAME + 1), device)

    @property
    def clip_caption(self):
        """Caption of the given clip, with the motion at its first frame."""
        return caption(self.scene, motion=True, frame=0)

    @property
    def seam_caption(self):
        """Caption for the continuation, with the motion at the seam frame."""
        return caption(self.scene, motion=True, frame=SEAM_FRAME)

    def ground_truth(self, device="cpu"):
        return render(self.scene, device)[SEAM_FRAME:]

    def to_dict(self):
        return {
            "spec_version": SPEC_VERSION,
            "case_id": self.case_id,
            "kind": self.kind,
            "scene": self.scene.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# generation


def edit_type_plan(n, rng):
    """Edit types for n cases: every 8th is "none"; the rest follow EDIT_SHARES (largest remainder),
    in an order shuffled by rng."""
    n_none = n // NO_EDIT_EVERY
    n_edits = n - n_none
    quotas = {kind: share * n_edits for kind, share in EDIT_SHARES.items()}
    counts = {kind: int(quota) for kind, quota in quotas.items()}
    by_remainder = sorted(quotas, key=lambda kind: quotas[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: n_edits - sum(counts.values())]:
        counts[kind] += 1
    edits = [kind for kind, count in counts.items() for _ in range(count)]
    edits = [edits[i] for i in rng.permutation(n_edits)]
    return [NO_EDIT if i % NO_EDIT_EVERY == NO_EDIT_EVERY - 1 else edits.pop() for i in range(n)]


def _other(rng, choices, *excluded):
    options = [choice for choice in choices if choice not in excluded]
    return options[rng.integers(len(options))]


def _new_background(rng, background):
    """Another background of the same kind, with at least one colour changed."""
    if background.kind == "solid":
        options = [(color,) for color in BACKGROUND_COLORS]
    else:
        options = list(BACKGROUND_PAIRS)
    options.remove(background.colors)
    return Background(background.kind, options[rng.integers(len(options))])


def _edit(rng, source, edit_type):
    """(target, edited object index or None) for one edit type; geometry and motion are kept."""
    objects = list(source.objects)
    if edit_type == NO_EDIT:
        return source, None
    if edit_type == "background":
        return replace(source, background=_new_background(rng, source.background)), None
    index = int(rng.integers(len(objects))) if edit_type == "recolour-one-of-two" else 0
    obj = objects[index]
    if edit_type in ("recolour", "recolour+reshape", "recolour-one-of-two"):
        taken = [other.color for other in objects]  # the old colour and any other object's
        obj = replace(obj, color=_other(rng, tuple(OBJECT_COLORS), *taken))
    if edit_type in ("reshape", "recolour+reshape"):
        obj = replace(obj, shape=_other(rng, SHAPES, obj.shape))
    objects[index] = obj
    return replace(source, objects=tuple(objects)).validate(), index


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise WanInputError(f"n: expected a number of cases >= 0, got {n!r}")


def make_edit_cases(n, seed):
    """n edit cases (17 frames), the same for the same seed."""
    _check_count(n)
    rng = np.random.default_rng([seed, 0])
    cases = []
    for i, edit_type in enumerate(edit_type_plan(n, rng)):
        source = sample_benchmark_scene(rng, n_objects=SOURCE_OBJECTS[edit_type], frames=EDIT_FRAMES)
        target, index = _edit(rng, source, edit_type)
        cases.append(EditCase(f"edit-s{seed}-{i:04d}", edit_type, source, target, index))
    return cases


def make_continuation_cases(n, seed):
    """n continuation cases (33-frame scenes), the same for the same seed."""
    _check_count(n)
    rng = np.random.default_rng([seed, 1])
    return [
        ContinuationCase(f"continuation-s{seed}-{i:04d}", sample_benchmark_scene(rng, frames=CONTINUATION_FRAMES))
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------
# JSON


def case_from_dict(data, name="case"):
    """Parse one case record; refuses records of another spec version."""
    if not isinstance(data, dict):
        raise WanInputError(f"{name}: expected a JSON object, got {type(data).__name__}")
    _check_version(data.get("spec_version"), name)
    kind = data.get("kind")
    if kind == "edit":
        keys = ("spec_version", "case_id", "kind", "edit_type", "edited_object", "source", "target")
        _require(data, keys, name)
        edit_type = data["edit_type"]
        if edit_type not in (*EDIT_SHARES, NO_EDIT):
            raise WanInputError(f"{name}.edit_type: {edit_type!r} is not one of {', '.join((*EDIT_SHARES, NO_EDIT))}")
        source = Scene.from_dict(data["source"], f"{name}.source")
        target = Scene.from_dict(data["target"], f"{name}.target")
        _check_same_motion(source, target, f"{name}.target")
        edited = data["edited_object"]
        if edited is not None and edited not in range(len(target.objects)):
            raise WanInputError(f"{name}.edited_object: {edited!r} is not null or an object index of the target")
        return EditCase(str(data["case_id"]), edit_type, source, target, edited)
    if kind == "continuation":
        _require(data, ("spec_version", "case_id", "kind", "scene"), name)
        scene = Scene.from_dict(data["scene"], f"{name}.scene")
        if scene.frames != CONTINUATION_FRAMES:
            raise WanInputError(
                f"{name}.scene.frames: a continuation case has {CONTINUATION_FRAMES} frames, got {scene.frames}"
            )
        return ContinuationCase(str(data["case_id"]), scene)
    raise WanInputError(f"{name}.kind: {kind!r} is not one of edit, continuation")


def _check_same_motion(source, target, name):
    """An edit changes appearance only: frame count, sizes, starts and velocities must match."""
    if target.frames != source.frames or len(target.objects) != len(source.objects):
        raise WanInputError(f"{name}: an edit target keeps the source's frame count and number of objects")
    for index, (before, after) in enumerate(zip(source.objects, target.objects)):
        for key in ("size", "x0", "y0", "vx", "vy"):
            if getattr(before, key) != getattr(after, key):
                raise WanInputError(
                    f"{name}.objects[{index}].{key}: {getattr(after, key)!r} differs from the source's "
                    f"{getattr(before, key)!r}; an edit keeps every object's size, start and velocity"
                )


def _require(data, keys, name):
    missing = [key for key in keys if key not in data]
    if missing:
        raise WanInputError(f"{name}: missing field(s) {', '.join(missing)}")


def _check_version(version, name):
    if version != SPEC_VERSION:
        raise WanInputError(
            f"{name}.spec_version: {version!r} is not {SPEC_VERSION!r}; these cases were made for another toy world"
        )


def save_cases(path, cases):
    """Write cases to a JSON file atomically."""
    write_json_atomic(path, {"spec_version": SPEC_VERSION, "cases": [case.to_dict() for case in cases]})


def load_cases(path):
    """Read a file written by save_cases; refuses another spec version."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise WanInputError(f"{path}: cannot read a case file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise WanInputError(f"{path}: expected a JSON object with spec_version and a list of cases")
    _check_version(data.get("spec_version"), str(path))
    return [case_from_dict(case, f"{path}: cases[{i}]") for i, case in enumerate(data["cases"])]
