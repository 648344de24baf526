"""Staged runs: encode / denoise / decode as separate processes give the same video as one run;
denoise checkpoints resume exactly (generations and edits); stage files refuse mismatched settings,
models, kinds and truncation."""
import os

import pytest
import torch

from conftest import DATA, run_script
from wan import jobs, runner, tasks
from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.utils.checkpoint import checkpoint_fingerprint
from wan.runner import CHECKPOINT, ENCODED, LATENT, Checkpointing, Runner, StopRequested
from wan.settings import Generation, LoadOptions
from wan.utils.video_io import read_video

KITTEN = os.path.join(DATA, "kitten-turning-head")


def edit_args(ckpt, tmp_path, *extra):
    return ["ti2v_inversion_edit.py", "--ckpt_dir", ckpt, "--video", os.path.join(KITTEN, "source.mp4"),
            "--source_prompt", "a kitten", "--target_prompt", "a dog",
            "--target_image", os.path.join(KITTEN, "edited_first_frame.png"), "--frame_num", "5",
            "--inversion_steps", "3", "--generation_steps", "3", "--max_area", "4096", "--device", "cpu", *extra]


def check_ok(result):
    assert result.returncode == 0, result.stderr[-2000:]


def assert_same_video(a, b):
    """Same video across processes, to within rounding. Bit-exactness is asserted in-process on
    tensors (test_every_task_staged_equals_whole). Across processes CPU kernels may sum in another
    order (allocation alignment differs from run to run) and the tiny random networks amplify
    last-bit differences to about half a grey level, so mp4s are compared by PSNR."""
    x, y = read_video(a)[0].float(), read_video(b)[0].float()
    psnr = 10 * torch.log10(255.0 ** 2 / ((x - y) ** 2).mean().clamp_min(1e-10))
    assert psnr > 35, f"PSNR {psnr:.1f} dB"


GENERATE_CASES = [("t2v-A14B", None), ("i2v-A14B", "image"), ("ti2v-5B", None), ("ti2v-5B", "image"),
                  ("t2v-1.3B", None)]


def generation_of(task_name, image=None, **changes):
    values = {**tasks.defaults(task_name), "prompt": "a dog", "size": (64, 64), "frame_num": 5, "seed": 5,
              "image": image}
    values["sampling"] = {**values["sampling"], "steps": 3}
    return Generation.from_dict(values).replace(**changes)


@torch.no_grad()
@pytest.mark.parametrize("task_name,image", GENERATE_CASES)
def test_every_task_staged_equals_whole(tiny_checkpoint, tmp_path, task_name, image):
    """encode -> file -> denoise -> file -> decode gives the very same video tensor as one run."""
    models = Models.load(WAN_CONFIGS[task_name], tiny_checkpoint(task_name), LoadOptions(device="cpu"))
    generation = generation_of(task_name, os.path.join(KITTEN, "edited_first_frame.png") if image else None)
    whole = models.decode(Runner(models, progress=False).denoise(tasks.prepare(models, generation)))
    for stage in ("encode", "denoise"):
        runner.generate(models, generation, None, stage, str(tmp_path))
    tensors, header = jobs.read(str(tmp_path / LATENT), "latent", models.fingerprint)
    assert header["record"]["seed"] == 5
    assert torch.equal(whole, models.decode(tensors["latent"]))


def test_generate_stages_in_separate_processes(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    base = ["generate.py", "--task", "ti2v-5B", "--ckpt_dir", ckpt, "--device", "cpu"]
    flags = ["--size", "64*64", "--frame_num", "5", "--sample_steps", "3", "--base_seed", "9",
             "--image", os.path.join(KITTEN, "edited_first_frame.png")]
    check_ok(run_script(*base, *flags, "--save_file", str(tmp_path / "whole.mp4")))
    stage_dir = str(tmp_path / "stages")
    check_ok(run_script(*base, *flags, "--stage", "encode", "--stage_dir", stage_dir))
    check_ok(run_script(*base, "--stage", "denoise", "--stage_dir", stage_dir, "--save_every", "1",
                        "--stop_after_steps", "2"))
    assert os.path.exists(os.path.join(stage_dir, CHECKPOINT))  # stopped part-way, resumable
    check_ok(run_script(*base, "--stage", "denoise", "--stage_dir", stage_dir, "--sample_steps", "3"))
    result = run_script(*base, "--stage", "decode", "--stage_dir", stage_dir, "--sample_shift", "7")
    assert result.returncode != 0 and "--sample_shift 7.0 disagrees" in result.stderr.splitlines()[-1]
    check_ok(run_script(*base, "--stage", "decode", "--stage_dir", stage_dir,
                        "--save_file", str(tmp_path / "parted.mp4")))
    assert_same_video(tmp_path / "whole.mp4", tmp_path / "parted.mp4")
    # The editor refuses a generation's stage folder in one line, naming both kinds.
    result = run_script(*edit_args(ckpt, tmp_path, "--stage", "denoise", "--stage_dir", stage_dir))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "holds a generation job" in last and "needs an edit job" in last
    assert "Traceback" not in result.stderr


def test_editor_stages_in_separate_processes_equal_one_run(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    whole = tmp_path / "whole.mp4"
    check_ok(run_script(*edit_args(ckpt, tmp_path, "--output", str(whole))))
    stage_dir = tmp_path / "stages"
    parted = tmp_path / "parted.mp4"
    check_ok(run_script(*edit_args(ckpt, tmp_path, "--stage", "encode", "--stage_dir", str(stage_dir))))
    # Staged edits resume too: stop after 2 of the 3 + 3 steps, then finish.
    check_ok(run_script(*edit_args(ckpt, tmp_path, "--stage", "denoise", "--stage_dir", str(stage_dir),
                                   "--save_every", "1", "--stop_after_steps", "2")))
    assert (stage_dir / CHECKPOINT).exists() and not (stage_dir / LATENT).exists()
    check_ok(run_script(*edit_args(ckpt, tmp_path, "--stage", "denoise", "--stage_dir", str(stage_dir))))
    check_ok(run_script(*edit_args(ckpt, tmp_path, "--output", str(parted), "--stage", "decode",
                                   "--stage_dir", str(stage_dir))))
    assert_same_video(whole, parted)
    # A later stage with a contradicting flag, or a truncated stage file, is refused in one line.
    result = run_script(*edit_args(ckpt, tmp_path, "--output", str(parted), "--stage", "denoise",
                                   "--stage_dir", str(stage_dir), "--shift", "3"))
    assert result.returncode != 0 and "--shift 3.0 disagrees" in result.stderr.splitlines()[-1]
    # generate.py refuses the editor's folder in one line.
    result = run_script("generate.py", "--task", "ti2v-5B", "--ckpt_dir", ckpt, "--device", "cpu", "--stage",
                        "denoise", "--stage_dir", str(stage_dir))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "holds an edit job" in last and "needs a generation job" in last
    encoded = stage_dir / ENCODED
    encoded.write_bytes(encoded.read_bytes()[:300])
    result = run_script(*edit_args(ckpt, tmp_path, "--stage", "denoise", "--stage_dir", str(stage_dir)))
    assert result.returncode != 0 and "truncated" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def t2v(tiny_checkpoint):
    return Models.load(WAN_CONFIGS["t2v-A14B"], tiny_checkpoint("t2v-A14B"), LoadOptions(device="cpu"))


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_denoise_resumes_exactly_after_a_stop(t2v, tmp_path, solver):
    generation = generation_of("t2v-A14B", sampling=dict(solver=solver, steps=8, shift=12.0, guide_scale=(3.0, 4.0)),
                               seed=3)
    job = tasks.prepare(t2v, generation)
    run = Runner(t2v, progress=False)
    uninterrupted = run.denoise(job)
    path = str(tmp_path / CHECKPOINT)
    with pytest.raises(StopRequested):
        run.denoise(job, Checkpointing(path, "job", save_every=2, stop_after=3))
    assert os.path.exists(path)
    resumed = run.denoise(job, Checkpointing(path, "job", save_every=2))
    assert torch.equal(uninterrupted, resumed)
    with pytest.raises(ValueError, match="another job"):
        run.denoise(job, Checkpointing(path, "another"))


def test_stage_files_refuse_another_model_and_kind(t2v, tmp_path):
    job = tasks.prepare(t2v, generation_of("t2v-A14B"))
    path = str(tmp_path / ENCODED)
    jobs.save(path, "generation", job, t2v.fingerprint)
    loaded = jobs.load(path, "generation", t2v.fingerprint)
    assert torch.equal(loaded.latent, job.latent) and loaded.record == job.record and loaded.sampling == job.sampling
    with pytest.raises(ValueError, match="another model"):
        jobs.load(path, "generation", "0123456789abcdef")
    with pytest.raises(ValueError, match="holds a generation job, but this step needs an edit job"):
        jobs.load(path, "edit", t2v.fingerprint)


def test_fingerprint_changes_with_the_model(tiny_checkpoint):
    assert checkpoint_fingerprint(tiny_checkpoint("ti2v-5B"), "x") != checkpoint_fingerprint(tiny_checkpoint("t2v-1.3B"),
                                                                                           "x")
    assert checkpoint_fingerprint(tiny_checkpoint("ti2v-5B"), "x") != checkpoint_fingerprint(tiny_checkpoint("ti2v-5B"),
                                                                                           "y")
