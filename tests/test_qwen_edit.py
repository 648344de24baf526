"""Qwen-Image-Edit TTLG frame editor on tiny offline components: parity with the diffusers pipeline,
guidance that lowers its losses, the extract -> edit -> assemble workflow with resume, bad inputs."""
import csv
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import qwen_video_edit
from conftest import DATA, run_script
from wan.errors import WanInputError
from wan.qwen_edit import EditJob, GuidanceSettings, LossTargets, PerceptualMetric, QwenFrameEditor, edit_frames
from wan.qwen_edit.frames import pil_to_model
from wan.qwen_edit.loading import load_edit_pipeline
from wan.qwen_edit.losses import (default_feature_layers, edge_loss, gram_loss, gram_matrix, luma,
                                  normalised_edges, temporal_loss)
from wan.tools.tiny_qwen_edit import make_tiny_qwen_edit
from wan.utils.video_io import probe_video, read_video

CONDITION_AREA = 56 * 56  # the smallest the VL image processor takes (4 x 14-px patches, merged to 1 token)
VAE_AREA = 64 * 64
VIDEO = os.path.join(DATA, "kitten-turning-head", "source.mp4")
FAST_FLAGS = ["--num_inference_steps", "3", "--condition_image_size", "56*56", "--vae_image_size", "64*64",
              "--ttlg_last_steps", "2", "--ttlg_every", "1", "--seed", "3", "--dtype", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_qwen_edit(tmp_path_factory.mktemp("tiny-qwen-edit"))


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return load_edit_pipeline(tiny_dir)


@pytest.fixture(scope="module")
def frames():
    """Two real 64x64 frames (kitten clip, 8 frames apart) as PIL images."""
    video, _ = read_video(VIDEO, max_frames=9)
    return [Image.fromarray(video[i].numpy()).resize((64, 64), Image.LANCZOS) for i in (0, 8)]


def make_editor(pipe, **guidance):
    return QwenFrameEditor(pipe, GuidanceSettings(**guidance), condition_area=CONDITION_AREA,
                           vae_condition_area=VAE_AREA)


# ----------------------------------------------------------------------------------------------
# the denoising loop


def test_guidance_off_equals_pipeline_call(pipe, frames, monkeypatch):
    """Same components and seed: our loop == QwenImageEditPlusPipeline.__call__ (true CFG on, a
    non-square output, condition images of two different aspect ratios)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus

    monkeypatch.setattr(edit_plus, "CONDITION_IMAGE_SIZE", CONDITION_AREA)
    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", VAE_AREA)
    images = [frames[0], frames[1].resize((80, 48))]
    expected = pipe(image=images, prompt="make it a watercolour", negative_prompt=" ", true_cfg_scale=4.0,
                    height=48, width=64, num_inference_steps=4, generator=torch.Generator().manual_seed(5),
                    output_type="pt").images[0]
    editor = make_editor(pipe)  # guidance settings all zero
    got = editor.edit(images, "make it a watercolour", 48, 64, seed=5, num_inference_steps=4, true_cfg_scale=4.0)
    assert got.shape == (1, 3, 48, 64)
    torch.testing.assert_close((got[0] / 2 + 0.5).clamp(0, 1), expected, atol=2e-5, rtol=0)


def test_decode_denormalises_latents(pipe):
    """decode(pack((z - mean) / std)) == vae.decode(z): the tiny VAE has non-trivial mean and std."""
    editor = make_editor(pipe)
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(std, torch.ones_like(std))
    z = torch.randn(1, config.z_dim, 1, 4, 6, generator=torch.Generator().manual_seed(0))
    packed = pipe._pack_latents((z - mean) / std, 1, config.z_dim, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(editor.decode(packed, 32, 48), pipe.vae.decode(z).sample[:, :, 0],
                                   atol=1e-5, rtol=1e-5)


def loss_targets(editor, frames):
    edges, style = pil_to_model(frames[1]), pil_to_model(frames[1])
    return LossTargets(edges=normalised_edges(edges), style_grams=editor.style_grams(style),
                       previous=pil_to_model(frames[0]))


@pytest.mark.parametrize("term", ["edge", "gram", "temporal"])
def test_guidance_lowers_its_loss(pipe, frames, term):
    """Same seed, that term's weight on vs off: the output's loss of that term drops; outputs finite."""
    def run(scale):
        editor = make_editor(pipe, **{f"{term}_scale": scale}, lr=0.5, last_steps=3, every=1)
        targets = loss_targets(editor, frames)
        out = editor.edit(frames, "a painting", 64, 64, seed=1, num_inference_steps=4, true_cfg_scale=1.0,
                          targets=targets)
        assert torch.isfinite(out).all()
        with torch.no_grad():
            return editor.losses(out, targets)[term].item()

    off, on = run(0.0), run(1.0)
    assert on < 0.97 * off, (term, off, on)


def test_guidance_schedule():
    settings = GuidanceSettings(edge_scale=1, last_steps=4, every=2)
    assert [s for s in range(10) if settings.applies_at(s, 10)] == [6, 8]
    assert not GuidanceSettings(last_steps=4).applies_at(9, 10)  # every weight 0: off
    with pytest.raises(WanInputError):
        GuidanceSettings(every=0)


# ----------------------------------------------------------------------------------------------
# losses


def test_edges_of_a_step_lie_on_the_step():
    image = -torch.ones(1, 3, 16, 16)
    image[..., 8:] = 1
    edges = normalised_edges(image)[0, 0]
    assert edges[:, 7:9].min() > 0.99 and edges[:, :6].max() < 0.1 and edges[:, 10:].max() < 0.1
    assert edge_loss(image, edges[None, None]).item() < 1e-6


def test_gram_and_temporal_losses_vanish_for_identical_images():
    features = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)]
    assert gram_loss(features, [gram_matrix(f) for f in features]).item() == 0
    assert gram_loss([f * 2 for f in features], [gram_matrix(f) for f in features]).item() > 0
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    assert temporal_loss(image, image).item() < 2e-3 < temporal_loss(image, -image).item()
    assert torch.allclose(luma(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2))


def test_default_feature_layers_on_the_real_vae_layout():
    from diffusers import AutoencoderKLQwenImage

    with torch.device("meta"):
        vae = AutoencoderKLQwenImage()  # the real config's defaults
    assert default_feature_layers(vae.encoder.down_blocks) == [1, 4, 7, 10]


# ----------------------------------------------------------------------------------------------
# workflow


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def edit_argv(tiny_dir, work, *extra):
    return ["qwen_video_edit.py", "edit", "--model_id", tiny_dir, "--init_frame", str(work / "init_frame.png"),
            "--edge_frames_dir", str(work / "edges"), "--out_frames_dir", str(work / "out"),
            "--prompt", "make it a pencil drawing", *FAST_FLAGS, *extra]


def test_extract_edit_resume_assemble(tiny_dir, pipe, tmp_path):
    work = tmp_path / "work"
    result = run_script("qwen_video_edit.py", "extract", "--video", VIDEO, "--out_dir", str(work), "--stride", "4",
                        "--size", "64*64", "--max_frames", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(work / "edges")) == ["edge_00000.png", "edge_00001.png", "edge_00002.png"]
    assert Image.open(work / "init_frame.png").size == (64, 64)

    # "interrupted" after two frames, then rerun: only frame 2 is computed, after frame 1
    first = run_script(*edit_argv(tiny_dir, work, "--max_frames", "2"))
    assert first.returncode == 0, first.stderr
    out = work / "out"
    assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == ["frame_00000.png", "frame_00001.png"]
    rows_before = read_rows(out / "metrics.csv")
    assert [r["frame"] for r in rows_before] == ["0", "1", "mean"]
    stamps = {name: os.stat(out / name).st_mtime_ns for name in ("frame_00000.png", "frame_00001.png")}

    second = run_script(*edit_argv(tiny_dir, work))
    assert second.returncode == 0, second.stderr
    assert "2 of 3 frames already done" in second.stderr
    assert "frame 2:" in second.stderr and "frame 0:" not in second.stderr and "frame 1:" not in second.stderr
    assert {name: os.stat(out / name).st_mtime_ns for name in stamps} == stamps
    rows = read_rows(out / "metrics.csv")
    assert [r["frame"] for r in rows] == ["0", "1", "2", "mean"]
    assert rows[:2] == rows_before[:2]
    columns = ["edge_loss", "gram_loss", "temporal_loss", "vae_perceptual"]
    for column in columns:
        values = [float(r[column]) for r in rows[:3]]
        assert all(np.isfinite(values)) and float(rows[3][column]) == pytest.approx(np.mean(values), rel=1e-4)

    # the resumed frame 2 equals an uninterrupted run's frame 2 (it used frame 1 as its previous frame)
    editor = make_editor(pipe, edge_scale=1.0, gram_scale=0.5, temporal_scale=0.25, lr=0.03, last_steps=2,
                         every=1)
    job = EditJob(init_frame=str(work / "init_frame.png"), edge_frames_dir=str(work / "edges"),
                  out_frames_dir=str(tmp_path / "straight"), prompt="make it a pencil drawing", seed=3,
                  num_inference_steps=3)
    edit_frames(editor, job, PerceptualMetric(editor.features))
    for index in range(3):
        name = f"frame_{index:05d}.png"
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(tmp_path / "straight" / name)))

    video = tmp_path / "edited.mp4"
    result = run_script("qwen_video_edit.py", "assemble", "--frames_dir", str(out), "--output", str(video),
                        "--fps", "8")
    assert result.returncode == 0, result.stderr
    num_frames, fps, width, height = probe_video(str(video))
    assert (num_frames, fps, width, height) == (3, 8.0, 64, 64)


# ----------------------------------------------------------------------------------------------
# bad inputs


@pytest.fixture
def small_job(tmp_path, frames):
    edges = tmp_path / "edges"
    edges.mkdir()
    for index, frame in enumerate(frames):
        frame.save(edges / f"edge_{index:05d}.png")
    frames[0].save(tmp_path / "init.png")
    return EditJob(init_frame=str(tmp_path / "init.png"), edge_frames_dir=str(edges),
                   out_frames_dir=str(tmp_path / "out"), prompt="x", num_inference_steps=2, true_cfg_scale=1.0)


def test_mismatched_frame_sizes_are_resized_with_a_warning(pipe, small_job, frames, caplog):
    frames[1].resize((80, 72)).save(os.path.join(small_job.edge_frames_dir, "edge_00001.png"))
    Image.new("RGB", (40, 40), "red").save(small_job.init_frame)
    editor = make_editor(pipe, edge_scale=1.0, lr=0.1, last_steps=1)
    with caplog.at_level(logging.WARNING):
        rows = edit_frames(editor, small_job, PerceptualMetric(editor.features))
    assert len(rows) == 2
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "edge_00001.png is 80x72; resized to 64x64" in warnings and "init.png is 40x40" in warnings
    assert Image.open(os.path.join(small_job.out_frames_dir, "frame_00001.png")).size == (64, 64)


def test_empty_edge_folder(pipe, small_job):
    for name in os.listdir(small_job.edge_frames_dir):
        os.remove(os.path.join(small_job.edge_frames_dir, name))
    with pytest.raises(WanInputError, match="--edge_frames_dir .* has no images"):
        edit_frames(make_editor(pipe), small_job, None)


@pytest.mark.parametrize("which", ["edge", "init"])
def test_unreadable_images(pipe, small_job, which):
    path = (os.path.join(small_job.edge_frames_dir, "edge_00001.png") if which == "edge" else small_job.init_frame)
    with open(path, "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(WanInputError, match=f"cannot read image .*{os.path.basename(path)}"):
        edit_frames(make_editor(pipe), small_job, None)


def test_missing_model_is_a_one_line_error(small_job, tmp_path):
    result = run_script("qwen_video_edit.py", "edit", "--model_id", str(tmp_path / "no-such-model"),
                        "--init_frame", small_job.init_frame, "--edge_frames_dir", small_job.edge_frames_dir,
                        "--out_frames_dir", small_job.out_frames_dir, "--prompt", "x", "--device", "cpu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: --model_id not found" in result.stderr


def test_model_folder_without_a_pipeline(tmp_path):
    with pytest.raises(WanInputError, match="no model_index.json"):
        load_edit_pipeline(str(tmp_path))


def test_cli_checks_inputs_before_loading_the_model(small_job, tmp_path):
    """An empty edge folder fails at once, even with a model path that would fail to load."""
    for name in os.listdir(small_job.edge_frames_dir):
        os.remove(os.path.join(small_job.edge_frames_dir, name))
    with pytest.raises(WanInputError, match="has no images"):
        qwen_video_edit.main(["edit", "--model_id", str(tmp_path / "absent"), "--init_frame", small_job.init_frame,
                              "--edge_frames_dir", small_job.edge_frames_dir, "--out_frames_dir",
                              small_job.out_frames_dir, "--prompt", "x"])


def test_lpips_weights_that_cannot_be_used(pipe, tmp_path):
    """Without the lpips package, or with a file that is no trunk, a one-line input error."""
    bad = tmp_path / "alexnet.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WanInputError, match="lpips"):
        PerceptualMetric(make_editor(pipe).features, str(bad))
