"""The web UI (wan.ui) end to end: the page in a real headless Chromium and every endpoint through
gradio_client, served in this process by a Studio on tiny checkpoints (TI2V-5B, a prompt extender,
a captioner, Qwen-Image-Edit): every click runs the library for real, on 64x64 clips of 5 frames.

What is checked: each tab fills, uploads, runs and shows a playable video (duration > 0); the seed
used is returned and gives the same video again; a second edit of the same source reuses the cached
inversion (the page says so, it is faster and the result is the one a fresh inversion gives);
captions of a continuation arrive while it runs; the settings each run shows are a valid --config
of the matching script and repeat the run there; bad input is a one-line message in the page and the
server keeps serving; Cancel stops a running job; no request leaves 127.0.0.1. Screenshots of each
tab go to the test's tmp folder.
"""
import contextlib
import os
import re
import shutil
import socket
import time

import numpy as np
import pytest
import yaml
from gradio_client import Client, handle_file

import generate as generate_script
import generate_continuous as continuous_script
import ti2v_inversion_edit as edit_script
from browser import browser, outside_requests, page, record_requests  # noqa: F401  (pytest fixtures)
from conftest import DATA, run_script
from wan.cli import read_config, run_cli
from wan.modules.prompt_extend import PromptExtender
from wan.settings import LoadOptions
from wan.tools.tiny_prompt_extend import write_tiny_prompt_extender
from wan.tools.tiny_qwen_edit import make_tiny_qwen_edit
from wan.ui import __main__ as ui_main
from wan.ui import checkpoints
from wan.ui.app import launch
from wan.ui.studio import CAPTIONER_NONE, CAPTIONER_PROCEDURAL, CAPTIONER_VLM, RunCancelled, Studio
from wan.utils.video_io import probe_video, read_video

# Gradio's queue still uses pandas options that pandas 3 deprecates (Pandas4Warning); nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

KITTEN = os.path.join(DATA, "kitten-turning-head", "source.mp4")
KITTEN_FRAME = os.path.join(DATA, "kitten-turning-head", "edited_first_frame.png")
VIDEO_READY = ("(id) => { const v = document.querySelector('#' + id + ' video');"
               " return v !== null && v.readyState >= 2 && v.duration > 0; }")
LOOPBACK = ("127.", "localhost", "::1")
STEPS = 2  # CI-sized: 64x64, 5 frames, 2 steps


# ---------------------------------------------------------------------------- the server
@contextlib.contextmanager
def outside_connections():
    """A list that fills with every host this process looks up or connects to outside the loopback."""
    seen = []
    real_lookup, real_connect = socket.getaddrinfo, socket.socket.connect

    def lookup(host, *args, **kwargs):
        if host and not str(host).startswith(LOOPBACK):
            seen.append(host)
        return real_lookup(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(LOOPBACK):
            seen.append(address[0])
        return real_connect(sock, address)

    socket.getaddrinfo, socket.socket.connect = lookup, connect
    try:
        yield seen
    finally:
        socket.getaddrinfo, socket.socket.connect = real_lookup, real_connect


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tiny_vlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-models")
    return {"ckpt": tiny_checkpoint("ti2v-5B"), "vlm": tiny_vlm("internvl"),
            "extender": write_tiny_prompt_extender("text", str(root / "extender")),
            "qwen": str(make_tiny_qwen_edit(root / "qwen"))}


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    """(studio, url, outside hosts): the UI on a free loopback port, uploads in a tmp folder."""
    with pytest.MonkeyPatch.context() as patch, outside_connections() as outside:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-uploads")))
        studio = Studio(checkpoints.resolve_checkpoint(models["ckpt"]), str(tmp_path_factory.mktemp("ui-out")),
                        LoadOptions(offload_model=False, vlm_path=models["vlm"]), models["extender"],
                        models["qwen"]).start()
        demo = launch(studio, "127.0.0.1", free_port(), block=False, quiet=True)
        try:
            yield studio, demo.local_url, outside
        finally:
            demo.close()
    assert outside == [], f"the server reached outside the machine: {outside}"


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


@pytest.fixture
def ui(served, page, tmp_path):  # noqa: F811  (fixture)
    """The page, loaded; at the end nothing it requested may have left the app's origin."""
    studio, url, _ = served
    requests = record_requests(page)
    page.goto(url, wait_until="networkidle")
    yield page
    assert outside_requests(requests, (url, "data:", "blob:")) == [], requests


def wait_for_video(ui, elem_id, timeout=60_000):
    ui.wait_for_function(VIDEO_READY, arg=elem_id, timeout=timeout)
    return ui.evaluate("(id) => { const v = document.querySelector('#' + id + ' video');"
                       " return {duration: v.duration, width: v.videoWidth, height: v.videoHeight}; }", elem_id)


def wait_for_new_run(ui, elem_id, previous=None, timeout=60_000):
    """The status text once it names a run folder other than `previous`; returns (text, folder)."""
    ui.wait_for_function("([id, previous]) => { const m = document.querySelector('#' + id).innerText"
                         ".match(/Run folder: (\\S+)/); return m !== null && m[1] !== previous; }",
                         arg=[elem_id, previous], timeout=timeout)
    text = ui.locator(f"#{elem_id}").inner_text()
    return text, re.search(r"Run folder: (\S+)", text).group(1)


def page_error(ui):
    """The error toast's text (waits for it)."""
    toast = ui.locator(".toast-message-text.error").last
    toast.wait_for()
    return toast.inner_text()


def close_toasts(ui):
    """Close every toast and wait until they are gone, so the next page_error reads a new one."""
    for button in ui.locator(".toast-close").all():
        button.click()
    ui.wait_for_function("document.querySelectorAll('.toast-message-text').length === 0")


def set_number(ui, elem_id, value):
    ui.locator(f"#{elem_id} input[type=number]").first.fill(str(value))


def frames_of(path):
    return read_video(path)[0].numpy().astype(np.int16)


def assert_same_video(a, b):
    """Frames equal up to H.264's run-to-run noise of threaded encodes (a few pixels by a level or two)."""
    first, second = frames_of(a), frames_of(b)
    assert first.shape == second.shape
    assert np.abs(first - second).mean() < 0.05, np.abs(first - second).mean()


# ---------------------------------------------------------------------------- the browser
def test_generate_tab_returns_the_seed_and_repeats_it(ui, served, tmp_path):
    studio = served[0]
    assert "networks narrower than the official ones" in ui.locator("#header").inner_text()
    ui.locator("#gen_prompt textarea").fill("a red circle moving quickly right on a black background.")
    set_number(ui, "gen_steps", STEPS)
    ui.locator("#gen_run").click()
    _, first_run = wait_for_new_run(ui, "gen_status")
    video = wait_for_video(ui, "gen_video")
    assert video["duration"] > 0 and (video["width"], video["height"]) == (64, 64)
    seed = int(ui.locator("#gen_seed_used input").input_value())
    assert 0 <= seed < 2 ** 32 and f"seed: {seed}" in ui.locator("#gen_settings").inner_text()
    assert ui.locator("#gen_files a[href*='report.html']").count() == 1  # a download link to the run's report
    ui.screenshot(path=str(tmp_path / "generate.png"), full_page=True)

    ui.locator("#gen_reuse_seed").click()
    ui.wait_for_function("(seed) => document.querySelector('#gen_seed input').value === String(seed)", arg=seed)
    ui.locator("#gen_run").click()
    _, second_run = wait_for_new_run(ui, "gen_status", first_run)
    assert int(ui.locator("#gen_seed_used input").input_value()) == seed
    assert_same_video(os.path.join(first_run, "video.mp4"), os.path.join(second_run, "video.mp4"))
    assert os.path.dirname(first_run) == studio.out_dir


def test_edit_tab_reuses_the_cached_inversion(ui, served, tmp_path):
    ui.get_by_role("tab", name="Edit").click()
    ui.locator("#edit_toy_load").click()
    ui.wait_for_function("() => document.querySelector('#edit_source video') !== null"
                         " && document.querySelector('#edit_image img') !== null")
    assert ui.locator("#edit_source_prompt textarea").input_value().endswith("background.")
    # Many inversion steps and few regeneration steps: the inversion is most of the first edit's time.
    ui.locator("#edit_scheme input").fill("heun")
    ui.locator("#edit_scheme input").press("Enter")
    set_number(ui, "edit_inv_steps", 200)
    set_number(ui, "edit_steps", STEPS)

    started = time.perf_counter()
    ui.locator("#edit_run").click()
    status, first_run = wait_for_new_run(ui, "edit_status")
    edited = wait_for_video(ui, "edit_video")
    comparison = wait_for_video(ui, "edit_comparison")
    first_seconds = time.perf_counter() - started
    assert "Inversion: 200 heun steps" in status and "cached for re-edits" in status
    assert comparison["width"] == 3 * edited["width"] and edited["duration"] > 0
    ui.screenshot(path=str(tmp_path / "edit.png"), full_page=True)

    target = ui.locator("#edit_target_prompt textarea")
    target.fill(target.input_value().replace("background", "ground"))  # another edit of the same source
    started = time.perf_counter()
    ui.locator("#edit_run").click()
    status, second_run = wait_for_new_run(ui, "edit_status", first_run)
    wait_for_video(ui, "edit_video")
    second_seconds = time.perf_counter() - started
    assert "reused the cached inversion" in status
    assert second_seconds < first_seconds, (first_seconds, second_seconds)
    ui.screenshot(path=str(tmp_path / "edit_reused.png"), full_page=True)


def test_continue_tab_captions_and_stitches(ui, tmp_path):
    ui.get_by_role("tab", name="Continue").click()
    ui.locator("#cont_toy_load").click()
    ui.wait_for_function("() => document.querySelector('#cont_clip video') !== null")
    ui.locator("#cont_run").click()  # defaults: 2 continuations, the procedural captioner, 64x64, 5 frames
    wait_for_new_run(ui, "cont_status")
    stitched = wait_for_video(ui, "cont_video")
    assert stitched["duration"] > 0 and (stitched["width"], stitched["height"]) == (64, 64)
    table = ui.locator("#cont_captions").inner_text()  # a virtualised grid: its text, row by row
    assert re.findall(r"\bdone\b", table) == ["done", "done"] and len(re.findall(r"background\b", table)) == 2, table
    ui.screenshot(path=str(tmp_path / "continue.png"), full_page=True)


def test_qwen_tab_stylises_frames(ui, tmp_path):
    ui.get_by_role("tab", name="Qwen TTLG").click()
    ui.locator("#qwen_clip input[type=file]").set_input_files(KITTEN)
    ui.wait_for_function("() => document.querySelector('#qwen_clip video') !== null")
    ui.get_by_role("button", name=re.compile("^Test-time loss guidance")).click()  # open the accordion
    for elem_id, value in (("qwen_size", "64*64"), ("qwen_cond", "56*56"), ("qwen_vae_size", "64*64")):
        ui.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)
    for elem_id, value in (("qwen_stride", 4), ("qwen_max_frames", 2), ("qwen_steps", STEPS), ("qwen_last_steps", 2)):
        set_number(ui, elem_id, value)
    ui.locator("#qwen_run").click()
    wait_for_new_run(ui, "qwen_status")
    video = wait_for_video(ui, "qwen_video")
    assert (video["width"], video["height"]) == (64, 64)
    assert ui.locator("#qwen_frames img").count() == 2
    assert ui.locator("#qwen_plot svg").count() == 1
    assert "qwen_video_edit.py video" in ui.locator("#qwen_command").inner_text()
    ui.screenshot(path=str(tmp_path / "qwen.png"), full_page=True)


def test_bad_input_is_one_line_in_the_page(ui, tmp_path):
    ui.locator("#gen_prompt textarea").fill("a red circle")
    set_number(ui, "gen_steps", STEPS)
    ui.locator("#gen_frames input").fill("6")
    ui.locator("#gen_run").click()
    assert page_error(ui) == "Frames must be 4n+1 (1, 5, 9, ..., 81, 121), got 6"
    close_toasts(ui)
    ui.locator("#gen_frames input").fill("5")
    ui.locator("#gen_size input").fill("70*70")
    ui.locator("#gen_size input").press("Enter")
    ui.locator("#gen_run").click()
    assert page_error(ui).startswith("Size 70*70: width and height must be positive multiples of 32")
    close_toasts(ui)
    garbage = tmp_path / "not_an_image.png"
    garbage.write_bytes(b"these bytes are not a picture")
    ui.locator("#gen_image input[type=file]").set_input_files(str(garbage))
    ui.locator("#gen_size input").fill("64*64")
    ui.locator("#gen_size input").press("Enter")
    ui.locator("#gen_run").click()
    message = page_error(ui)
    assert message.startswith("cannot read image First frame (not_an_image.png)") and "Traceback" not in message
    ui.screenshot(path=str(tmp_path / "bad_input.png"), full_page=True)
    close_toasts(ui)
    ui.get_by_role("tab", name="Edit").click()
    ui.locator("#edit_run").click()
    assert page_error(ui) == "Source video is required"
    ui.reload(wait_until="networkidle")  # the server keeps serving
    ui.locator("#gen_prompt textarea").fill("a red circle")
    set_number(ui, "gen_steps", STEPS)
    ui.locator("#gen_run").click()
    wait_for_new_run(ui, "gen_status")
    assert wait_for_video(ui, "gen_video")["duration"] > 0


def test_cancel_stops_the_running_job(ui, served):
    studio = served[0]
    edits_before = finished_edits(studio)
    ui.get_by_role("tab", name="Edit").click()
    ui.locator("#edit_toy_load").click()
    ui.wait_for_function("() => document.querySelector('#edit_image img') !== null")
    ui.locator("#edit_scheme input").fill("heun")
    ui.locator("#edit_scheme input").press("Enter")
    set_number(ui, "edit_inv_steps", 200)  # 400 DiT passes on 320 tokens: seconds
    set_number(ui, "edit_frames", 17)
    set_number(ui, "edit_max_area", 256 * 256)
    ui.locator("#edit_reuse input").uncheck()
    ui.locator("#edit_run").click()
    deadline = time.monotonic() + 30
    while not studio.busy and time.monotonic() < deadline:  # the job has the models
        time.sleep(0.02)
    # the pipeline's own tqdm bar, in the page
    ui.locator(".progress-level-inner", has_text=re.compile("inverting")).first.wait_for()
    ui.locator("#edit_cancel").click()
    ui.get_by_text("Cancelled: a running job stops at its next step.").first.wait_for()
    deadline = time.monotonic() + 20
    while studio.busy and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not studio.busy  # the job stopped and gave the models back
    assert finished_edits(studio) == edits_before  # no output, and no run folder left behind
    ui.locator("#edit_reuse input").check()
    set_number(ui, "edit_inv_steps", 2)
    set_number(ui, "edit_frames", 5)
    set_number(ui, "edit_max_area", 64 * 64)
    ui.locator("#edit_run").click()  # the next job runs
    wait_for_new_run(ui, "edit_status")


def finished_edits(studio):
    return sorted(name for name in os.listdir(studio.out_dir) if "-edit-" in name)


# ---------------------------------------------------------------------------- the API
def test_every_endpoint_is_listed(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/generate", "/extend_prompt", "/toy_edit_scene", "/export_frame", "/edit", "/toy_clip", "/continue",
            "/qwen_ttlg"} <= set(endpoints), sorted(endpoints)


def test_generate_settings_repeat_the_run_with_the_script(client, tmp_path):
    video, seed, status, settings, files = client.predict(
        "ti2v-5B", "a red circle", None, None, "64*64", 5, STEPS, 5.0, 5.0, 5.0, "unipc", 12345, "", 0.0,
        api_name="/generate")
    assert seed == 12345 and probe_video(video)[0] == 5 and "Run folder" in status
    config = tmp_path / "generate.yaml"
    config.write_text(settings)
    assert read_config(str(config), generate_script.OPTIONS)["seed"] == 12345  # a valid --config of generate.py
    result = run_script("generate.py", "--config", str(config), "--save_file", str(tmp_path / "cli.mp4"))
    assert result.returncode == 0, result.stderr
    assert_same_video(video, tmp_path / "cli.mp4")
    assert {os.path.basename(path) for path in files} == {"video.mp4", "video.settings.yaml", "report.html"}


def test_edit_settings_repeat_the_edit_with_the_script(client, tmp_path):
    frame0 = client.predict(handle_file(KITTEN), api_name="/export_frame")
    assert np.array_equal(np.asarray(read_png(frame0)), read_video(KITTEN, max_frames=1)[0][0].numpy())
    arguments = [handle_file(KITTEN), handle_file(KITTEN_FRAME), "a kitten turning its head",
                 "a dog turning its head", 5, 64 * 64, "fixed_point", 3, 1.0, 1.0, STEPS, "euler", 5.0, 5.0, "", True]
    video, comparison, status, settings, files = client.predict(*arguments, api_name="/edit")
    assert probe_video(comparison)[2] == 3 * probe_video(video)[2]
    config = tmp_path / "edit.yaml"
    config.write_text(settings)
    read_config(str(config), edit_script.OPTIONS)
    result = run_script("ti2v_inversion_edit.py", "--config", str(config), "--output", str(tmp_path / "cli.mp4"))
    assert result.returncode == 0, result.stderr
    assert_same_video(video, tmp_path / "cli.mp4")
    # the same edit again starts from the cached inversion and gives the same video
    again, _, status, _, _ = client.predict(*arguments, api_name="/edit")
    assert "reused the cached inversion" in status
    assert_same_video(video, again)


def read_png(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def toy_clip(client, studio):
    """A toy-world clip rendered by the /toy_clip endpoint."""
    clip = client.predict(studio.toy_clips()[0], api_name="/toy_clip")
    assert probe_video(clip)[0] == 17
    return clip


def test_continue_streams_captions_as_they_come(client, served, tmp_path):
    clip = toy_clip(client, served[0])
    job = client.submit(handle_file(clip), "v2v-5B", CAPTIONER_PROCEDURAL, "", 2, "64*64", 5, STEPS, "unipc", 5.0,
                        5.0, 5.0, 7, "", api_name="/continue")
    rows, latest, stitched, status, seed, settings, files = job.result(timeout=120)
    assert seed == 7 and [row[:2] for row in rows["data"]] == [[1, 7], [2, 8]]
    assert probe_video(stitched)[0] == 5 + 4  # the second continuation repeats the first's last frame
    states = [[row[3] for row in output[0]["data"]] for output in job.outputs()]
    assert ["generating"] in states  # video 1's caption was on the page before video 1 was done
    assert states[-1] == ["done", "done"]
    config = tmp_path / "chain.yaml"
    config.write_text(settings)
    assert read_config(str(config), continuous_script.OPTIONS)["num_videos"] == 2


def test_continue_with_the_vlm_captioner_and_without_one(client, served):
    clip = toy_clip(client, served[0])
    rows = client.predict(handle_file(clip), "v2v-5B", CAPTIONER_VLM, "continue video", 1, "64*64", 5, STEPS,
                          "unipc", 5.0, 5.0, 5.0, 3, "", api_name="/continue")[0]["data"]
    assert rows[0][2].startswith("continue video") and rows[0][3] == "done"
    rows = client.predict(handle_file(clip), "v2v-5B", CAPTIONER_NONE, "a red circle", 1, "64*64", 5, STEPS,
                          "unipc", 5.0, 5.0, 5.0, 3, "", api_name="/continue")[0]["data"]
    assert rows[0][2] == "a red circle"


def test_extend_prompt_is_the_local_models_answer(client, models):
    extended = client.predict("a cat", "en", None, 5, api_name="/extend_prompt")
    assert extended == PromptExtender(models["extender"])("a cat", "en", seed=5)
    assert extended != "a cat"


def test_toy_edit_scene_renders_a_case(client, served):
    video, frame, source, target = client.predict(served[0].toy_edit_scenes()[1], api_name="/toy_edit_scene")
    assert probe_video(video)[0] == 17 and probe_video(video)[2:] == (256, 256)
    assert read_png(frame).size == (256, 256) and source != target


def test_qwen_endpoint(client):
    arguments = [handle_file(KITTEN), None, "make it a watercolour", " ", "64*64", 4, 1, STEPS, 1.0, 0, 1.0, 0.5,
                 0.25, 0.03, 2, 1, "56*56", "64*64"]
    video, status, frames, plot, command, files = client.predict(*arguments, api_name="/qwen_ttlg")
    assert probe_video(video)[0] == 1 and len(frames) == 1 and "<svg" in plot
    assert "--ttlg_gram_scale 0.5" in command and any(path.endswith("report.html") for path in files)
    with pytest.raises(Exception, match=re.escape("Steps must be in [1, 1000], got 0")):
        client.predict(*arguments[:7], 0, *arguments[8:], api_name="/qwen_ttlg")
    with pytest.raises(Exception, match=re.escape("Size (W*H) must look like WIDTH*HEIGHT")):
        client.predict(*arguments[:4], "large", *arguments[5:], api_name="/qwen_ttlg")


@pytest.mark.parametrize("change, message", [
    ({"size": "70*70"}, "Size 70*70: width and height must be positive multiples of 32"),
    ({"frames": 8}, "Frames must be 4n+1 (1, 5, 9, ..., 81, 121), got 8"),
    ({"steps": 0}, "Steps must be in [1, 1000], got 0"),
    ({"shift": -1}, "Shift must be in (0, 100], got -1"),
    ({"seed": -5}, "Seed must be in [-1, "),
    ({"task": "v2v-5B"}, "Task v2v-5B does not belong in the Generate tab"),
    ({"solver": "rk4"}, "Solver must be one of unipc, dpm++, euler, got 'rk4'"),
    ({"prompt": " "}, "Prompt is empty: describe the video to generate"),
])
def test_api_errors_name_the_page_fields(client, change, message):
    values = {"task": "ti2v-5B", "prompt": "a red circle", "image": None, "last_image": None, "size": "64*64",
              "frames": 5, "steps": STEPS, "shift": 5.0, "guide": 5.0, "guide_high": 5.0, "solver": "unipc",
              "seed": -1, "n_prompt": "", "step_cache": 0.0}
    with pytest.raises(Exception) as error:
        client.predict(*{**values, **change}.values(), api_name="/generate")
    assert str(error.value).startswith(message), str(error.value)


def test_bad_uploads_through_the_api(client, tmp_path):
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"not a video")
    arguments = [handle_file(str(garbage)), None, "a", "b", 5, 64 * 64, "euler", 2, 1.0, 1.0, STEPS, "euler", 5.0,
                 5.0, "", True]
    with pytest.raises(Exception, match=r"^cannot read video Source video \(clip.mp4\)"):
        client.predict(*arguments, api_name="/edit")
    with pytest.raises(Exception, match="^Frames must be"):
        client.predict(*arguments[:4], 6, *arguments[5:], api_name="/edit")
    clip = handle_file(KITTEN)
    with pytest.raises(Exception, match="^Prompt prefix is required without a captioner"):
        client.predict(clip, "v2v-5B", CAPTIONER_NONE, "", 1, "64*64", 5, STEPS, "unipc", 5.0, 5.0, 5.0, 3, "",
                       api_name="/continue")


# ---------------------------------------------------------------------------- the engine
def test_cancel_from_another_thread(served):
    """Studio.cancel stops a job at its next DiT pass; the models are free for the next job."""
    import threading

    studio = served[0]
    outcome = {}

    def long_generation():
        try:
            studio.generate("ti2v-5B", "a red circle", size="128*128", frame_num=17, seed=1,
                            sampling={"steps": 1000}, session="long")
        except RunCancelled as err:
            outcome["error"] = err

    worker = threading.Thread(target=long_generation)
    worker.start()
    while not studio.busy:
        time.sleep(0.01)
    assert not studio.cancel("another session")
    assert studio.cancel("long")
    worker.join(timeout=30)
    assert not worker.is_alive() and isinstance(outcome.get("error"), RunCancelled)
    assert studio.generate("ti2v-5B", "a red circle", size="64*64", frame_num=5, sampling={"steps": STEPS}).video


def test_checkpoint_choice(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(checkpoints, "TOYWORLD_CHECKPOINT", str(tmp_path / "missing"))
    fallback = checkpoints.resolve_checkpoint(None, str(tmp_path / "cache"))
    assert fallback.kind == "tiny" and "random weights" in fallback.note
    assert fallback.tasks == ("ti2v-5B", "v2v-5B") and fallback.profile("ti2v-5B").size == "64*64"
    assert checkpoints.resolve_checkpoint(None, str(tmp_path / "cache")).path == fallback.path  # built once

    toy = tmp_path / "toy"  # an export of the toy-world trainer: a TI2V-5B layout and its provenance
    shutil.copytree(tiny_checkpoint("ti2v-5B"), toy)
    (toy / "provenance.json").write_text('{"spec_version": "toyworld-v1"}')
    monkeypatch.setattr(checkpoints, "TOYWORLD_CHECKPOINT", str(toy))
    chosen = checkpoints.resolve_checkpoint(None)
    assert chosen.kind == "toyworld" and chosen.profile("ti2v-5B").size == "256*256"
    assert chosen.profile("ti2v-5B").edit.max_area == 256 * 256

    with pytest.raises(Exception, match="holds no checkpoint of a known task"):
        checkpoints.resolve_checkpoint(str(tmp_path / "cache"))


def test_toyworld_provenance_is_recognised(tmp_path):
    (tmp_path / "provenance.json").write_text('{"spec_version": "toyworld-v1"}')
    assert checkpoints.is_toyworld(str(tmp_path))
    (tmp_path / "provenance.json").write_text('{"spec_version": "other"}')
    assert not checkpoints.is_toyworld(str(tmp_path))


def test_command_line_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        run_cli(ui_main.main, ui_main.OPTIONS, ["--port", "0"])
    assert exit_status.value.code == 2 and capsys.readouterr().err == "error: --port must be in [1, 65535], got 0\n"
    result = run_script("-m", "wan.ui", "--ckpt_dir", str(tmp_path / "nowhere"), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: checkpoint directory not found: {tmp_path / 'nowhere'}"


def test_settings_files_load_back(served):
    """The settings a generation writes are a configs/ file: yaml of the script's option paths."""
    studio = served[0]
    result = studio.generate("ti2v-5B", "a red circle", size="64*64", frame_num=5, seed=9, sampling={"steps": STEPS},
                             step_cache=0.1)
    settings = yaml.safe_load(result.settings)
    assert settings["load"]["step_cache"] == 0.1 and settings["seed"] == 9
    assert "Step cache: skipped" in result.message
