"""wan.toyworld: the toyworld-v1 renderer, cases and pixel metrics (docs/TOYWORLD.md)."""
import hashlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from wan.errors import WanInputError
from wan.toyworld import cases as toy_cases
from wan.toyworld.cases import (
    EDIT_SHARES,
    load_cases,
    make_continuation_cases,
    make_edit_cases,
    save_cases,
)
from wan.toyworld.metrics import (
    circular_variance,
    continuation_metrics,
    edit_metrics,
    edit_passes,
    procedural_caption,
    seed_diversity,
)
from wan.toyworld.world import (
    BACKGROUND_COLORS,
    MIN_BACKGROUND_PAIR_DISTANCE,
    OBJECT_COLORS,
    SHAPES,
    Background,
    Scene,
    ToyObject,
    background_image,
    caption,
    centres,
    color_distance,
    is_tie_free,
    render,
    render_batch,
    sample_benchmark_scene,
    sample_training_scene,
    velocity_at,
    with_frames,
)

# --------------------------------------------------------------------------------------------
# the three test vectors of the spec

SCENE_A = Scene(
    17, Background("solid", ["black"]), [ToyObject("circle", "red", 48.3119, 100.7243, 120.2381, 3.1157, -1.7329)]
)
SCENE_B = Scene(
    17,
    Background("split", ["navy", "white"]),
    [
        ToyObject("square", "orange", 40.6253, 60.1417, 200.9063, 4.3127, 2.2219),
        ToyObject("triangle", "blue", 56.2381, 180.4409, 70.3317, -2.6143, 3.9071),
    ],
)
SCENE_C = Scene(
    33,
    Background("gradient", ["brown", "white"]),
    [ToyObject("diamond", "green", 60.1178, 215.3137, 40.7291, 4.7219, -3.3391)],
)


@pytest.fixture(scope="module")
def videos():
    return {name: render(scene).numpy() for name, scene in (("A", SCENE_A), ("B", SCENE_B), ("C", SCENE_C))}


@pytest.mark.parametrize("name, scene, digest", [
    ("A", SCENE_A, "b05f66b425f04bafff2e1a3bd507c235da102f3a4b3b226cae5ad24fc7ddc63b"),
    ("B", SCENE_B, "357c16974dc7dd0f3d662e384110c14d790fcc8411414a23ef3eab290c775984"),
    ("C", SCENE_C, "c7514727e2cebad953a55d7ee43e31b680b6fc14654f6164f8477d16c94d7260"),
])
def test_test_vectors_render_bit_exactly(videos, name, scene, digest):
    video = videos[name]
    assert video.shape == (scene.frames, 256, 256, 3) and video.dtype == np.uint8
    assert hashlib.sha256(np.ascontiguousarray(video).tobytes()).hexdigest() == digest
    assert is_tie_free(scene)


def test_test_vector_centres_pixels_and_captions(videos):
    np.testing.assert_allclose(centres(SCENE_A)[16, 0], (150.5755, 92.5117), atol=5e-5)
    np.testing.assert_allclose(centres(SCENE_B)[16], [(129.1449, 234.9180), (138.6121, 132.8453)], atol=5e-5)
    np.testing.assert_allclose(centres(SCENE_C)[32, 0], (85.4677, 126.2399), atol=5e-5)
    assert tuple(videos["A"][0, 120, 124]) == (207, 29, 48)
    assert tuple(videos["B"][0, 128, 128]) == (240, 240, 240) and tuple(videos["B"][16, 128, 128]) == (40, 80, 240)
    assert tuple(videos["C"][32, 128, 128]) == (170, 150, 135) and tuple(videos["C"][32, 100, 60]) == (155, 131, 112)
    _, coverage = render(with_frames(SCENE_A, 1), return_coverage=True)
    assert coverage.shape == (1, 1, 256, 256) and coverage[0, 0, 120, 124].item() == 15 / 16

    assert caption(SCENE_A) == "a red circle on a black background."
    assert caption(SCENE_A, motion=True) == "a red circle moving quickly up-right on a black background."
    assert caption(SCENE_B) == "an orange square and a blue triangle on a navy and white split background."
    assert caption(SCENE_B, motion=True, frame=16) == (
        "an orange square moving quickly up-right and a blue triangle moving quickly down-left "
        "on a navy and white split background."
    )
    assert caption(SCENE_C, motion=True, frame=16) == (
        "a green diamond moving quickly down-left on a brown to white gradient background."
    )


def test_caption_speed_words_and_standing_still():
    obj = SCENE_A.objects[0]
    slow = replace(SCENE_A, objects=[replace(obj, vx=0.0, vy=2.9)])
    still = replace(SCENE_A, objects=[replace(obj, vx=0.0, vy=0.0)])
    assert caption(slow, motion=True) == "a red circle moving slowly down on a black background."
    assert caption(still, motion=True) == "a red circle standing still on a black background."


# --------------------------------------------------------------------------------------------
# motion and rendering


def _simulate(start, velocity, size, extent, frames):
    """Step-by-step elastic bouncing of a box, to check the closed form against."""
    low, high = size / 2, extent - size / 2
    position, speed, out = start, velocity, []
    for _ in range(frames):
        out.append((position, speed))
        position += speed
        while position < low or position > high:  # reflect (more than once for very fast objects)
            position = 2 * low - position if position < low else 2 * high - position
            speed = -speed
    return out


def test_bounce_closed_form_matches_step_simulation():
    rng = np.random.default_rng(3)
    for _ in range(20):
        obj = ToyObject("square", "red", rng.uniform(20, 120), 0, 0, rng.uniform(-40, 40), rng.uniform(-40, 40))
        low, high = obj.size / 2, 256 - obj.size / 2
        obj = replace(obj, x0=rng.uniform(low, high), y0=rng.uniform(low, high))
        scene = Scene(101, Background("solid", ["gray"]), [obj])
        got = centres(scene)[:, 0]
        for axis, (start, velocity) in enumerate(((obj.x0, obj.vx), (obj.y0, obj.vy))):
            expected = _simulate(start, velocity, obj.size, 256, 101)
            np.testing.assert_allclose(got[:, axis], [p for p, _ in expected], atol=1e-9)
            for frame in (0, 37, 100):
                assert velocity_at(obj, frame)[axis] == expected[frame][1]


def test_render_batch_equals_single_renders_and_coverage_is_alpha():
    rng = np.random.default_rng(11)
    scenes = [with_frames(sample_training_scene(rng), 5) for _ in range(4)]
    batch, coverage = render_batch(scenes, return_coverage=True)
    for index, scene in enumerate(scenes):
        assert torch.equal(batch[index], render(scene))
    # with one object the frame is exactly background blended towards the colour by the coverage
    # (gradient rows are blended before rounding, so only a flat background compares exactly)
    single = next(i for i, s in enumerate(scenes) if len(s.objects) == 1 and s.background.kind != "gradient")
    scene = scenes[single]
    bg = torch.from_numpy(background_image(scene.background)).double()
    color = torch.tensor(OBJECT_COLORS[scene.objects[0].color], dtype=torch.float64)
    alpha = coverage[single, :, 0, :, :, None].double()
    assert torch.equal(batch[single].double(), torch.floor(bg * (1 - alpha) + color * alpha + 0.5))
    assert ((alpha > 0) & (alpha < 1)).any()


def test_training_and_benchmark_samplers_follow_their_distributions():
    rng = np.random.default_rng(0)
    scenes = [sample_training_scene(rng) for _ in range(400)]
    assert all(scene.validate() is scene for scene in scenes)
    sizes = [obj.size for scene in scenes for obj in scene.objects]
    speeds = [math.hypot(obj.vx, obj.vy) for scene in scenes for obj in scene.objects]
    assert 36 <= min(sizes) and max(sizes) <= 64
    assert all(s == 0 or 1.5 <= s <= 5.0 for s in speeds) and 0 < speeds.count(0.0) < 0.15 * len(speeds)
    assert 0.5 < np.mean([len(s.objects) == 1 for s in scenes]) < 0.7
    assert 0.65 < np.mean([s.frames == 17 for s in scenes]) < 0.85
    assert {s.background.kind for s in scenes} == {"solid", "split", "gradient"}

    bench = [sample_benchmark_scene(rng) for _ in range(200)]
    for scene in bench:
        assert scene.frames == 17
        assert all(40 <= o.size <= 60 and 2 <= math.hypot(o.vx, o.vy) <= 4.5 for o in scene.objects)
        if len(scene.objects) == 2:
            a, b = scene.objects
            reach = (a.size + b.size) / 2
            assert abs(a.x0 - b.x0) > reach or abs(a.y0 - b.y0) > reach
    again = [sample_benchmark_scene(np.random.default_rng(5)) for _ in range(2)]
    assert again[0] == again[1]


def test_tie_check_finds_a_sample_on_an_edge():
    # a square whose left edge lies on the sample column x = 100.125
    tied = Scene(1, Background("solid", ["black"]), [ToyObject("square", "red", 40.0, 120.125, 100.3, 0.0, 0.0)])
    assert not is_tie_free(tied)
    assert is_tie_free(replace(tied, objects=[replace(tied.objects[0], x0=120.1251)]))


# --------------------------------------------------------------------------------------------
# validation


def _scene_dict(**changes):
    data = SCENE_B.to_dict()
    data.update(changes)
    return data


def _background(kind, *colors):
    return _scene_dict(background={"kind": kind, "colors": list(colors)})


def _object_change(index, **changes):
    data = SCENE_B.to_dict()
    data["objects"][index].update(changes)
    return data


@pytest.mark.parametrize("data, message", [
    (_object_change(1, color="teal"), "scene.objects[1].color: 'teal' is not one of red, orange"),
    (_object_change(0, shape="star"), "scene.objects[0].shape: 'star' is not one of circle"),
    (_object_change(1, color="orange"), "scene.objects[1].color: 'orange' is also the colour of objects[0]"),
    (_object_change(0, size=300.0), "scene.objects[0].size: 300.0 is outside the canvas"),
    (_object_change(1, x0=10.0), "scene.objects[1].x0: 10.0 puts the"),
    (_object_change(1, vy=float("inf")), "scene.objects[1].vy: inf is not a finite number"),
    (_object_change(0, vx="fast"), "scene.objects[0].vx: expected a number"),
    (_scene_dict(frames=16), "scene.frames: 16 is not an integer frame count of the form 4n+1"),
    (_background("stripes", "black"), "scene.background.kind: 'stripes' is not one of"),
    (_background("split", "black"), "scene.background.colors: a split background takes 2"),
    (_background("gradient", "navy", "forest"), "scene.background.colors: navy and forest are 68 apart"),
    (_background("solid", "teal"), "scene.background.colors[0]: 'teal' is not one of black"),
    (_scene_dict(objects=[]), "scene.objects: toyworld-v1 scenes have 1 or 2 objects, got 0"),
    ({"frames": 17, "objects": []}, "scene: missing field(s) background"),
])
def test_invalid_scene_specs_name_the_field(data, message):
    with pytest.raises(WanInputError) as error:
        Scene.from_dict(json.loads(json.dumps(data)))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_scene_json_round_trip_is_exact():
    scene = sample_training_scene(np.random.default_rng(9))
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


# --------------------------------------------------------------------------------------------
# cases


def test_edit_case_plan_follows_the_shares():
    cases = make_edit_cases(80, seed=4)
    types = [case.edit_type for case in cases]
    assert [i for i, kind in enumerate(types) if kind == "none"] == list(range(7, 80, 8))
    counts = {kind: types.count(kind) for kind in EDIT_SHARES}
    # 70 edits: 21, 14, 10.5, 10.5, 14; the leftover case goes to the first of the tied types
    assert counts == {
        "recolour": 21, "reshape": 14, "recolour+reshape": 11, "background": 10, "recolour-one-of-two": 14,
    }


def test_edit_cases_keep_trajectories_and_change_only_what_their_type_says():
    for case in make_edit_cases(40, seed=2):
        source, target = case.source, case.target
        assert source.frames == target.frames == 17
        for before, after in zip(source.objects, target.objects):
            for key in ("size", "x0", "y0", "vx", "vy"):
                assert getattr(before, key) == getattr(after, key)
        changed = [(b.shape != a.shape, b.color != a.color) for b, a in zip(source.objects, target.objects)]
        expected_change = {
            "none": (False, False), "recolour": (False, True), "reshape": (True, False),
            "recolour+reshape": (True, True), "recolour-one-of-two": (False, True),
        }
        if case.edit_type == "background":
            assert target.background.kind == source.background.kind and target.background != source.background
            if len(target.background.colors) == 2:
                a, b = (BACKGROUND_COLORS[c] for c in target.background.colors)
                assert color_distance(a, b) >= MIN_BACKGROUND_PAIR_DISTANCE
            assert not any(any(flags) for flags in changed)
        else:
            assert target.background == source.background
            edited = [flags for flags in changed if any(flags)]
            assert edited == ([] if case.edit_type == "none" else [expected_change[case.edit_type]])
        if case.edit_type == "recolour-one-of-two":
            assert len(target.objects) == 2 and target.objects[0].color != target.objects[1].color
            assert case.edited_object in (0, 1) and changed[case.edited_object][1]
        for text in (case.source_caption, case.target_caption):
            assert " moving " not in text and "standing still" not in text


def test_edit_case_inputs_are_renders_of_source_and_target():
    case = next(c for c in make_edit_cases(8, seed=1) if c.edit_type == "recolour")
    truth = case.ground_truth()
    assert torch.equal(case.edited_first_frame(), truth[0])
    assert torch.equal(case.source_video(), render(case.source))
    assert case.target_caption == caption(case.target) != case.source_caption


def test_cases_are_deterministic_and_round_trip_through_json(tmp_path):
    edits, again = make_edit_cases(12, seed=7), make_edit_cases(12, seed=7)
    assert edits == again and edits != make_edit_cases(12, seed=8)
    continuations = make_continuation_cases(3, seed=7)
    assert continuations == make_continuation_cases(3, seed=7)
    path = tmp_path / "cases.json"
    save_cases(path, edits + continuations)
    assert load_cases(path) == edits + continuations
    assert [p.name for p in tmp_path.iterdir()] == ["cases.json"]  # no temporary file left behind


def test_case_file_of_another_spec_version_is_refused(tmp_path):
    path = tmp_path / "cases.json"
    save_cases(path, make_edit_cases(2, seed=0))
    data = json.loads(path.read_text())
    data["spec_version"] = "toyworld-v2"
    path.write_text(json.dumps(data))
    with pytest.raises(WanInputError, match="spec_version: 'toyworld-v2' is not 'toyworld-v1'"):
        load_cases(path)
    record = make_edit_cases(1, seed=0)[0].to_dict()
    record["target"]["objects"][0]["vx"] += 1.0
    with pytest.raises(WanInputError, match=r"case.target.objects\[0\].vx: .* an edit keeps"):
        toy_cases.case_from_dict(record)


def test_continuation_case_clip_seam_and_caption():
    case = make_continuation_cases(2, seed=3)[0]
    clip, truth = case.clip(), case.ground_truth()
    assert clip.shape[0] == 17 and truth.shape[0] == 17
    assert torch.equal(clip[16], truth[0])  # the seam frame is shared
    assert case.seam_caption == caption(case.scene, motion=True, frame=16) and " moving " in case.seam_caption


# --------------------------------------------------------------------------------------------
# metrics


def _case(edit_type, seed=0):
    return next(c for c in make_edit_cases(16, seed=seed) if c.edit_type == edit_type)


def _render_variant(case, **changes):
    """The target rendered with some object fields changed."""
    objects = [replace(obj, **changes) for obj in case.target.objects]
    return render(replace(case.target, objects=objects))


def test_ground_truth_scores_perfectly():
    for case in (_case("recolour"), _case("recolour-one-of-two")):
        metrics = edit_metrics(case.ground_truth(), case)
        assert metrics["te_mean"] == 0 and metrics["te_max"] == 0 and metrics["mask_iou"] == 1
        assert metrics["colour_accuracy"] == 1 and metrics["shape_accuracy"] == 1 and metrics["colour_leak"] == 0
        assert metrics["direction_agreement"] == pytest.approx(1) and metrics["flicker"] == 0
        assert metrics["passed"] and edit_passes(metrics)


def test_blurred_ground_truth_still_passes_on_a_split_background():
    # a 3x3 box blur, like a codec or VAE, blurs the split seam and every object edge
    case = next(c for c in make_edit_cases(40, seed=1) if c.target.background.kind == "split")
    truth = case.ground_truth().permute(0, 3, 1, 2).double()
    kernel = torch.full((3, 1, 3, 3), 1 / 9, dtype=torch.float64)
    padded = torch.nn.functional.pad(truth, (1, 1, 1, 1), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, kernel, groups=3)
    video = torch.floor(blurred + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    metrics = edit_metrics(video, case)
    assert metrics["te_mean"] < 0.5 and metrics["mask_iou"] > 0.9 and metrics["passed"]


def test_another_trajectory_fails_on_trajectory_error_and_direction():
    case = _case("recolour")
    obj = case.target.objects[0]
    video = _render_variant(case, vx=-obj.vy, vy=obj.vx)  # same speed, turned by 90 degrees
    metrics = edit_metrics(video, case)
    assert metrics["te_mean"] > 10 and metrics["te_rel"] > 0.5 and metrics["direction_agreement"] < 0.5
    assert metrics["colour_accuracy"] == 1 and not metrics["passed"]


def test_source_colour_shows_leak_and_fails_colour_accuracy():
    case = _case("recolour")
    metrics = edit_metrics(case.source_video(), case)  # the "edit" kept the old colour
    assert metrics["colour_leak"] > 0.9 and metrics["colour_accuracy"] == 0 and not metrics["passed"]


def test_wrong_shape_fails_shape_accuracy():
    case = _case("reshape")
    wrong = next(s for s in SHAPES if s not in (case.target.objects[0].shape, case.source.objects[0].shape))
    metrics = edit_metrics(_render_variant(case, shape=wrong), case)
    assert metrics["shape_accuracy"] < 0.2 and metrics["te_mean"] < 10 and not metrics["passed"]


def test_changed_background_lowers_background_psnr():
    case = _case("background")
    metrics = edit_metrics(case.source_video(), case)  # the old background was kept
    assert metrics["background_psnr"] < 25 and metrics["te_mean"] < 1 and not metrics["passed"]
    assert edit_passes(dict(metrics, background_psnr=28.0), vae_floor=31.0)  # the bar follows a low VAE floor
    assert not edit_passes(dict(metrics, background_psnr=28.0))


def test_metrics_reject_a_video_of_the_wrong_shape():
    case = _case("recolour")
    with pytest.raises(WanInputError, match=r"video: shape \(9, 256, 256, 3\) does not match"):
        edit_metrics(case.ground_truth()[:9], case)
    with pytest.raises(WanInputError, match="video: expected uint8 frames"):
        edit_metrics(case.ground_truth().float(), case)


def test_continuation_metrics_judge_direction_from_the_seam_caption():
    case = make_continuation_cases(1, seed=5)[0]
    metrics = continuation_metrics(case.ground_truth(), case)
    assert metrics["passed"] and metrics["direction_error"] <= 22.5 + 1 and metrics["speed_in_band"] == 1
    reversed_scene = replace(case.scene, objects=[
        replace(obj, x0=float(c[0]), y0=float(c[1]), vx=-velocity_at(obj, 16)[0], vy=-velocity_at(obj, 16)[1])
        for obj, c in zip(case.scene.objects, centres(case.scene)[16])
    ])
    backwards = render(with_frames(reversed_scene, 17))
    assert torch.equal(backwards[0], case.ground_truth()[0])  # same seam, opposite motion
    metrics = continuation_metrics(backwards, case)
    assert metrics["direction_error"] > 150 and not metrics["passed"]


def test_procedural_caption_recovers_appearance_and_motion(videos):
    # B's square bounces between frames 15 and 16, which a two-frame difference cannot see: use 14-15
    assert procedural_caption(videos["B"][14:16]) == caption(SCENE_B, motion=True, frame=15)
    assert procedural_caption(videos["C"][15:17]) == caption(SCENE_C, motion=True, frame=16)
    rng = np.random.default_rng(21)
    for _ in range(4):
        scene = with_frames(sample_benchmark_scene(rng, n_objects=1), 5)
        if velocity_at(scene.objects[0], 3) != velocity_at(scene.objects[0], 4):
            continue  # a bounce between the last two frames hides the velocity
        speed = math.hypot(*velocity_at(scene.objects[0], 4))
        expected = caption(scene, motion=True, frame=4)
        got = procedural_caption(render(scene))
        if abs(speed - 3.0) > 0.1:  # the speed word is ambiguous right at the band edge
            assert got == expected
        else:
            assert got.split(" moving ")[0] == expected.split(" moving ")[0]


def test_circular_variance_and_seed_diversity():
    assert circular_variance([[1, 0], [2, 0], [5, 0]]) == pytest.approx(0)
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    assert circular_variance(np.stack([np.cos(angles), np.sin(angles)], 1)) == pytest.approx(1)
    base = with_frames(SCENE_A, 9)
    obj = base.objects[0]
    speed = math.hypot(obj.vx, obj.vy)
    turned = [replace(obj, vx=speed * math.cos(a), vy=speed * math.sin(a)) for a in angles[:4] * 2]  # 0, 90, 180, 270
    spread = [render(replace(base, objects=[o])) for o in turned]
    same = [render(base)] * 4
    assert seed_diversity(spread, base) > 0.9 and seed_diversity(same, base) < 0.01
