"""The web page: Gradio Blocks over a wan.ui.studio.Studio, served on the local machine only.

Tabs: Generate (text / image to video), Edit (inversion editing with an edited first frame),
Continue (a chain of continuations, each prompted by a caption of the clip before it) and, with a
Qwen-Image-Edit model, Qwen TTLG (frame-by-frame stylisation). Every job runs on the studio's warm
models, one at a time (one queue for all of them); progress comes from the pipelines' own tqdm
bars; Cancel stops a job at its next network pass. A bad input is a one-line message in the page
(the library's message, with its setting names replaced by this page's labels), never a traceback.

Nothing here reaches the network: Gradio's analytics are off, its fonts and scripts are served
from the package, and no theme or file is fetched.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no version check
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import contextlib  # noqa: E402
import logging  # noqa: E402

import gradio as gr  # noqa: E402

from ..cli import describe  # noqa: E402
from ..errors import WanError  # noqa: E402
from ..settings import INVERSION_SCHEMES, SOLVERS, size as parse_size  # noqa: E402
from ..tasks import defaults, get_task  # noqa: E402
from .checkpoints import EDIT_TASK  # noqa: E402
from .studio import CAPTIONER_PROCEDURAL, RunCancelled  # noqa: E402

log = logging.getLogger(__name__)

# Setting names (as the library's messages give them) -> the labels of this page.
SAMPLING_LABELS = {"sampling.solver": "Solver", "sampling.steps": "Steps", "sampling.shift": "Shift",
                   "sampling.guide_scale": "Guidance scale", "step_cache": "Step cache threshold"}
GENERATE_LABELS = {"task": "Task", "prompt": "Prompt", "n_prompt": "Negative prompt", "image": "First frame",
                   "last_image": "Last frame", "size": "Size", "frame_num": "Frames", "seed": "Seed",
                   "max_area": "Size", **SAMPLING_LABELS}
EDIT_LABELS = {"video": "Source video", "source_prompt": "Source prompt", "target_prompt": "Target prompt",
               "target_image": "Edited first frame", "frame_num": "Frames", "max_area": "Max area",
               "n_prompt": "Negative prompt", "inversion.scheme": "Inversion scheme",
               "inversion.steps": "Inversion steps", "inversion.strength": "Inversion strength",
               "inversion.guide_scale": "Inversion guidance", **SAMPLING_LABELS, "toy scene": "Toy scene"}
CONTINUE_LABELS = {**GENERATE_LABELS, "video": "Clip", "size": "Max area (W*H)", "num_videos": "Continuations",
                   "captioner": "Captioner", "prompt": "Prompt prefix", "toy clip": "Toy clip"}
QWEN_LABELS = {"video": "Clip", "size": "Size (W*H)", "condition_size": "Condition image size",
               "vae_size": "VAE image size", "stride": "Stride", "max_frames": "Max frames", "seed": "Seed",
               "num_inference_steps": "Steps", "true_cfg_scale": "True CFG scale", "edge_scale": "Edge",
               "gram_scale": "Gram (style)", "temporal_scale": "Temporal", "lr": "Step size",
               "last_steps": "Guide in the last K steps", "every": "every M-th"}
VIDEO_HEIGHT = 320
CSS = "#header {margin-bottom: 0} .status p {margin: 0.2em 0}"


class ImageFile(gr.Image):
    """gr.Image that hands over the uploaded file's path without opening it: the library reads it
    and names the field in its message when it is not an image (Gradio would fail first, with its own)."""

    is_template = True  # drawn by the frontend's Image component

    def preprocess(self, payload):
        if payload is None or payload.path is None:
            return super().preprocess(payload)  # pasted or webcam images arrive as data, not files
        return str(payload.path)


# Inputs that hand their value over as sent: the library checks it, and its message names the field
# (Gradio's own range and choice checks would fail first, without the field's name).
class Slider(gr.Slider):
    is_template = True  # drawn by the frontend's component of the same kind

    def preprocess(self, payload):
        return payload


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return payload


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return payload


@contextlib.contextmanager
def page_errors(labels, files=None):
    """Show what went wrong as one line in the page: WanError with the page's labels for setting
    names and an upload's label for its temporary path; anything else as an internal error (its
    traceback goes to the server log). The server keeps serving either way."""
    try:
        yield
    except gr.Error:
        raise
    except RunCancelled:
        raise gr.Error("The run was cancelled.", title="Cancelled", print_exception=False) from None
    except WanError as err:
        message = describe(err, labels)
        for label, path in (files or {}).items():
            if path:
                message = message.replace(str(path), f"{label} ({os.path.basename(path)})")
        raise gr.Error(message, print_exception=False) from None
    except Exception as exc:
        log.exception("a UI job failed")
        reason = " ".join(str(exc).split())[:300]
        raise gr.Error(f"Internal error ({type(exc).__name__}: {reason}); the server log has the details.",
                       print_exception=False) from None


def status_of(result):
    return f"{result.message}\n\nRun folder: `{result.folder}`"


def sampling(solver, steps, shift, guide, guide_high=None):
    """The Sampling settings of the form; a (low-noise, high-noise) guidance pair for two experts."""
    return {"solver": solver, "steps": steps, "shift": shift,
            "guide_scale": guide if guide_high is None else [guide, guide_high]}


def optional_size(name, text):
    return parse_size(name, text) if text and str(text).strip() else None


def build_app(studio):
    """The gr.Blocks of the page for `studio` (started); call .queue() and .launch() on it (see `launch`)."""
    checkpoint = studio.checkpoint
    with gr.Blocks(title="Wan studio", analytics_enabled=False) as demo:
        gr.Markdown(header(studio), elem_id="header")
        with gr.Tabs():
            generate_tab = _generate_tab(studio)
            edit_tab = _edit_tab(studio) if checkpoint.edits else None
            continue_tab = _continue_tab(studio) if studio.tasks_for(video=True) else None
            if studio.qwen_model:
                _qwen_tab(studio)
        _link_tabs(generate_tab, edit_tab, continue_tab)
    return demo


def header(studio):
    options = {key: value for key, value in studio.load_settings().items() if key != "offload_model"}
    loaded = f" with {', '.join(f'`{key}: {value}`' for key, value in options.items())}" if options else ""
    return (f"# Wan studio\n{studio.checkpoint.note}\n\nModels loaded once in {studio.load_seconds:.1f} s on "
            f"`{studio.device}`{loaded} and kept warm; jobs run one at a time, in order. Every run writes a folder "
            f"under `{studio.out_dir}` with its video, a settings file for the scripts' `--config` and an HTML "
            "report.")


def launch(studio, host="127.0.0.1", port=7860, block=True, quiet=False):
    """Serve the page (on the loopback interface unless `host` says otherwise). block=False returns
    at once; either way the served gr.Blocks is returned (its .local_url, .close())."""
    demo = build_app(studio).queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, show_error=True,
                allowed_paths=[studio.out_dir], theme=gr.themes.Soft(), css=CSS, run_history=False)
    return demo


def _session(request):
    return request.session_hash if request is not None else None


def _outputs_column(prefix, video_label):
    """The right-hand column shared by the tabs: video, status line, settings file, files."""
    video = gr.Video(label=video_label, elem_id=f"{prefix}_video", interactive=False, autoplay=True, loop=True,
                     height=VIDEO_HEIGHT)
    status = gr.Markdown(elem_id=f"{prefix}_status", elem_classes=["status"])
    return video, status


def _settings_panel(prefix, label):
    return gr.Code(language="yaml", label=label, elem_id=f"{prefix}_settings", interactive=False, lines=8)


def _files(prefix):
    return gr.File(label="Run files (video, settings, HTML report)", file_count="multiple", elem_id=f"{prefix}_files",
                   interactive=False)


def _wire_cancel(studio, button, event):
    def cancel(request: gr.Request):
        studio.cancel(_session(request))  # a run not started yet is taken off the queue by Gradio
        gr.Info("Cancelled: a running job stops at its next step.")

    button.click(cancel, None, None, cancels=[event], api_visibility="private")  # queued: its message shows


# ---------------------------------------------------------------------------- Generate
def _generate_tab(studio):
    tasks = studio.tasks_for(video=False)
    first = tasks[0]
    profile, official = studio.checkpoint.profile(first), defaults(first)
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=1):
                task = Dropdown(tasks, value=first, label="Task", elem_id="gen_task")
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="gen_prompt",
                                    placeholder="What the video shows: subject, motion, scene, light, camera")
                if studio.prompt_extend_model:
                    with gr.Row():
                        extend = gr.Button("Extend prompt", elem_id="gen_extend", size="sm")
                        language = Radio(["en", "zh"], value="en", label="Extended prompt language",
                                         elem_id="gen_extend_language")
                with gr.Row():
                    image = ImageFile(label="First frame", type="filepath", elem_id="gen_image",
                                      visible=_takes(first, "image"))
                    last_image = ImageFile(label="Last frame", type="filepath", elem_id="gen_last_image",
                                           visible=_takes(first, "last_image"))
                with gr.Row():
                    size = Dropdown(list(profile.sizes), value=profile.size, label="Size", allow_custom_value=True,
                                    elem_id="gen_size", info="WIDTH*HEIGHT (image tasks: the maximum area)")
                    frames = gr.Number(profile.frame_num, precision=0, label="Frames", elem_id="gen_frames",
                                       info="4n+1")
                with gr.Accordion("Sampling", open=True):
                    steps, solver, shift, guide, guide_high = _sampling_controls("gen", profile, official)
                    with gr.Row():
                        seed = gr.Number(-1, precision=0, label="Seed", elem_id="gen_seed", info="-1: random")
                        step_cache = Slider(0, 0.5, studio.load.step_cache, step=0.01, elem_id="gen_step_cache",
                                            label="Step cache threshold",
                                            info="speed option, inexact: skip DiT blocks on steps that change "
                                                 "little (0: off)")
                    n_prompt = gr.Textbox(label="Negative prompt", elem_id="gen_n_prompt",
                                          placeholder="empty: the model's default negative prompt")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="gen_run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="gen_cancel")
                gr.Examples(_example_prompts(studio), [prompt], label="Example prompts")
            with gr.Column(scale=1):
                video, status = _outputs_column("gen", "Generated video")
                with gr.Row():
                    seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="gen_seed_used")
                    reuse_seed = gr.Button("Use this seed", elem_id="gen_reuse_seed", size="sm")
                with gr.Row():
                    to_edit = gr.Button("Edit this video", elem_id="gen_to_edit", size="sm",
                                        visible=studio.checkpoint.edits)
                    to_continue = gr.Button("Continue this video", elem_id="gen_to_continue", size="sm",
                                            visible=bool(studio.tasks_for(video=True)))
                settings = _settings_panel("gen", "Settings: save as configs/NAME.yaml, run with "
                                                  "python generate.py --config configs/NAME.yaml")
                files = _files("gen")

    def on_task(name):
        chosen, values = studio.checkpoint.profile(name), defaults(name)
        low, high = _guides(values)
        return (gr.update(visible=_takes(name, "image")), gr.update(visible=_takes(name, "last_image")),
                gr.update(choices=list(chosen.sizes), value=chosen.size), chosen.frame_num, chosen.steps,
                values["sampling"]["shift"], low, gr.update(visible=high is not None, value=high or low))

    task.change(on_task, task, [image, last_image, size, frames, steps, shift, guide, guide_high],
                api_visibility="private")

    def generate(task_name, prompt_text, first_frame, last_frame, size_text, frame_num, steps_value, shift_value,
                 guide_value, guide_high_value, solver_name, seed_value, negative, cache_threshold,
                 request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        with page_errors(GENERATE_LABELS, {"First frame": first_frame, "Last frame": last_frame}):
            two_experts = _guides(defaults(task_name))[1] is not None
            given = {"image": first_frame, "last_image": last_frame}  # a hidden field may still hold a file
            result = studio.generate(
                task_name, prompt_text, {name: path for name, path in given.items() if _takes(task_name, name)},
                size_text, frame_num,
                seed_value, sampling(solver_name, steps_value, shift_value, guide_value,
                                     guide_high_value if two_experts else None),
                negative, cache_threshold, studio.checkpoint.profile(task_name).fps, _session(request))
        return result.video, result.seed, status_of(result), result.settings, result.files

    event = run.click(generate, [task, prompt, image, last_image, size, frames, steps, shift, guide, guide_high,
                                 solver, seed, n_prompt, step_cache],
                      [video, seed_used, status, settings, files], api_name="generate", concurrency_id="gpu")
    _wire_cancel(studio, cancel, event)
    reuse_seed.click(lambda value: value, seed_used, seed, api_visibility="private", queue=False)
    if studio.prompt_extend_model:
        def extend_prompt(prompt_text, language_name, first_frame, seed_value, request: gr.Request):
            with page_errors(GENERATE_LABELS, {"First frame": first_frame}):
                return studio.extend_prompt(prompt_text, language_name, first_frame, seed_value, _session(request))

        extend.click(extend_prompt, [prompt, language, image, seed], prompt, api_name="extend_prompt",
                     concurrency_id="gpu")
    return {"video": video, "to_edit": to_edit, "to_continue": to_continue}


def _sampling_controls(tab, profile, official):
    """Steps, solver, shift, guidance and the high-noise expert's guidance (shown for A14B), with
    element ids `TAB_steps`, ...: (steps, solver, shift, guide, guide_high)."""
    guide_low, guide_high = _guides(official)
    with gr.Row():
        steps = Slider(1, 200, profile.steps, step=1, label="Steps", elem_id=f"{tab}_steps")
        solver = Dropdown(list(SOLVERS), value="unipc", label="Solver", elem_id=f"{tab}_solver")
    with gr.Row():
        shift = Slider(0.5, 20, official["sampling"]["shift"], step=0.5, label="Shift", elem_id=f"{tab}_shift")
        guide = Slider(0, 20, guide_low, step=0.5, label="Guidance scale", elem_id=f"{tab}_guide")
        guide_high_slider = Slider(0, 20, guide_high or guide_low, step=0.5, label="Guidance scale (high-noise expert)",
                                   elem_id=f"{tab}_guide_high", visible=guide_high is not None)
    return steps, solver, shift, guide, guide_high_slider


def _guides(task_defaults):
    """(guidance, high-noise guidance or None) of a task's defaults."""
    guide = task_defaults["sampling"]["guide_scale"]
    return (guide[0], guide[1]) if isinstance(guide, list) else (guide, None)


def _takes(task, name):
    return any(item.rstrip("?") == name for item in get_task(task).inputs)


def _example_prompts(studio):
    if studio.checkpoint.kind in ("toyworld", "tiny"):
        return [["a red circle moving quickly right on a black background."],
                ["a yellow triangle moving slowly up-left and a blue square standing still on a white to green "
                 "gradient background."]]
    return [["A red fox trots through fresh snow in a quiet pine forest at sunrise, its breath steaming in the "
             "cold air."], ["Two surfers ride a turquoise wave at golden hour, slow tracking shot from the water."]]


# ---------------------------------------------------------------------------- Edit
def _edit_tab(studio):
    settings_now = studio.checkpoint.profile(EDIT_TASK).edit
    gen, inv = settings_now.sampling, settings_now.inversion
    with gr.Tab("Edit", id="edit"):
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    scenes = studio.toy_edit_scenes()
                    scene = Dropdown(scenes, value=scenes[0], elem_id="edit_toy_scene", scale=3,
                                     label="Toy scene (renders a source clip, its edited first frame and both "
                                           "prompts)")
                    load_scene = gr.Button("Load toy scene", elem_id="edit_toy_load", scale=1)
                source = gr.Video(label="Source video", sources=["upload"], elem_id="edit_source")
                with gr.Row():
                    export = gr.Button("Export frame 0 (to edit it elsewhere)", elem_id="edit_export", size="sm")
                    frame0 = gr.File(label="Frame 0", elem_id="edit_frame0", interactive=False)
                target_image = ImageFile(label="Edited first frame (empty: the source's own)", type="filepath",
                                         elem_id="edit_image")
                source_prompt = gr.Textbox(label="Source prompt", lines=2, elem_id="edit_source_prompt",
                                           placeholder="What the source video shows")
                target_prompt = gr.Textbox(label="Target prompt", lines=2, elem_id="edit_target_prompt",
                                           placeholder="What the edited video shows")
                with gr.Row():
                    frames = gr.Number(settings_now.frame_num, precision=0, label="Frames", info="4n+1",
                                       elem_id="edit_frames")
                    max_area = gr.Number(settings_now.max_area, precision=0, label="Max area",
                                         info="pixels; the source's aspect ratio is kept", elem_id="edit_max_area")
                with gr.Accordion("Inversion", open=True):
                    with gr.Row():
                        scheme = Dropdown(list(INVERSION_SCHEMES), value=inv.scheme, label="Inversion scheme",
                                          elem_id="edit_scheme")
                        inv_steps = Slider(1, 200, inv.steps, step=1, label="Inversion steps",
                                           elem_id="edit_inv_steps")
                    with gr.Row():
                        strength = Slider(0.05, 1, inv.strength, step=0.05, label="Inversion strength",
                                          info="< 1 keeps more of the source", elem_id="edit_strength")
                        inv_guide = Slider(0, 20, inv.guide_scale, step=0.5, label="Inversion guidance",
                                           elem_id="edit_inv_guide")
                    reuse = gr.Checkbox(True, label="Reuse a cached inversion of this clip and these settings",
                                        elem_id="edit_reuse")
                with gr.Accordion("Regeneration", open=True):
                    with gr.Row():
                        steps = Slider(1, 200, gen.steps, step=1, label="Steps", elem_id="edit_steps")
                        solver = Dropdown(list(SOLVERS), value=gen.solver, label="Solver", elem_id="edit_solver")
                    with gr.Row():
                        shift = Slider(0.5, 20, gen.shift, step=0.5, label="Shift", elem_id="edit_shift")
                        guide = Slider(0, 20, gen.guide_scale, step=0.5, label="Guidance scale",
                                       elem_id="edit_guide")
                    n_prompt = gr.Textbox(label="Negative prompt", elem_id="edit_n_prompt",
                                          placeholder="empty: the model's default negative prompt")
                with gr.Row():
                    run = gr.Button("Edit", variant="primary", elem_id="edit_run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="edit_cancel")
            with gr.Column(scale=1):
                video, status = _outputs_column("edit", "Edited video")
                comparison = gr.Video(label="Side by side: source | edited first frame | edit", interactive=False,
                                      autoplay=True, loop=True, elem_id="edit_comparison", height=VIDEO_HEIGHT)
                to_continue = gr.Button("Continue this video", elem_id="edit_to_continue", size="sm",
                                        visible=bool(studio.tasks_for(video=True)))
                settings = _settings_panel("edit", "Settings: save as configs/NAME.yaml, run with "
                                                   "python ti2v_inversion_edit.py --config configs/NAME.yaml --output "
                                                   "OUT.mp4")
                files = _files("edit")

    def toy_scene(label):
        with page_errors(EDIT_LABELS):
            return studio.toy_edit_scene(label)

    load_scene.click(toy_scene, scene, [source, target_image, source_prompt, target_prompt],
                     api_name="toy_edit_scene")

    def first_frame(video_path):
        with page_errors(EDIT_LABELS, {"Source video": video_path}):
            return studio.first_frame(video_path)

    export.click(first_frame, source, frame0, api_name="export_frame")

    def edit(video_path, image_path, source_text, target_text, frame_num, area, scheme_name, inversion_steps,
             inversion_strength, inversion_guide, steps_value, solver_name, shift_value, guide_value, negative,
             reuse_cached, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        settings_given = {"frame_num": frame_num, "max_area": area, "n_prompt": negative or "",
                          "sampling": sampling(solver_name, steps_value, shift_value, guide_value),
                          "inversion": {"scheme": scheme_name, "steps": inversion_steps,
                                        "strength": inversion_strength, "guide_scale": inversion_guide}}
        with page_errors(EDIT_LABELS, {"Source video": video_path, "Edited first frame": image_path}):
            result = studio.edit(video_path, source_text, target_text, image_path, settings_given, reuse_cached,
                                 _session(request))
        return result.video, result.comparison, status_of(result), result.settings, result.files

    event = run.click(edit, [source, target_image, source_prompt, target_prompt, frames, max_area, scheme, inv_steps,
                             strength, inv_guide, steps, solver, shift, guide, n_prompt, reuse],
                      [video, comparison, status, settings, files], api_name="edit", concurrency_id="gpu")
    _wire_cancel(studio, cancel, event)
    return {"video": video, "source": source, "to_continue": to_continue}


# ---------------------------------------------------------------------------- Continue
def _continue_tab(studio):
    tasks = studio.tasks_for(video=True)
    first = tasks[0]
    profile, official = studio.checkpoint.profile(first), defaults(first)
    toy = studio.checkpoint.kind in ("toyworld", "tiny")
    captioners = studio.captioners
    with gr.Tab("Continue", id="continue"):
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    toy_clip = Dropdown(studio.toy_clips(), value=studio.toy_clips()[0], elem_id="cont_toy_clip",
                                        label="Toy clip (renders a 17-frame toy-world clip)", scale=3)
                    load_clip = gr.Button("Load toy clip", elem_id="cont_toy_load", scale=1)
                clip = gr.Video(label="Clip", sources=["upload"], elem_id="cont_clip")
                with gr.Row():
                    task = Dropdown(tasks, value=first, label="Task", elem_id="cont_task")
                    count = gr.Number(2, precision=0, label="Continuations", elem_id="cont_count")
                captioner = Radio(captioners, value=CAPTIONER_PROCEDURAL if toy else captioners[-1],
                                  label="Captioner (writes each continuation's prompt from the clip before it)",
                                  elem_id="cont_captioner")
                prompt = gr.Textbox(label="Prompt prefix", elem_id="cont_prompt",
                                    placeholder="put before every caption; without a captioner, the whole prompt",
                                    value="" if toy else "continue video")
                with gr.Row():
                    size = Dropdown(list(profile.sizes), value=profile.size, label="Max area (W*H)",
                                    allow_custom_value=True, elem_id="cont_size")
                    frames = gr.Number(profile.frame_num, precision=0, label="Frames", info="4n+1 per continuation",
                                       elem_id="cont_frames")
                with gr.Accordion("Sampling", open=False):
                    steps, solver, shift, guide, guide_high = _sampling_controls("cont", profile, official)
                    seed = gr.Number(-1, precision=0, label="Seed", info="video i uses seed + i - 1; -1: random",
                                     elem_id="cont_seed")
                    n_prompt = gr.Textbox(label="Negative prompt", elem_id="cont_n_prompt",
                                          placeholder="empty: the model's default negative prompt")
                with gr.Row():
                    run = gr.Button("Continue", variant="primary", elem_id="cont_run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cont_cancel")
            with gr.Column(scale=1):
                captions = gr.Dataframe(headers=["video", "seed", "prompt", "state"], label="Continuations",
                                        elem_id="cont_captions", interactive=False, wrap=True,
                                        column_widths=["10%", "18%", "57%", "15%"])
                latest = gr.Video(label="Latest continuation", interactive=False, autoplay=True, loop=True,
                                  elem_id="cont_latest", height=VIDEO_HEIGHT)
                video, status = _outputs_column("cont", "Stitched video")
                seed_used = gr.Number(label="Seed used (video 1)", precision=0, interactive=False,
                                      elem_id="cont_seed_used")
                settings = _settings_panel("cont", "Settings: save as configs/NAME.yaml, run with python "
                                                   "generate_continuous.py --config configs/NAME.yaml (with a VLM "
                                                   "captioner: the procedural one is the UI's own)")
                files = _files("cont")

    def load_toy_clip(label):
        with page_errors(CONTINUE_LABELS):
            return studio.toy_clip(label)

    load_clip.click(load_toy_clip, toy_clip, clip, api_name="toy_clip")

    def continue_video(clip_path, task_name, captioner_name, prefix, num_videos, size_text, frame_num, steps_value,
                       solver_name, shift_value, guide_value, guide_high_value, seed_value, negative,
                       request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        with page_errors(CONTINUE_LABELS, {"Clip": clip_path}):
            two_experts = _guides(defaults(task_name))[1] is not None
            for update in studio.continue_video(
                    clip_path, task_name, captioner_name, prefix, num_videos, size_text, frame_num, seed_value,
                    sampling(solver_name, steps_value, shift_value, guide_value,
                             guide_high_value if two_experts else None), negative, _session(request)):
                result = update.result
                if result is None:
                    done = sum(row[3] == "done" for row in update.rows)
                    yield (update.rows, update.latest, gr.skip(), f"Working: {done} of {num_videos} done.",
                           gr.skip(), gr.skip(), gr.skip())
                else:
                    yield update.rows, update.latest, result.video, status_of(result), result.seed, result.settings, \
                        result.files

    event = run.click(continue_video, [clip, task, captioner, prompt, count, size, frames, steps, solver, shift, guide,
                                       guide_high, seed, n_prompt],
                      [captions, latest, video, status, seed_used, settings, files], api_name="continue",
                      concurrency_id="gpu")
    _wire_cancel(studio, cancel, event)
    return {"clip": clip}


# ---------------------------------------------------------------------------- Qwen TTLG
def _qwen_tab(studio):
    from ..qwen_edit import GuidanceSettings
    from ..qwen_edit.workflow import DEFAULT_PROMPT, EditJob

    job, guidance = EditJob(None, None, None), GuidanceSettings(edge_scale=1.0, gram_scale=0.5, temporal_scale=0.25,
                                                                every=2)
    with gr.Tab("Qwen TTLG", id="qwen"):
        gr.Markdown("Frame-by-frame stylisation with Qwen-Image-Edit-2509: each frame is drawn from the source "
                    "frame's edge map and the previous output, with test-time loss guidance toward the source's "
                    "structure (edge), the first output's style (Gram) and the previous frame (temporal).")
        with gr.Row():
            with gr.Column(scale=1):
                clip = gr.Video(label="Clip", sources=["upload"], elem_id="qwen_clip")
                init = ImageFile(label="Init frame: the style (empty: the clip's first frame)", type="filepath",
                                 elem_id="qwen_init")
                prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=4, elem_id="qwen_prompt")
                negative = gr.Textbox(job.negative_prompt, label="Negative prompt", elem_id="qwen_negative")
                with gr.Row():
                    size = gr.Textbox("512*512", label="Size (W*H)", elem_id="qwen_size")
                    stride = gr.Number(2, precision=0, label="Stride", info="every STRIDE-th frame",
                                       elem_id="qwen_stride")
                    max_frames = gr.Number(16, precision=0, label="Max frames", elem_id="qwen_max_frames")
                with gr.Row():
                    steps = Slider(1, 100, job.num_inference_steps, step=1, label="Steps", elem_id="qwen_steps")
                    cfg = Slider(0, 10, job.true_cfg_scale, step=0.5, label="True CFG scale", elem_id="qwen_cfg")
                    seed = gr.Number(job.seed, precision=0, label="Seed", elem_id="qwen_seed")
                with gr.Accordion("Test-time loss guidance", open=False):
                    with gr.Row():
                        edge = Slider(0, 5, guidance.edge_scale, step=0.05, label="Edge", elem_id="qwen_edge")
                        gram = Slider(0, 5, guidance.gram_scale, step=0.05, label="Gram (style)",
                                      elem_id="qwen_gram")
                        temporal = Slider(0, 5, guidance.temporal_scale, step=0.05, label="Temporal",
                                          elem_id="qwen_temporal")
                    with gr.Row():
                        lr = Slider(0, 0.2, guidance.lr, step=0.005, label="Step size", elem_id="qwen_lr")
                        last_steps = gr.Number(guidance.last_steps, precision=0, label="Guide in the last K steps",
                                               elem_id="qwen_last_steps")
                        every = gr.Number(guidance.every, precision=0, label="every M-th", elem_id="qwen_every")
                    with gr.Row():
                        condition_size = gr.Textbox("384*384", label="Condition image size", elem_id="qwen_cond")
                        vae_size = gr.Textbox("1024*1024", label="VAE image size", elem_id="qwen_vae_size")
                with gr.Row():
                    run = gr.Button("Stylise", variant="primary", elem_id="qwen_run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="qwen_cancel")
            with gr.Column(scale=1):
                video, status = _outputs_column("qwen", "Stylised video")
                gallery = gr.Gallery(label="Stylised frames", columns=6, elem_id="qwen_frames")
                plot = gr.HTML(elem_id="qwen_plot")
                command = gr.Code(language="shell", label="The same run with qwen_video_edit.py", interactive=False,
                                  wrap_lines=True, elem_id="qwen_command")
                files = _files("qwen")

    def stylise(clip_path, init_path, prompt_text, negative_text, size_text, stride_value, max_frame_count,
                steps_value, cfg_value, seed_value, edge_value, gram_value, temporal_value, lr_value, last_value,
                every_value, condition_text, vae_text, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        with page_errors(QWEN_LABELS, {"Clip": clip_path, "Init frame": init_path}):
            result = studio.qwen_video(
                clip_path, init_path,
                {"prompt": prompt_text, "negative_prompt": negative_text, "seed": seed_value,
                 "num_inference_steps": steps_value, "true_cfg_scale": cfg_value},
                {"edge_scale": edge_value, "gram_scale": gram_value, "temporal_scale": temporal_value,
                 "lr": lr_value, "last_steps": last_value, "every": every_value},
                optional_size("size", size_text), stride_value, max_frame_count or None, None,
                optional_size("condition_size", condition_text), optional_size("vae_size", vae_text),
                _session(request))
        return result.video, status_of(result), result.frames, result.plot, result.settings, result.files

    event = run.click(stylise, [clip, init, prompt, negative, size, stride, max_frames, steps, cfg, seed, edge, gram,
                                temporal, lr, last_steps, every, condition_size, vae_size],
                      [video, status, gallery, plot, command, files], api_name="qwen_ttlg", concurrency_id="gpu")
    _wire_cancel(studio, cancel, event)


def _link_tabs(generate_tab, edit_tab, continue_tab):
    """'Edit this video' / 'Continue this video': an output becomes another tab's input."""
    if edit_tab is not None:
        generate_tab["to_edit"].click(lambda path: path, generate_tab["video"], edit_tab["source"],
                                      api_visibility="private", queue=False)
    if continue_tab is not None:
        generate_tab["to_continue"].click(lambda path: path, generate_tab["video"], continue_tab["clip"],
                                          api_visibility="private", queue=False)
        if edit_tab is not None:
            edit_tab["to_continue"].click(lambda path: path, edit_tab["video"], continue_tab["clip"],
                                          api_visibility="private", queue=False)
