"""Qwen-Image-Edit TTLG frame editor on tiny offline components: parity with the diffusers pipeline,
guidance that lowers its losses, the extract -> edit -> assemble workflow with resume, the seed's
command line as written (no subcommand, no prompt, MODEL_ID) with its HTML report in a real browser,
the resumable whole-video command, bad inputs."""
import csv
import logging
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import qwen_video_edit
from browser import browser, outside_requests, page, record_requests  # noqa: F401  (pytest fixtures)
from conftest import DATA, run_script
from wan.errors import WanInputError
from wan.qwen_edit import (EditJob, GuidanceSettings, LossTargets, PerceptualMetric, QwenFrameEditor, edit_frames,
                           extract)
from wan.qwen_edit.frames import pil_to_model
from wan.qwen_edit.loading import load_edit_pipeline
from wan.qwen_edit.losses import (default_feature_layers, edge_loss, gram_loss, gram_matrix, luma,
                                  normalised_edges, temporal_loss)
from wan.qwen_edit.workflow import DEFAULT_PROMPT, VideoJob, extract_once
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
    with pytest.raises(WanInputError, match="^edge_frames_dir .* has no images"):  # the library names its field
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
    assert f"error: model_id {tmp_path / 'no-such-model'} is neither a folder nor a Hugging Face repo id" in result.stderr


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


# ----------------------------------------------------------------------------------------------
# the seed's command line, the whole-video command and run reports

# The seed's edit command, as written; only the paths point at the tiny model's work folder.
SEED_FLAGS = ["--num_inference_steps", "10", "--ttlg_edge_scale", "1.0", "--ttlg_gram_scale", "0.3", "--seed", "42"]


def one_line_error(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def seed_run(tiny_dir, tmp_path_factory):
    """`python qwen_video_edit.py --init_frame ... --edge_frames_dir ... --out_frames_dir ... <seed flags> --report`
    with the model from MODEL_ID, on one 64x64 frame of the kitten clip (the model's own condition sizes make
    it the slowest test here: about 20 s)."""
    work = tmp_path_factory.mktemp("seed")
    init, edges, _ = extract(VIDEO, work, size=(64, 64), max_frames=1)
    out = work / "out"
    result = run_script("qwen_video_edit.py", "--init_frame", init, "--edge_frames_dir", edges,
                        "--out_frames_dir", str(out), *SEED_FLAGS, "--report", env={"MODEL_ID": tiny_dir})
    assert result.returncode == 0, result.stderr
    return out, result


def test_seed_command_runs_as_written(seed_run):
    out, result = seed_run
    assert "qwen_video_edit edit" in result.stderr  # no subcommand: the edit
    assert Image.open(out / "frame_00000.png").size == (64, 64)
    assert [row["frame"] for row in read_rows(out / "metrics.csv")] == ["0", "mean"]
    assert probe_video(str(out / "report.mp4"))[:1] == (1,)
    html = (out / "report.html").read_text()
    # the default instruction was the prompt; the flags as written and the model's identity are in the settings
    assert DEFAULT_PROMPT.replace("'", "&#x27;") in html
    for setting, value in [("arguments.seed", "42"), ("arguments.ttlg_gram_scale", "0.3"),
                           ("arguments.num_inference_steps", "10"), ("model.config.dtype", "float32"),
                           ("model.config.guidance.gram_scale", "0.3")]:
        assert re.search(f"<td>{re.escape(setting)}</td><td[^>]*>{re.escape(value)}</td>", html), setting
    assert re.search(r"<td>model\.fingerprint</td><td>[0-9a-f]{16}</td>", html)
    for text in ("edge loss per frame", "gram loss per frame", "temporal loss per frame", "init frame",
                 "<td>load model</td>", "<td>edit</td>", "peak process RSS", "<td>diffusers</td>"):
        assert text in html, text


def test_seed_report_in_chromium(seed_run, page):  # noqa: F811  (fixture)
    out, _ = seed_run
    requests = record_requests(page)
    page.goto((out / "report.html").as_uri())
    page.wait_for_function("() => document.querySelector('video').readyState >= 2")
    assert page.evaluate("() => [document.querySelector('video').videoWidth, "
                         "document.querySelector('img').naturalWidth]") == [64, 64]
    sizes = page.evaluate("() => [...document.querySelectorAll('svg.plot')].map(s => s.getBoundingClientRect().width)")
    assert len(sizes) == 5 and min(sizes) > 100  # three losses, the perceptual distance, seconds
    page.screenshot(path=str(out / "report.png"), full_page=True)
    assert outside_requests(requests) == [], requests


def video_argv(tiny_dir, work, *extra):
    return ["qwen_video_edit.py", "video", "--video", VIDEO, "--output", str(work / "styled.mp4"), "--stride", "4",
            "--size", "64*64", "--max_frames", "2", *SEED_FLAGS, "--condition_image_size", "56*56",
            "--vae_image_size", "64*64", "--report", *extra]


def test_video_command_skips_finished_work(tiny_dir, tmp_path, caplog, monkeypatch):
    """extract -> edit -> assemble in one command; a rerun loads no model and rewrites nothing; after losing
    the last frame and the mp4 it edits that frame only; other edit settings in the same work folder fail.
    (The first run is a real command line; the reruns call main() in this process, to save start-up time.)"""
    argv = video_argv(tiny_dir, tmp_path)
    first = run_script(*argv, env={"MODEL_ID": tiny_dir})
    assert first.returncode == 0, first.stderr
    output, frames = tmp_path / "styled.mp4", tmp_path / "styled_work" / "frames"
    _, source_fps, _, _ = probe_video(VIDEO)
    num_frames, fps, width, height = probe_video(str(output))
    assert (num_frames, width, height) == (2, 64, 64) and fps == pytest.approx(source_fps / 4, rel=1e-3)
    assert "edited: 64x64, 2 frames at" in (tmp_path / "report.html").read_text()
    stamps = {p: os.stat(p).st_mtime_ns for p in (output, frames / "frame_00000.png", frames / "frame_00001.png")}

    monkeypatch.setenv("MODEL_ID", tiny_dir)
    caplog.set_level(logging.INFO)
    qwen_video_edit.main(argv[1:])
    assert "frames already extracted" in caplog.text and "all 2 frames already edited" in caplog.text
    assert "is up to date" in caplog.text and "loading Qwen-Image-Edit" not in caplog.text
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    assert "not loaded (every frame was already done)" in (tmp_path / "report.html").read_text()

    os.remove(frames / "frame_00001.png")
    os.remove(output)
    caplog.clear()
    qwen_video_edit.main(argv[1:])
    assert "1 of 2 frames already done" in caplog.text and "frame 0:" not in caplog.text
    assert probe_video(str(output))[0] == 2

    with pytest.raises(WanInputError, match="holds a run with seed=42, this one has seed=7"):
        qwen_video_edit.main([*argv[1:], "--seed", "7"])
    # until a frame is saved, other settings are fine (e.g. after a run that failed to load the model)
    for name in os.listdir(frames):
        os.remove(frames / name)
    qwen_video_edit.main([*argv[1:], "--seed", "7"])
    assert sorted(p for p in os.listdir(frames) if p.endswith(".png")) == ["frame_00000.png", "frame_00001.png"]


def test_extraction_is_kept_or_refused(tmp_path):
    job = VideoJob(video=VIDEO, output=str(tmp_path / "out.mp4"), work_dir=str(tmp_path), stride=8, size=(32, 32),
                   max_frames=2)
    record = extract_once(job)
    assert record["frames"] == 2 and sorted(os.listdir(tmp_path / "edges")) == ["edge_00000.png", "edge_00001.png"]
    stamp = os.stat(tmp_path / "edges" / "edge_00000.png").st_mtime_ns
    assert extract_once(job) == record and os.stat(tmp_path / "edges" / "edge_00000.png").st_mtime_ns == stamp
    job.stride = 4
    with pytest.raises(WanInputError, match="holds a run with stride=8, this one has stride=4"):
        extract_once(job)


def test_command_line_defaults(monkeypatch):
    argv = ["--init_frame", "a.png", "--edge_frames_dir", "e", "--out_frames_dir", "o"]
    args = qwen_video_edit.parse_args(argv)
    assert (args.command, args.prompt, args.report) == ("edit", DEFAULT_PROMPT, None)
    assert qwen_video_edit.parse_args([*argv, "--report"]).report == ""  # the default place
    monkeypatch.setenv("MODEL_ID", "from-env")
    assert qwen_video_edit._model_id(args) == "from-env"
    assert qwen_video_edit._model_id(qwen_video_edit.parse_args([*argv, "--model_id", "flag"])) == "flag"


@pytest.mark.parametrize("problem", ["empty frames folder", "report folder missing", "no model"])
def test_seed_command_bad_inputs(tiny_dir, small_job, tmp_path, problem):
    """Each a one-line error and exit status 2, before any model loads."""
    edges, report, model = small_job.edge_frames_dir, [], tiny_dir
    if problem == "empty frames folder":
        edges = str(tmp_path / "empty")
        os.mkdir(edges)
    elif problem == "report folder missing":
        report = ["--report", str(tmp_path / "missing" / "report.html")]
    else:
        model = ""
    result = run_script("qwen_video_edit.py", "--init_frame", small_job.init_frame, "--edge_frames_dir", edges,
                        "--out_frames_dir", small_job.out_frames_dir, *SEED_FLAGS, *report, env={"MODEL_ID": model})
    expected = {"empty frames folder": f"error: --edge_frames_dir {edges} has no images",
                "report folder missing": f"error: report folder does not exist: {tmp_path / 'missing'}",
                "no model": "error: no model given"}[problem]
    assert one_line_error(result).startswith(expected)
    assert not os.path.exists(small_job.out_frames_dir)
