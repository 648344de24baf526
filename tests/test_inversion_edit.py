"""TI2V inversion editing: reconstruction properties, the CLI on real clips, resume, bad inputs."""
import json
import os
import shutil

import pytest
import torch

import ti2v_inversion_edit
from conftest import DATA, run_script
from wan import TI2VInversionEditor, flow, jobs, tasks
from wan.runner import Runner
from wan.settings import EditSettings, InversionSettings, Sampling
from wan.solvers import euler_step, heun_step, midpoint_step
from wan.tasks.edit import EditRequest, load_source
from wan.utils.video_io import probe_video, read_video

KITTEN = os.path.join(DATA, "kitten-turning-head")
BALLET = os.path.join(DATA, "ballet")


@pytest.fixture(scope="module")
def editor(tiny_checkpoint):
    return TI2VInversionEditor(tiny_checkpoint("ti2v-5B"), device="cpu")


@pytest.fixture(scope="module")
def source(editor):
    models = editor.models
    clip = load_source(models.config, os.path.join(KITTEN, "source.mp4"), 5, 32 * 32)
    job = tasks.edit.prepare_inversion(models, clip, "A kitten turning its head", EditSettings(frame_num=5))
    field = Runner(models).field(job, 1.0)
    return job.latent, field, job.condition


def round_trip_error(source, scheme, regenerate_step, steps):
    """Invert the source with `scheme`, regenerate along the same grid, relative latent error."""
    latent, field, condition = source
    schedule = flow.make_schedule("euler", steps, 5.0)
    noise = flow.invert(field, latent, schedule, scheme, condition, progress=False)
    rebuilt = flow.integrate(field, noise, schedule, regenerate_step, condition, progress=False)
    return ((rebuilt - latent).norm() / latent.norm()).item()


@torch.no_grad()
def test_reconstruction_error_falls_with_steps(source):
    errors = [round_trip_error(source, "euler", euler_step, n) for n in (4, 8, 16)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.6 * errors[1] < 0.6 * 0.6 * errors[0]  # first order: about halves per doubling


@torch.no_grad()
def test_second_order_beats_euler_at_equal_model_evaluations(source):
    euler = round_trip_error(source, "euler", euler_step, 16)  # 32 evaluations
    heun = round_trip_error(source, "heun", heun_step, 8)  # 32 evaluations
    midpoint = round_trip_error(source, "midpoint", midpoint_step, 8)
    assert heun < 0.5 * euler and midpoint < euler


@torch.no_grad()
def test_fixed_point_inversion_inverts_euler_generation(source):
    euler = round_trip_error(source, "euler", euler_step, 16)  # 32 evaluations
    fixed = round_trip_error(source, "fixed_point", euler_step, 4)  # 4*4 + 4 = 20 evaluations
    assert fixed < euler


@torch.no_grad()
def test_partial_inversion_keeps_more_of_the_source(editor):
    video = os.path.join(KITTEN, "source.mp4")
    clip = load_source(editor.config, video, 5, 32 * 32)
    latent = editor.models.encode_frames(clip.frames)
    errors = {}
    for strength in (0.3, 1.0):
        inversion = editor.invert(video, "a kitten", 5, 32 * 32, 5.0, 10, 1.0, "", "euler", strength)
        assert inversion.sigma < 1.0 or strength == 1.0
        edited = editor.generate_from_inversion(inversion, "a dog", None, 10, 1.0, decode=False)
        errors[strength] = ((edited - latent).norm() / latent.norm()).item()
    assert errors[0.3] < errors[1.0]


def edit_argv(tmp_path, ckpt, *extra, output="edit.mp4", video=None):
    return ["--ckpt_dir", ckpt, "--video", video or os.path.join(KITTEN, "source.mp4"),
            "--source_prompt", "A kitten turning its head on a wooden floor",
            "--target_prompt", "A dog turning its head on a wooden floor",
            "--target_image", os.path.join(KITTEN, "edited_first_frame.png"), "--output", str(tmp_path / output),
            "--frame_num", "9", "--inversion_steps", "3", "--generation_steps", "3", "--max_area", "4096",
            "--device", "cpu", *extra]


def test_cli_edit_with_comparison_and_saved_inversion(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    inversion = str(tmp_path / "inv.safetensors")
    ti2v_inversion_edit.main(edit_argv(tmp_path, ckpt, "--comparison", "--save_inversion", inversion))
    out = tmp_path / "edit.mp4"
    frames, fps, width, height = probe_video(out)
    assert (frames, width, height) == (9, 64, 64) and fps == pytest.approx(8)  # the source's fps
    comparison = probe_video(tmp_path / "edit_comparison.mp4")
    assert comparison[0] == 9 and (comparison[2], comparison[3]) == (3 * 64, 64)
    for name in ("source", "target", "edited"):
        assert os.path.exists(tmp_path / f"edit_{name}_first_frame.png")
    # A re-edit from the saved inversion gives the same video (exact latents: see the next test; the
    # mp4s loosely, as CPU reduction order can differ between runs and tiny random nets amplify it).
    ti2v_inversion_edit.main(edit_argv(tmp_path, ckpt, "--load_inversion", inversion, output="again.mp4"))
    difference = (read_video(out)[0].int() - read_video(tmp_path / "again.mp4")[0].int()).abs()
    assert difference.float().mean() < 0.5 and difference.max() <= 16


@torch.no_grad()
def test_saved_inversion_reproduces_the_edit_exactly(editor, tmp_path):
    models = editor.models
    request = EditRequest(os.path.join(KITTEN, "source.mp4"), "a kitten", "a dog",
                          os.path.join(KITTEN, "edited_first_frame.png"))
    settings = EditSettings(frame_num=5, max_area=32 * 32, sampling=Sampling("euler", 3, 5.0, 5.0),
                            inversion=InversionSettings(steps=3))
    path = str(tmp_path / "inv.safetensors")
    fresh = Runner(models).edit(tasks.prepare_edit(models, request, settings), save_inversion=path)
    assert jobs.load(path, "inversion").source["frame_num"] == 5
    assert torch.equal(fresh, Runner(models).edit(tasks.prepare_edit(models, request, settings), load_inversion=path))
    # The documented two-call API gives the same edit.
    inversion = editor.invert(request.video, "a kitten", 5, 32 * 32, inversion_steps=3)
    assert torch.equal(inversion.latent, jobs.load(path, "inversion").latent)
    assert torch.equal(fresh, editor.generate_from_inversion(inversion, "a dog", request.target_image, 3,
                                                             decode=False))


def test_manifest_runs_all_and_resumes(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    manifest = tmp_path / "edits.jsonl"
    lines = [
        dict(video=os.path.join(KITTEN, "source.mp4"), source_prompt="a kitten", target_prompt="a dog",
             target_image=os.path.join(KITTEN, "edited_first_frame.png"), output=str(tmp_path / "a.mp4")),
        dict(video=os.path.join(BALLET, "source.mp4"), source_prompt="a dancer", target_prompt="van gogh style",
             target_image=os.path.join(BALLET, "edited_first_frame.png"), output=str(tmp_path / "b.mp4")),
    ]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    argv = ["--ckpt_dir", ckpt, "--manifest", str(manifest), "--frame_num", "5", "--inversion_steps", "2",
            "--generation_steps", "2", "--max_area", "4096", "--device", "cpu"]
    assert ti2v_inversion_edit.main(argv) == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    os.remove(tmp_path / "b.mp4")
    assert ti2v_inversion_edit.main(argv) == [str(tmp_path / "b.mp4")]  # only the missing edit runs
    assert ti2v_inversion_edit.main(argv) == []


def test_short_video_uses_longest_4n1_prefix(editor):
    clip = load_source(editor.config, os.path.join(KITTEN, "source.mp4"), 21, 32 * 32)  # 16 frames available
    assert clip.frames.shape[0] == 13 and clip.frame_num == 13


def bad_video_files(tmp_path):
    truncated = tmp_path / "truncated.mp4"
    data = open(os.path.join(KITTEN, "source.mp4"), "rb").read()
    truncated.write_bytes(data[: len(data) // 3])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    return [truncated, empty, text]


def test_bad_inputs_give_one_line_errors(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    cases = [(edit_argv(tmp_path, ckpt, video=str(path)), path.name) for path in bad_video_files(tmp_path)]
    cases.append((edit_argv(tmp_path, ckpt, "--target_image", str(tmp_path / "missing.png")), "missing.png"))
    cases.append((edit_argv(tmp_path, ckpt, "--frame_num", "10"), "4n+1"))
    # An inversion saved for 9 frames cannot serve a 5-frame edit.
    saved = str(tmp_path / "inv9.safetensors")
    ti2v_inversion_edit.main(edit_argv(tmp_path, ckpt, "--save_inversion", saved, output="ok.mp4"))
    cases.append((edit_argv(tmp_path, ckpt, "--load_inversion", saved, "--frame_num", "5"), "frame_num"))
    other = tmp_path / "other.mp4"
    shutil.copy(os.path.join(BALLET, "source.mp4"), other)
    cases.append((edit_argv(tmp_path, ckpt, "--load_inversion", saved, video=str(other)), "video_sha256"))
    for argv, message in cases:
        result = run_script("ti2v_inversion_edit.py", *argv)
        assert result.returncode != 0, argv
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and message in last, result.stderr
        assert "Traceback" not in result.stderr
