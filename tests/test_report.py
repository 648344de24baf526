"""Run reports: the page renders in a real headless Chromium (videos decode with the right
durations, plots lay out, nothing leaves file:/data:), its text is escaped and it has no script;
the SVG plot helper, the stage timer and the bad inputs."""
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from browser import browser, outside_requests, page, record_requests  # noqa: F401  (pytest fixtures)
from conftest import REPO
from wan.errors import WanInputError
from wan.report import Report, StageTimer, check_report_path, line_plot
from wan.report.svg import decade_ticks, nice_ticks
from wan.utils.video_io import write_video

GREEN, PURPLE = (40, 180, 60), (150, 40, 170)
SVG = "{http://www.w3.org/2000/svg}"


def solid_clip(path, colour, frames, fps, width=160, height=96):
    """A real H.264 mp4 of one colour with a moving white bar (so it is not a still)."""
    video = np.empty((frames, height, width, 3), np.uint8)
    video[:] = colour
    for index in range(frames):
        video[index, height - 8:, index * 4: index * 4 + 8] = 255
    return write_video(video, path, fps)


@pytest.fixture
def report_dir(tmp_path):
    """A report with an inlined and a linked video, an image, a table, a plot and every text kind."""
    inline = solid_clip(tmp_path / "inline.mp4", GREEN, frames=16, fps=8)  # 2.0 s
    linked = solid_clip(tmp_path / "linked.mp4", PURPLE, frames=12, fps=12, width=64, height=48)  # 1.0 s
    timer = StageTimer("cpu")
    with timer.stage("make <inputs>"):
        frame = np.full((40, 60, 3), PURPLE, np.uint8)
    report = Report("Run <report> & \"quotes\"")
    report.section("Result").video(inline, "inlined clip", embed=True).video(linked, "linked clip", embed=False)
    report.image(frame, "first <frame>")
    report.section("Numbers").table([{"frame": 0, "loss": 0.5}, {"frame": 1, "loss": float("nan")}], "metrics")
    report.plot({"edge": [0.3, 0.2, None, 0.25], "gram": [1e-3, 2e-3, 1e-2, 5e-3]}, "TTLG losses", "frame",
                "loss", logy=True)
    report.prompts({"prompt": "a <b>bold</b> cat\nsecond line", "extended prompt": None})
    report.text("a <note>\n\nits second paragraph", "notes")
    report.settings({"model": {"dir": "/ckpt", "fingerprint": "abc123"}, "steps": 10, "size": (64, 48)})
    report.timings(timer)
    report.environment()
    report.write(tmp_path / "report.html")
    return tmp_path


def test_report_plays_in_chromium(report_dir, page):  # noqa: F811  (fixture)
    requests = record_requests(page)
    console = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.goto((report_dir / "report.html").as_uri())
    # readyState 4: enough data to play (>= 1 would be metadata only); also clears the loading spinner.
    page.wait_for_function("() => [...document.querySelectorAll('video')].every(v => v.readyState >= 4)")
    videos = page.evaluate("() => [...document.querySelectorAll('video')].map(v => ({src: v.getAttribute('src'), "
                           "duration: v.duration, width: v.videoWidth, height: v.videoHeight, error: v.error}))")
    assert [v["src"][:22] for v in videos] == ["data:video/mp4;base64,", "linked.mp4"]
    assert [(v["width"], v["height"], v["error"]) for v in videos] == [(160, 96, None), (64, 48, None)]
    for video, (seconds, fps) in zip(videos, [(2.0, 8), (1.0, 12)]):
        assert abs(video["duration"] - seconds) <= 1 / fps, video["duration"]

    plot = page.locator("svg.plot").bounding_box()
    assert plot["width"] > 100 and plot["height"] > 100
    assert page.locator("svg.plot polyline").count() == 3  # edge is cut in two at its missing value
    image = page.evaluate("() => {const i = document.querySelector('img'); return [i.complete, i.naturalWidth, "
                          "i.naturalHeight]}")
    assert image == [True, 60, 40]
    assert page.title() == 'Run <report> & "quotes"'
    assert page.locator("pre.prompt").inner_text() == "a <b>bold</b> cat\nsecond line"

    # The decoded frame is on screen: the clip's colour fills the top of the video element.
    shot = report_dir / "video.png"
    page.locator("video").first.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    top = pixels[: pixels.shape[0] // 3, : pixels.shape[1] // 2].reshape(-1, 3).mean(axis=0)
    assert np.abs(top - GREEN).max() < 20, top

    page.screenshot(path=str(report_dir / "report.png"), full_page=True)
    assert os.path.getsize(report_dir / "report.png") > 10_000
    assert outside_requests(requests) == [], requests
    assert [r for r in requests if r.startswith("file:")] == [(report_dir / "report.html").as_uri(),
                                                              (report_dir / "linked.mp4").as_uri()]
    assert not [line for line in console if line.startswith("error")], console


def test_page_is_static_and_escaped(report_dir):
    html = (report_dir / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "a &lt;b&gt;bold&lt;/b&gt; cat" in html and "first &lt;frame&gt;" in html
    assert "make &lt;inputs&gt;" in html  # stage names too
    assert "<h3>notes</h3><p>a &lt;note&gt;</p><p>its second paragraph</p>" in html
    assert "extended prompt" not in html  # a prompt that is None is left out
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for text in ("model.fingerprint", "abc123", "[64, 48]", "torch", "peak process RSS"):
        assert text in html, text
    assert not [name for name in os.listdir(report_dir) if ".partial" in name]  # atomic write left nothing


def test_linked_video_path_is_relative_to_the_report(tmp_path):
    clip = solid_clip(tmp_path / "clip.mp4", GREEN, frames=4, fps=4)
    Report("r", embed_limit=0).video(clip).write(tmp_path / "sub" / "report.html")
    html = (tmp_path / "sub" / "report.html").read_text()
    assert 'src="../clip.mp4"' in html and "data:video" not in html


def test_small_videos_are_inlined_by_default(tmp_path):
    clip = solid_clip(tmp_path / "clip.mp4", GREEN, frames=4, fps=4)
    Report("r").video(clip).write(tmp_path / "report.html")
    assert 'src="data:video/mp4;base64,' in (tmp_path / "report.html").read_text()


def test_bad_inputs(tmp_path):
    with pytest.raises(WanInputError, match="video not found"):
        Report("r").video(tmp_path / "absent.mp4")
    (tmp_path / "not_a_video.mp4").write_bytes(b"nothing here")
    with pytest.raises(WanInputError, match="cannot read video"):
        Report("r").video(tmp_path / "not_a_video.mp4")
    with pytest.raises(WanInputError, match="report folder does not exist"):
        check_report_path(tmp_path / "missing" / "report.html")
    with pytest.raises(WanInputError, match="must end in .html"):
        check_report_path(tmp_path / "report.txt")
    assert str(check_report_path(tmp_path / "report.html")).endswith("report.html")
    with pytest.raises(ValueError, match="uint8"):
        Report("r").image(np.zeros((4, 4, 3), np.float32))


def test_settings_flatten_nested_dicts_and_dataclasses(tmp_path):
    @dataclass
    class Guidance:
        edge_scale: float = 1.0
        every: int = 2

    Report("r").settings({"guidance": Guidance(), "size": [64, 48]}).write(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "<td>guidance.edge_scale</td>" in html and "<td>guidance.every</td>" in html
    assert "<code>[64, 48]</code>" in html


# ----------------------------------------------------------------------------------------------
# the SVG plot helper


def polylines(svg):
    root = ET.fromstring(svg)  # well-formed XML
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter(f"{SVG}polyline")]


def test_line_plot_maps_values_onto_the_axes():
    lines = polylines(line_plot({"up": [0, 1, 2, 3]}, "t", "x", "y"))
    assert len(lines) == 1 and len(lines[0]) == 4
    xs, ys = zip(*lines[0])
    assert all(b > a for a, b in zip(xs, xs[1:]))  # x grows to the right
    assert all(b < a for a, b in zip(ys, ys[1:]))  # larger y is higher on screen (smaller SVG y)
    steps = np.diff(ys)
    assert np.allclose(steps, steps[0], atol=0.02)  # a straight line stays straight (2-decimal coordinates)


def test_line_plot_gaps_log_axis_and_escaping():
    svg = line_plot({"a<b": ([0, 1, 2, 3, 4], [1.0, float("nan"), 2.0, 3.0, -1.0])}, "x & y", logy=True)
    assert [len(line) for line in polylines(svg)] == [1, 2]  # NaN cuts; -1 has no logarithm
    assert "a&lt;b" in svg and "x &amp; y" in svg
    lines = polylines(line_plot({"decades": [1e-3, 1e-2, 1e-1]}, "", logy=True))
    ys = [y for _, y in lines[0]]
    assert math.isclose(ys[0] - ys[1], ys[1] - ys[2], rel_tol=1e-3)  # equal steps per decade


def test_ticks_cover_the_range_in_round_steps():
    ticks = nice_ticks(0.013, 0.087)
    assert ticks[0] <= 0.013 and ticks[-1] >= 0.087
    assert np.allclose(np.diff(ticks), 0.02)
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]  # a flat series still gets a range
    assert decade_ticks(-3.2, -0.5) == [-4, -3, -2, -1, 0]


# ----------------------------------------------------------------------------------------------
# the stage timer

TIMER_SCRIPT = """
import numpy as np
from wan.report import StageTimer
timer = StageTimer("cpu")
with timer.stage("outer"):
    with timer.stage("small"):
        small = np.ones(1000)
    with timer.stage("big"):
        big = np.ones(40 * 2**20)  # 320 MiB, touched
for _ in range(3):
    with timer.stage("repeated"):
        pass
for record in timer.records.values():
    print(record.name, record.calls, record.seconds, record.peak_bytes)
"""


def test_stage_timer_times_and_peaks_on_the_cpu():
    """In a fresh process (a test worker's RSS peak is whatever ran before it): calls add up, nested
    stages lie inside their outer stage, and the big allocation shows in its stage's peak, not in
    the parent's size (this test runs from a large pytest worker)."""
    result = subprocess.run([sys.executable, "-c", TIMER_SCRIPT], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert result.returncode == 0, result.stderr
    records = {name: (int(calls), float(seconds), int(peak))
               for name, calls, seconds, peak in (line.split() for line in result.stdout.splitlines())}
    assert list(records) == ["outer", "small", "big", "repeated"]
    assert records["repeated"][0] == 3 and records["outer"][0] == 1
    assert records["outer"][1] >= records["big"][1] > 0
    assert records["big"][2] - records["small"][2] > 250 * 2**20  # the 320 MiB array
    assert records["outer"][2] >= records["big"][2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stage_timer_peaks_on_cuda():
    """Each stage reports its own CUDA peak; an outer stage's includes its inner stages'."""
    timer = StageTimer("cuda")
    with timer.stage("outer"):
        with timer.stage("big"):
            big = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB
            del big
        with timer.stage("small"):
            small = torch.empty(2**20, dtype=torch.uint8, device="cuda")  # 1 MiB
            del small
    peaks = {name: record.peak_bytes for name, record in timer.records.items()}
    assert peaks["big"] >= 2**28 > peaks["small"]
    assert peaks["outer"] >= peaks["big"]
