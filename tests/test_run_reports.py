"""--report on every run kind (a generation, an edit, a manifest of edits, a chain, a staged run), each page
opened in a real headless Chromium: every video loads with its duration, nothing leaves file:/data:."""
import json
import os

import pytest

from browser import browser, outside_requests, page, record_requests  # noqa: F401  (pytest fixtures)
from conftest import DATA, run_script
from wan.utils.video_io import probe_video

KITTEN = os.path.join(DATA, "kitten-turning-head")
BALLET = os.path.join(DATA, "ballet")
RABBIT = os.path.join(DATA, "rabbit-figurine", "source.mp4")
EDIT = ["--frame_num", "5", "--inversion_steps", "2", "--generation_steps", "2", "--max_area", "4096", "--device",
        "cpu"]


def check_in_browser(page, report, expected_videos):  # noqa: F811
    requests = record_requests(page)
    page.goto(report.as_uri())
    page.wait_for_function("() => [...document.querySelectorAll('video')].every(v => v.readyState >= 1)")
    durations = page.evaluate("() => [...document.querySelectorAll('video')].map(v => v.duration)")
    assert len(durations) == len(expected_videos)
    for duration, video in zip(durations, expected_videos):
        frames, fps = probe_video(video)[:2]
        assert abs(duration - frames / fps) <= 1.01 / fps, (video, duration)
    assert page.locator("img").count() >= 1
    assert outside_requests(requests) == [], requests
    page.screenshot(path=str(report.with_suffix(".png")), full_page=True)
    html = report.read_text()
    assert "checkpoint fingerprint" in html or "fingerprint" in html
    assert "stage" in html and "seconds" in html  # the per-stage timings table
    return html


def test_generation_report(tiny_checkpoint, tmp_path, page):  # noqa: F811
    out = tmp_path / "t2v.mp4"
    result = run_script("generate.py", "--task", "ti2v-5B", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--size", "64*64",
                        "--frame_num", "5", "--sample_steps", "2", "--save_file", str(out), "--report", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    html = check_in_browser(page, tmp_path / "t2v.report.html", [out])
    for text in ("denoise", "decode and write", "load", "sampling.steps", "A red fox"):
        assert text in html, text


def test_edit_and_staged_reports(tiny_checkpoint, tmp_path, page):  # noqa: F811
    ckpt = tiny_checkpoint("ti2v-5B")
    common = ["--ckpt_dir", ckpt, "--video", os.path.join(KITTEN, "source.mp4"), "--source_prompt", "a kitten",
              "--target_prompt", "a dog", "--target_image", os.path.join(KITTEN, "edited_first_frame.png"), *EDIT]
    out = tmp_path / "edit.mp4"
    result = run_script("ti2v_inversion_edit.py", *common, "--output", str(out), "--comparison", "--report")
    assert result.returncode == 0, result.stderr[-2000:]
    html = check_in_browser(page, tmp_path / "edit.report.html", [out, tmp_path / "edit_comparison.mp4"])
    assert "PSNR vs source" in html and "invert and regenerate" in html
    # a staged run reports its decode stage
    stages = tmp_path / "stages"
    staged = tmp_path / "staged.mp4"
    for stage in ("encode", "denoise", "decode"):
        extra = ["--report", str(tmp_path / "staged.html")] if stage == "decode" else []
        result = run_script("ti2v_inversion_edit.py", *common, "--output", str(staged), "--stage", stage,
                            "--stage_dir", str(stages), *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    check_in_browser(page, tmp_path / "staged.html", [staged])


def test_manifest_report(tiny_checkpoint, tmp_path, page):  # noqa: F811
    manifest = tmp_path / "edits.jsonl"
    lines = [dict(video=os.path.join(KITTEN, "source.mp4"), source_prompt="a kitten", target_prompt="a dog",
                  target_image=os.path.join(KITTEN, "edited_first_frame.png"), output=str(tmp_path / "a.mp4")),
             dict(video=os.path.join(BALLET, "source.mp4"), source_prompt="a dancer", target_prompt="a painting",
                  output=str(tmp_path / "b.mp4"))]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_script("ti2v_inversion_edit.py", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--manifest", str(manifest),
                        *EDIT, "--report")
    assert result.returncode == 0, result.stderr[-2000:]
    html = check_in_browser(page, tmp_path / "edits.report.html", [tmp_path / "a.mp4", tmp_path / "b.mp4"])
    assert "2 edits" in html and "a painting" in html


def test_chain_report(tiny_checkpoint, tiny_vlm, tmp_path, page):  # noqa: F811
    out = tmp_path / "chain"
    result = run_script("generate_continuous.py", "--video", RABBIT, "--task", "v2v-5B", "--ckpt_dir",
                        tiny_checkpoint("ti2v-5B"), "--vlm_path", tiny_vlm("internvl"), "--output_dir", str(out),
                        "--num_videos", "2", "--size", "64*64", "--frame_num", "9", "--sample_steps", "1", "--report",
                        "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    videos = [out / "stitched_video.mp4", out / "video_01_seed42.mp4", out / "video_02_seed43.mp4"]
    html = check_in_browser(page, out / "report.html", videos)
    assert "caption and encode" in html and "continue video" in html


@pytest.mark.parametrize("script,argv", [
    ("generate.py", ["--task", "ti2v-5B", "--report", "/nonexistent/folder/r.html"]),
    ("ti2v_inversion_edit.py", ["--video", "x.mp4", "--source_prompt", "a", "--target_prompt", "b", "--output", "o.mp4",
                                "--report", "report.txt"]),
])
def test_a_bad_report_path_is_a_one_line_error_before_anything_runs(tiny_checkpoint, script, argv):
    result = run_script(script, "--ckpt_dir", tiny_checkpoint("ti2v-5B"), *argv)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: report") and "Traceback" not in result.stderr


def test_the_default_report_sits_beside_the_output_whatever_its_kind():
    """OUTPUT.report.html beside a video, and beside (not inside) a PNG-frames folder, where a later
    run's check of the folder would refuse the extra file."""
    from wan.report.runs import default_report_path

    assert default_report_path("out/edit.mp4", None) == "out/edit.report.html"
    assert default_report_path("out/frames/", None) == "out/frames.report.html"
    assert default_report_path("out/frames/", "r.html") == "r.html"
