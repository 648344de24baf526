"""The shipped toy-world model (assets/toyworld-ti2v) through the same code as the real TI2V-5B: an edit
scored against ground truth, fixed-point against Euler inversion, the fresh-noise control, and a
continuation through the v2v path (CI-sized: 9 or 17 frames, 10 steps)."""
import hashlib
import json
import os

import pytest

from conftest import REPO
from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.settings import EditSettings, Generation, InversionSettings, LoadOptions, Sampling
from wan.tasks import unsupported_size_warning
from wan.toyworld.cases import EditCase, make_continuation_cases, make_edit_cases
from wan.toyworld.evaluate import continuation_case, edit_case, fresh_noise_control, vae_floor
from wan.toyworld.metrics import psnr
from wan.toyworld.world import with_frames

CKPT = os.path.join(REPO, "assets", "toyworld-ti2v")
FRAMES, STEPS = 9, 10


@pytest.fixture(scope="module")
def models():
    return Models.load(WAN_CONFIGS["ti2v-5B"], CKPT, LoadOptions(device="cpu", offload_model=False))


def short(case):
    return EditCase(case.case_id, case.edit_type, with_frames(case.source, FRAMES), with_frames(case.target, FRAMES))


def settings(scheme):
    return EditSettings(frame_num=FRAMES, max_area=256 * 256, sampling=Sampling("euler", STEPS, 5.0, 1.0),
                        inversion=InversionSettings(scheme=scheme, steps=STEPS))


def test_every_shipped_file_matches_its_provenance():
    """provenance.json names every file of the checkpoint with its size and sha256 (a card edited by
    hand, or weights replaced without a new export, would leave it stale)."""
    with open(os.path.join(CKPT, "provenance.json")) as f:
        files = json.load(f)["files"]
    shipped = {os.path.relpath(os.path.join(root, name), CKPT) for root, _, names in os.walk(CKPT) for name in names}
    assert set(files) == shipped - {"provenance.json"}
    for name, record in files.items():
        with open(os.path.join(CKPT, name), "rb") as f:
            data = f.read()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (record["bytes"], record["sha256"]), name


def test_the_toy_checkpoint_is_trained_at_256():
    generation = Generation(task="ti2v-5B", size=(256, 256), frame_num=17)
    assert unsupported_size_warning(generation, CKPT) is None
    assert unsupported_size_warning(generation.replace(size=(512, 512)), CKPT) is not None


def test_fixed_point_inversion_reconstructs_at_least_as_well_as_euler_and_passes(models):
    """A no-op edit (target = source): the inverted noise regenerates the source; the implicit inversion
    step, the exact inverse of the Euler regeneration, does at least as well as Euler inversion."""
    case = short(make_edit_cases(16, 0)[15])
    assert case.edit_type == "none"
    _, fixed = edit_case(models, case, settings("fixed_point"))
    _, euler = edit_case(models, case, settings("euler"))
    assert fixed.metrics["te_mean"] <= euler.metrics["te_mean"]
    assert fixed.passed, fixed.metrics  # trajectory, colour, shape, mask and background all within the rule


def test_fresh_noise_does_not_reproduce_the_source_trajectory(models):
    """Control 3: with the target frame and caption but random noise, the motion is not the source's
    (TE_rel >= 0.6): the trajectory of an edit comes from the inverted noise, so the benchmark is valid."""
    case = short(next(c for c in make_edit_cases(16, 0) if c.edit_type == "recolour"))
    metrics = fresh_noise_control(models, case, settings("fixed_point"), seed=7)
    assert metrics["te_rel"] >= 0.6, metrics


def test_a_continuation_starts_from_the_clips_last_frame(models):
    """The v2v path on a toy-world clip (last frame + the procedural caption): the continuation's first
    frame is the clip's last one to within the VAE's loss (the seam rule: floor - 1 dB). The case's
    objects move fast enough that even the frame before the last fails that rule."""
    case = make_continuation_cases(3, 0)[1]
    clip, truth = case.clip().numpy(), case.ground_truth().numpy()
    floor = vae_floor(models, case)
    assert psnr(clip[-2], truth[0]) < floor - 1.0
    _, result = continuation_case(models, case, settings("euler"), vae_floor_db=floor)
    assert result.edit_type == "continuation"
    assert result.metrics["seam_psnr"] >= floor - 1.0, (result.metrics, floor)
