"""Staged runs: encode / denoise / decode as separate processes give the same video as one run;
denoise checkpoints resume exactly; stage files refuse mismatched flags, models and truncation."""
import os

import pytest
import torch

from conftest import DATA, run_script
from wan import staged
from wan.configs import WAN_CONFIGS
from wan.text2video import WanT2V
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


@torch.no_grad()
@pytest.mark.parametrize("task_name,image", GENERATE_CASES)
def test_every_task_staged_equals_whole(tiny_checkpoint, tmp_path, task_name, image):
    """encode -> file -> denoise -> file -> decode gives the very same video tensor as one run."""
    import wan
    from PIL import Image

    ckpt, config = tiny_checkpoint(task_name), WAN_CONFIGS[task_name]
    task = getattr(wan, {"t2v": "WanT2V", "i2v": "WanI2V", "ti2v": "WanTI2V"}[config.model_type])(
        config, ckpt, device="cpu")
    common = dict(frame_num=5, sampling_steps=3, seed=5)
    if image:
        frame = Image.fromarray(read_video(os.path.join(KITTEN, "source.mp4"), max_frames=1)[0][0].numpy())
        job = task.prepare("a dog", frame, max_area=64 * 64, **common) if task_name == "i2v-A14B" else \
            task.prepare("a dog", img=frame, max_area=64 * 64, **common)
    else:
        job = task.prepare("a dog", size=(64, 64), **common)
    whole = task.decode(task.denoise(job))
    fingerprint = staged.checkpoint_fingerprint(ckpt, config)
    staged.save_job(job, str(tmp_path / staged.ENCODED), fingerprint)
    latent = staged.denoise(task, staged.load_job(str(tmp_path / staged.ENCODED), fingerprint), str(tmp_path),
                            fingerprint)
    staged.save_latent(latent, job.settings, fingerprint, str(tmp_path / staged.LATENT))
    parted = task.decode(staged.load_latent(str(tmp_path / staged.LATENT), fingerprint)[0])
    assert torch.equal(whole, parted)


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
    assert os.path.exists(os.path.join(stage_dir, staged.CHECKPOINT))  # stopped part-way, resumable
    check_ok(run_script(*base, "--stage", "denoise", "--stage_dir", stage_dir, "--sample_steps", "3"))
    result = run_script(*base, "--stage", "decode", "--stage_dir", stage_dir, "--sample_shift", "7")
    assert result.returncode != 0 and "--shift 7.0 disagrees" in result.stderr.splitlines()[-1]
    check_ok(run_script(*base, "--stage", "decode", "--stage_dir", stage_dir,
                        "--save_file", str(tmp_path / "parted.mp4")))
    assert_same_video(tmp_path / "whole.mp4", tmp_path / "parted.mp4")


def test_editor_stages_in_separate_processes_equal_one_run(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    whole = tmp_path / "whole.mp4"
    check_ok(run_script(*edit_args(ckpt, tmp_path, "--output", str(whole))))
    stage_dir = tmp_path / "stages"
    parted = tmp_path / "parted.mp4"
    for stage in ("encode", "denoise", "decode"):
        check_ok(run_script(*edit_args(ckpt, tmp_path, "--output", str(parted), "--stage", stage,
                                       "--stage_dir", str(stage_dir))))
    assert_same_video(whole, parted)
    # A later stage with a contradicting flag, or a truncated stage file, is refused in one line.
    result = run_script(*edit_args(ckpt, tmp_path, "--output", str(parted), "--stage", "denoise",
                                   "--stage_dir", str(stage_dir), "--shift", "3"))
    assert result.returncode != 0 and "--shift 3.0 disagrees" in result.stderr.splitlines()[-1]
    encoded = stage_dir / staged.ENCODED
    encoded.write_bytes(encoded.read_bytes()[:300])
    result = run_script(*edit_args(ckpt, tmp_path, "--stage", "denoise", "--stage_dir", str(stage_dir)))
    assert result.returncode != 0 and "truncated" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def t2v(tiny_checkpoint):
    ckpt = tiny_checkpoint("t2v-A14B")
    config = WAN_CONFIGS["t2v-A14B"]
    return WanT2V(config, ckpt, device="cpu"), staged.checkpoint_fingerprint(ckpt, config)


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_denoise_resumes_exactly_after_a_stop(t2v, tmp_path, solver):
    task, fingerprint = t2v
    job = task.prepare("a fox", size=(64, 64), frame_num=5, shift=12.0, sample_solver=solver, sampling_steps=8,
                       guide_scale=(3.0, 4.0), seed=3)
    uninterrupted = staged.denoise(task, job, str(tmp_path), fingerprint)
    assert staged.denoise(task, job, str(tmp_path), fingerprint, save_every=2, stop_after=3) is None
    assert (tmp_path / staged.CHECKPOINT).exists()
    resumed = staged.denoise(task, job, str(tmp_path), fingerprint, save_every=2)
    assert torch.equal(uninterrupted, resumed)
    assert not (tmp_path / staged.CHECKPOINT).exists()


def test_stage_files_refuse_another_model(t2v, tmp_path):
    task, fingerprint = t2v
    job = task.prepare("a fox", size=(64, 64), frame_num=5, sampling_steps=2, seed=1)
    path = str(tmp_path / staged.ENCODED)
    staged.save_job(job, path, fingerprint)
    loaded = staged.load_job(path, fingerprint)
    assert torch.equal(loaded.noise, job.noise) and loaded.settings == job.settings
    with pytest.raises(ValueError, match="another model"):
        staged.load_job(path, "0123456789abcdef")


def test_fingerprint_changes_with_the_model(tiny_checkpoint):
    config = WAN_CONFIGS["ti2v-5B"]
    assert staged.checkpoint_fingerprint(tiny_checkpoint("ti2v-5B"), config) != \
        staged.checkpoint_fingerprint(tiny_checkpoint("t2v-1.3B"), config)
