"""The web UI's engine, without any web code: warm models, one job at a time, per-run folders.

`Studio` loads the checkpoint's networks once (`wan.models.Models`) and runs every job through the
library: `wan.runner.generate` for generations, the pieces of `wan.tasks.edit` with `wan.runner.Runner`
for edits (so the inversion can be cached and a re-edit skips it), `wan.runner.run_chain` for
continuations, `wan.qwen_edit.workflow.process_video` for Qwen TTLG stylisation. Jobs take turns on
one lock; each runs on a shallow copy of the models whose placement hook (called before every DiT
pass) raises `RunCancelled` once its session asked to cancel. Every run writes its own folder with
its inputs, outputs, a settings file in the format of configs/ (the script's `--config`) and an
HTML report.

Bad input raises the library's errors (`WanInputError`, `SettingsError` naming the setting); the web
layer (wan.ui.app) shows them as one-line messages.
"""
import contextlib
import contextvars
import copy
import hashlib
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from ..configs import WAN_CONFIGS
from ..errors import WanError, WanInputError
from ..jobs import load as load_job
from ..jobs import save as save_job
from ..models import Models
from ..report import line_plot
from ..runner import Runner, run_chain
from ..runner import generate as run_generation
from ..settings import MAX_SEED, EditSettings, Generation, LoadOptions, SettingsError, choice, integer, number
from ..step_cache import enable_step_cache
from ..tasks import check_inputs, get_task, unsupported_size_warning
from ..tasks.common import check_on_grid, tokens
from ..tasks.continuation import finished_videos
from ..tasks.edit import (EditRequest, inversion_result, load_source, prepare_inversion, prepare_regeneration,
                          target_frame)
from ..toyworld import ProceduralCaptioner, make_continuation_cases, make_edit_cases
from ..utils.video_io import load_image, probe_video, read_video, write_video
from .checkpoints import EDIT_TASK
from .runs import RunFolder

log = logging.getLogger(__name__)

CAPTIONER_NONE = "none (the prompt as written)"
CAPTIONER_PROCEDURAL = "procedural (toy world)"
CAPTIONER_VLM = "vision-language model"
TOY_FPS = 16.0  # the toy world's nominal frame rate (docs/TOYWORLD.md)
TOY_SCENES = 8
# The settings each script reads from --config (its option paths), for the settings files.
GENERATE_KEYS = ("task", "size", "frame_num", "prompt", "n_prompt", "seed", "image", "video", "fps", "sampling")
CONTINUE_KEYS = ("task", "video", "size", "frame_num", "prompt", "n_prompt", "seed", "sampling")
UI_SEEDS = 2 ** 32  # random seeds stay below this: a browser's number field holds them exactly
SCRIPT_LOAD_KEYS = tuple(name for name in LoadOptions().to_dict() if not name.startswith("vlm_"))


KEEP = object()  # Studio.turn: the models' own captioner


class RunCancelled(WanError):
    """The run's session asked to stop it."""


@dataclass
class RunResult:
    """What a finished run shows: its folder, main video, settings file (and text), report, a status line."""

    folder: str
    video: str
    settings_file: str
    settings: str
    report: str
    message: str
    seed: int = None
    comparison: str = None
    frames: list = field(default_factory=list)  # stylised frames (Qwen TTLG)
    plot: str = None  # an inline SVG (Qwen TTLG losses)

    @property
    def files(self):
        return [path for path in (self.video, self.comparison, self.settings_file, self.report) if path]


@dataclass
class ChainUpdate:
    """The state of a continuation chain: rows [video index, seed, prompt, state], the newest video,
    and, at the end, the stitched video with the run's result."""

    rows: list
    latest: str = None
    result: RunResult = None


class CaptionRecorder:
    """A captioner that passes each caption on to `events` as ("caption", text) as it is written."""

    def __init__(self, captioner, events):
        self.captioner, self.events = captioner, events
        self.num_frames = captioner.num_frames

    def caption(self, frames):
        text = self.captioner.caption(frames)
        self.events.put(("caption", text))
        return text


class InversionCache:
    """Inversions on disk (wan.jobs "inversion" files), one per source clip and inversion-deciding
    settings: a re-edit of the same clip with another frame or target prompt starts from it."""

    def __init__(self, folder):
        self.folder = folder

    def path(self, source, source_prompt, settings, model):
        inversion = settings.inversion
        identity = {"source": source.identity() | {"video": None}, "inversion": inversion.to_dict(),
                    "shift": settings.sampling.shift, "source_prompt": source_prompt, "model": model,
                    # the negative prompt only enters a guided inversion
                    "n_prompt": settings.n_prompt if inversion.guide_scale != 1 else None}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        return os.path.join(self.folder, f"{key}.safetensors")

    def get(self, path, source, model):
        if not os.path.isfile(path):
            return None
        inversion = load_job(path, "inversion")
        inversion.check_matches(source, model)
        return inversion

    def put(self, path, inversion):
        save_job(path, "inversion", inversion)


class Studio:
    """The checkpoint's models, kept warm, and the jobs the UI runs on them (see the module docstring).

    checkpoint: a wan.ui.checkpoints.Checkpoint. load: LoadOptions (load.vlm_path: a captioner for
    the Continue tab). prompt_extend_model: a local model folder for prompt extension. qwen_model: a
    Qwen-Image-Edit-2509 folder for the TTLG tab."""

    def __init__(self, checkpoint, out_dir, load=None, prompt_extend_model=None, qwen_model=None, qwen_dtype="auto"):
        self.checkpoint = checkpoint
        self.out_dir = os.path.abspath(out_dir)
        self.load = load or LoadOptions(offload_model=False)
        self.prompt_extend_model, self.qwen_model, self.qwen_dtype = prompt_extend_model, qwen_model, qwen_dtype
        self.models = None
        self.load_seconds = None
        self.inversions = InversionCache(os.path.join(self.out_dir, "inversions"))
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._running_session = None
        self._extender = self._qwen = None

    # -- models and turns ---------------------------------------------------------------------
    def start(self):
        """Load the checkpoint's networks (text encoder, VAE, DiT; the captioner with load.vlm_path)."""
        start = time.perf_counter()
        config = WAN_CONFIGS[self.checkpoint.tasks[0]]
        parts = ("t5", "vae", "dit", "vlm") if self.load.vlm_path else ("t5", "vae", "dit")
        self.models = Models.load(config, self.checkpoint.path, self.load, parts)
        self.load_seconds = time.perf_counter() - start
        log.info("models of %s loaded in %.1f s on %s", self.checkpoint.path, self.load_seconds, self.models.device)
        return self

    @property
    def device(self):
        return self.models.device

    @property
    def captioners(self):
        names = [CAPTIONER_NONE, CAPTIONER_PROCEDURAL]
        return names + [CAPTIONER_VLM] if self.models.captioner is not None else names

    @contextlib.contextmanager
    def _exclusive(self, session):
        """The one-job-at-a-time lock, held for `session`'s job."""
        with self._lock:
            self._cancel.clear()
            self._running_session = session
            try:
                yield
            finally:
                self._running_session = None

    @contextlib.contextmanager
    def _new_run(self, kind):
        """A fresh run folder, removed again when the run does not finish (cancelled or failed)."""
        run = RunFolder(self.out_dir, kind, self.device)
        try:
            yield run
        except BaseException:
            shutil.rmtree(run.path, ignore_errors=True)
            raise

    def _stop_if_cancelled(self):
        if self._cancel.is_set():
            raise RunCancelled("cancelled")

    @contextlib.contextmanager
    def turn(self, session=None, task=None, captioner=KEEP, step_cache=None):
        """Wait for the models, then yield a view of them for one job: `task`'s configuration, the
        chosen captioner (None: none), the step cache threshold (None: the load option's), and a
        placement hook that stops the job when `session` cancels. view.step_caches: the caches in use."""
        with self._exclusive(session):
            view = copy.copy(self.models)
            if task is not None:
                view.config = WAN_CONFIGS[task]
            if captioner is not KEEP:
                view.captioner = captioner
            threshold = self.load.step_cache if step_cache is None else step_cache
            view.step_caches = [enable_step_cache(model, threshold) for model in self.models.experts]
            place = self.models.place

            def place_unless_cancelled(model):
                self._stop_if_cancelled()
                place(model)

            view.place = place_unless_cancelled
            yield view

    @property
    def busy(self):
        """A job holds the models."""
        return self._running_session is not None

    def cancel(self, session=None):
        """Stop the running job at its next DiT pass, if `session` started it (None: whichever runs)."""
        if self._running_session is not None and session in (None, self._running_session):
            self._cancel.set()
            return True
        return False

    def load_settings(self, step_cache=None, with_vlm=False):
        """The load options for a settings file: those that differ from the defaults."""
        load, plain = self.load.to_dict(), LoadOptions().to_dict()
        if step_cache is not None:
            load["step_cache"] = step_cache
        keys = SCRIPT_LOAD_KEYS + (("vlm_path",) if with_vlm else ())
        # offload_model always: the scripts' own defaults for it differ
        return {key: load[key] for key in keys if key == "offload_model" or load[key] != plain[key]}

    # -- generate ------------------------------------------------------------------------------
    def generate(self, task, prompt, images=None, size=None, frame_num=None, seed=-1, sampling=None, n_prompt="",
                 step_cache=None, fps=None, session=None):
        """One video of `task` (a text or image task of the checkpoint); the seed used is returned.
        step_cache: this run's threshold (None: the load option's).
        images: {"image": path} for the tasks that take a first frame (and "last_image" for those
        that take a last one)."""
        self._check_task(task, video=False)
        images = {name: path for name, path in (images or {}).items() if path}
        generation = Generation.from_dict({"task": task, "prompt": prompt or "", "n_prompt": n_prompt or "",
                                           **images, "size": size, "frame_num": frame_num, "seed": seed,
                                           "fps": fps or WAN_CONFIGS[task].sample_fps, "sampling": sampling or {}})
        step_cache = _step_cache(self.load.step_cache if step_cache is None else step_cache)
        check_inputs(generation)
        check_on_grid(WAN_CONFIGS[task], generation.size)
        for path in images.values():
            load_image(path)
        if not images and not generation.prompt.strip():
            raise SettingsError("prompt", "is empty: describe the video to generate")
        with self._new_run("generate") as run:
            generation = generation.replace(seed=resolve_seed(generation.seed),
                                            **{name: run.keep(path, name) for name, path in images.items()})
            settings = {"ckpt_dir": self.checkpoint.path,
                        **{key: value for key, value in generation.to_dict().items()
                           if key in GENERATE_KEYS and value is not None},
                        "load": self.load_settings(step_cache)}
            output = run.file("video.mp4")
            with self.turn(session, task, step_cache=step_cache) as models, run.timer.stage("generate"):
                run_generation(models, generation, output, resolved=settings)
            frames, fps, width, height = probe_video(output)
            notes = [f"Generated {width}x{height}, {frames} frames ({frames / fps:.2f} s at {fps:g} fps) in "
                     f"{run.timer.records['generate'].seconds:.1f} s with seed {generation.seed}."]
            notes += _step_cache_notes(models.step_caches)
            warning = unsupported_size_warning(generation, self.checkpoint.path) if self.checkpoint.kind == "model" \
                else None
            notes += [f"Note: {warning}; quality may suffer."] if warning else []
            inputs = [(getattr(generation, name), name.replace("_", " ")) for name in images]
            report = run.report(f"Wan UI: generate ({task})", [(output, "generated")], inputs,
                                {"prompt": generation.prompt, "negative prompt": generation.n_prompt or None}, settings,
                                " ".join(notes))
            settings_file = run.file("video.settings.yaml")
            return RunResult(str(run.path), output, settings_file, _read(settings_file), report, " ".join(notes),
                             seed=generation.seed)

    def extend_prompt(self, prompt, language="en", image=None, seed=0, session=None):
        """The prompt rewritten by the local prompt-extension model (it sees the image if it is a VL model)."""
        from ..modules.prompt_extend import make_prompt_extender

        if not self.prompt_extend_model:
            raise WanInputError("prompt extension needs a local model: start the UI with a prompt extension model")
        seed = integer("seed", -1 if seed is None else seed, low=-1, high=MAX_SEED)
        picture = load_image(image) if image else None
        with self.turn(session):
            if self._extender is None:  # loaded on first use, then kept
                self._extender = make_prompt_extender("local_qwen", self.prompt_extend_model, device=self.device)
            images = [picture] if picture is not None and self._extender.is_vl else None
            return self._extender(prompt or "", language, images, seed=max(seed, 0))

    # -- edit ----------------------------------------------------------------------------------
    def edit(self, video, source_prompt, target_prompt, target_image=None, settings=None, reuse_inversion=True,
             session=None):
        """Invert `video` (or reuse its cached inversion) and regenerate it with the edited first
        frame and the target prompt; writes the edit, the side-by-side comparison and the first frames."""
        if not self.checkpoint.edits:
            raise WanInputError(f"editing needs a TI2V-5B checkpoint; {self.checkpoint.path} runs "
                                f"{', '.join(self.checkpoint.tasks)}")
        request = EditRequest(video=video or None, source_prompt=source_prompt or None,
                              target_prompt=target_prompt or None, target_image=target_image or None)
        request.require("video", "source_prompt", "target_prompt")
        request.check_files()
        settings = EditSettings.from_dict(settings or {})
        probe_video(request.video)
        if request.target_image:
            load_image(request.target_image)
        with self._new_run("edit") as run:
            request = request.replace(video=run.keep(request.video, "source"), output=run.file("edited.mp4"),
                                      target_image=run.keep(request.target_image, "edited_first_frame"))
            timer = run.timer
            with self.turn(session, EDIT_TASK) as models:
                with timer.stage("load source"):
                    source = load_source(models.config, request.video, settings.frame_num, settings.max_area)
                inversion, reused, cache_path = self._inversion(models, source, request.source_prompt, settings,
                                                                reuse_inversion, timer)
                with timer.stage("regenerate"):
                    target = target_frame(request, source)
                    job = prepare_regeneration(models, models.encode_frames(target), request.target_prompt, settings,
                                               tokens(models, inversion.latent.shape))
                    job.latent = inversion.latent.to(models.device)
                    latent = Runner(models).denoise(job)
                with timer.stage("decode and write"):
                    Runner(models).write_edit(latent, request.output, settings.fps or source.fps, source.frames,
                                              target)
            config = {"ckpt_dir": self.checkpoint.path, **{k: v for k, v in request.to_dict().items()
                                                           if k != "output" and v is not None},
                      **_without_none(settings.replace(frame_num=source.frame_num).to_dict()), "comparison": True,
                      "load": self.load_settings()}
            settings_file = run.file("edited.settings.yaml")
            text = run.write_settings("edited.settings.yaml", config)
            inversion_note = (f"Inversion: reused the cached inversion of this clip and these settings (no "
                              f"{settings.inversion.scheme} steps run)." if reused else
                              f"Inversion: {settings.inversion.inverted_steps} {settings.inversion.scheme} steps in "
                              f"{timer.records['invert'].seconds:.1f} s, cached for re-edits.")
            total = sum(record.seconds for record in timer.records.values())
            message = (f"Edited {source.size[0]}x{source.size[1]}, {source.frame_num} frames in {total:.1f} s. "
                       f"{inversion_note}")
            comparison = f"{os.path.splitext(request.output)[0]}_comparison.mp4"
            images = [(f"{os.path.splitext(request.output)[0]}_{name}_first_frame.png", f"{name} first frame")
                      for name in ("source", "target", "edited")]
            report = run.report("Wan UI: edit",
                                [(request.output, "edited"), (comparison, "source | target frame | edit")], images,
                                {"source prompt": request.source_prompt, "target prompt": request.target_prompt},
                                config, f"{message} Inversion file: {cache_path}")
            return RunResult(str(run.path), request.output, settings_file, text, report, message,
                             comparison=comparison)

    def _inversion(self, models, source, source_prompt, settings, reuse, timer):
        """(Inversion, reused, cache file): the cached inversion of `source` under these settings, or
        a fresh one (then cached)."""
        cache_path = self.inversions.path(source, source_prompt, settings, models.fingerprint)
        inversion = self.inversions.get(cache_path, source, models.fingerprint) if reuse else None
        if inversion is not None:
            return inversion, True, cache_path
        with timer.stage("invert"):
            job = prepare_inversion(models, source, source_prompt, settings)
            inversion = inversion_result(job, source, source_prompt, Runner(models).invert(job), models.fingerprint)
        self.inversions.put(cache_path, inversion)
        return inversion, False, cache_path

    # -- continue ------------------------------------------------------------------------------
    def continue_video(self, video, task, captioner=CAPTIONER_PROCEDURAL, prompt="", num_videos=2, size=None,
                       frame_num=None, seed=-1, sampling=None, n_prompt="", session=None):
        """Continue `video` `num_videos` times (each continuation from the last frame of the one
        before, prompted by the captioner's caption after `prompt`); a generator of ChainUpdate, one
        as each caption and each video is ready, the last with the stitched video."""
        self._check_task(task, video=True)
        choice("captioner", captioner, tuple(self.captioners))
        num_videos = integer("num_videos", num_videos, low=1, high=100)
        generation = Generation.from_dict({"task": task, "prompt": prompt or "", "n_prompt": n_prompt or "",
                                           "video": video or None, "size": size, "frame_num": frame_num,
                                           "seed": seed, "sampling": sampling or {}})
        check_inputs(generation)
        frames = probe_video(generation.video)[0]
        captioning = {CAPTIONER_NONE: None, CAPTIONER_PROCEDURAL: ProceduralCaptioner(),
                      CAPTIONER_VLM: self.models.captioner}[captioner]
        if captioning is None and not generation.prompt.strip():
            raise SettingsError("prompt", "is required without a captioner (it is the whole prompt)")
        if captioning is not None and frames < captioning.num_frames:
            raise SettingsError("video", f"has {frames} frames; the captioner needs at least {captioning.num_frames}")
        with self._new_run("continue") as run:
            generation = generation.replace(seed=resolve_seed(generation.seed),
                                            video=run.keep(generation.video, "input"))
            settings = {"ckpt_dir": self.checkpoint.path, "num_videos": num_videos,
                        **{key: value for key, value in generation.to_dict().items()
                           if key in CONTINUE_KEYS and value is not None},
                        "load": self.load_settings(with_vlm=captioner == CAPTIONER_VLM)}
            for rows, finished in self._chain(run, generation, num_videos, captioning, settings, session):
                if finished is None:
                    yield ChainUpdate(rows, _latest_video(run.path))
            paths, stitched = finished
            message = (f"{num_videos} continuation{'s' if num_videos > 1 else ''} of the clip, stitched into "
                       f"{probe_video(stitched)[0]} frames in {run.timer.records['continue'].seconds:.1f} s "
                       f"(seeds {generation.seed} to {generation.seed + num_videos - 1}).")
            report = run.report(f"Wan UI: continue ({task})", [(stitched, "stitched")] + [
                (path, f"continuation {index}") for index, path in enumerate(paths, 1)],
                prompts={f"video {row[0]}": row[2] for row in rows}, settings=settings, notes=message)
            settings_file = run.file("chain.settings.yaml")
            result = RunResult(str(run.path), stitched, settings_file, _read(settings_file), report, message,
                               seed=generation.seed)
            yield ChainUpdate(rows, paths[-1], result)

    def _chain(self, run, generation, num_videos, captioner, settings, session):
        """wan.runner.run_chain in a worker thread, watched from here: yields (rows, None) whenever the
        table changes (a caption written, a video finished), then (rows, (paths, stitched))."""
        events, abandoned = queue.Queue(), threading.Event()

        def chain():
            recorder = None if captioner is None else CaptionRecorder(captioner, events)
            try:
                with self.turn(session, generation.task, recorder) as models, run.timer.stage("continue"):
                    if abandoned.is_set():  # the request ended while this job waited for its turn
                        raise RunCancelled("cancelled")
                    events.put(("done", run_chain(lambda: models, generation, str(run.path), num_videos,
                                                  resolved=settings)))
            except BaseException as exc:  # handed over, and raised in the request
                events.put(("error", exc))

        worker = threading.Thread(target=contextvars.copy_context().run, args=(chain,), name="continue", daemon=True)
        worker.start()
        captions, shown = [], None
        try:
            while True:
                try:
                    kind, value = events.get(timeout=0.25)
                except queue.Empty:
                    kind, value = None, None
                if kind == "error":
                    raise value
                captions += [value] if kind == "caption" else []
                rows = _chain_rows(run.path, generation.seed, captions, num_videos)
                if kind == "done":
                    yield rows, value
                    return
                if rows != shown:
                    shown = rows
                    yield rows, None
        finally:
            if worker.is_alive():  # the request was cancelled or failed: stop the chain at its next step
                abandoned.set()
                self.cancel(session)

    # -- toy-world inputs ----------------------------------------------------------------------
    def toy_edit_scenes(self):
        """Labels of the toy-world edit cases offered as examples: "type: source -> target"."""
        return [f"{case.edit_type}: {case.source_caption} -> {case.target_caption}" for case in _toy_edit_cases()]

    def toy_edit_scene(self, label):
        """(source video, edited first frame, source prompt, target prompt) of a toy-world edit case,
        rendered on first use."""
        case = _toy_edit_cases()[_index_of(label, self.toy_edit_scenes(), "toy scene")]
        folder = os.path.join(self.out_dir, "toy_scenes", case.case_id)
        video, frame = os.path.join(folder, "source.mp4"), os.path.join(folder, "edited_first_frame.png")
        if not os.path.isfile(video):
            _save_png(case.edited_first_frame(), frame)
            write_video(case.source_video(), video, TOY_FPS)
        return video, frame, case.source_caption, case.target_caption

    def toy_clips(self):
        return [case.clip_caption for case in _toy_continuation_cases()]

    def toy_clip(self, label):
        """A toy-world clip (17 frames) to continue, rendered on first use."""
        case = _toy_continuation_cases()[_index_of(label, self.toy_clips(), "toy clip")]
        path = os.path.join(self.out_dir, "toy_scenes", case.case_id, "clip.mp4")
        if not os.path.isfile(path):
            write_video(case.clip(), path, TOY_FPS)
        return path

    def first_frame(self, video):
        """Frame 0 of `video` at its own resolution as a PNG, to edit in another program."""
        if not video:
            raise SettingsError("video", "is required")
        frames, _ = read_video(video, max_frames=1)
        with open(video, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        return _save_png(frames[0], os.path.join(self.out_dir, "first_frames", f"{digest}_frame0.png"))

    # -- Qwen TTLG -----------------------------------------------------------------------------
    def qwen_video(self, video, init_frame=None, job=None, guidance=None, size=None, stride=1, max_frames=None,
                   fps=None, condition_size=None, vae_size=None, session=None):
        """Stylise `video` frame by frame with Qwen-Image-Edit and test-time loss guidance (see
        wan.qwen_edit.workflow.process_video). job: the wan.qwen_edit.EditJob sampling fields (prompt,
        negative_prompt, seed, num_inference_steps, true_cfg_scale); guidance: GuidanceSettings
        fields; size / condition_size / vae_size: (width, height)."""
        from ..qwen_edit import EditJob, GuidanceSettings
        from ..qwen_edit.frames import output_path
        from ..qwen_edit.pipeline import CONDITION_IMAGE_AREA, VAE_IMAGE_AREA
        from ..qwen_edit.reporting import write_edit_report
        from ..qwen_edit.workflow import LOSS_COLUMNS, VideoJob, process_video

        if not self.qwen_model:
            raise WanInputError("Qwen TTLG needs a Qwen-Image-Edit-2509 model: start the UI with one")
        if not video:
            raise SettingsError("video", "is required")
        probe_video(video)
        if init_frame:
            load_image(init_frame)
        job, guidance, stride, max_frames = _qwen_settings(job or {}, guidance or {}, stride, max_frames)
        guidance = GuidanceSettings(**guidance)
        with self._new_run("qwen") as run:
            video, init_frame = run.keep(video, "source"), run.keep(init_frame, "init_frame")
            video_job = VideoJob(video=video, output=run.file("stylised.mp4"), work_dir=run.file("work"), stride=stride,
                                 size=size, max_frames=max_frames, fps=fps)
            edit_job = EditJob(init_frame=init_frame, edge_frames_dir=None, out_frames_dir=None, **job)
            areas = {"condition_area": _area(condition_size, CONDITION_IMAGE_AREA),
                     "vae_condition_area": _area(vae_size, VAE_IMAGE_AREA)}
            settings = {"model": self.qwen_model, "video": video, "init_frame": init_frame, "size": size,
                        "stride": stride, "max_frames": max_frames, **job, "guidance": asdict(guidance), **areas}
            with self._exclusive(session):
                editor = self._qwen_view(guidance, areas)
                result = process_video(video_job, edit_job, settings, lambda: editor, run.timer)
            settings["fps"] = result.fps
            report = write_edit_report(run.file("report.html"), "Wan UI: Qwen TTLG", [("stylised", result.output),
                                       ("source", video)], result.init_frame, result.rows,
                                       {"prompt": edit_job.prompt, "negative prompt": edit_job.negative_prompt},
                                       settings, run.timer)
            command = qwen_command(self.qwen_model, video, result.output, init_frame, size, stride, max_frames, fps,
                                   edit_job, guidance, areas["condition_area"], areas["vae_condition_area"])
            indices = [int(row["frame"]) for row in result.rows]
            frames = [str(output_path(result.frames_dir, index)) for index in indices]
            plot = line_plot({column.replace("_", " "): (indices, [float(row[column]) for row in result.rows])
                              for column in LOSS_COLUMNS}, "TTLG losses per frame", "frame", "loss", 560, 260)
            message = f"Stylised {len(frames)} frames in {run.timer.records['edit'].seconds:.1f} s."
            return RunResult(str(run.path), result.output, run.write_text("command.sh", command + "\n"), command,
                             report, message, frames=frames, plot=plot, seed=edit_job.seed)

    def _qwen_view(self, guidance, areas):
        """(editor, perceptual metric) for one run: the warm Qwen-Image-Edit editor (loaded on first
        use) with this run's guidance and condition sizes, stopping before its next frame on a cancel."""
        if self._qwen is None:
            from ..qwen_edit import PerceptualMetric, QwenFrameEditor
            from ..qwen_edit.loading import resolve_dtype

            device = str(self.device)
            editor = QwenFrameEditor.from_pretrained(self.qwen_model, device, resolve_dtype(self.qwen_dtype, device))
            self._qwen = editor, PerceptualMetric(editor.features, None, "alex", device)
        editor, perceptual = self._qwen
        view = copy.copy(editor)
        view.guidance = guidance
        for name, area in areas.items():
            setattr(view, name, area)
        edit_frame = view.edit

        def edit_unless_cancelled(*args, **kwargs):
            self._stop_if_cancelled()
            return edit_frame(*args, **kwargs)

        view.edit = edit_unless_cancelled
        return view, perceptual

    # -- checks --------------------------------------------------------------------------------
    def _check_task(self, task, video):
        choice("task", task, self.checkpoint.tasks)
        if ("video" in get_task(task).inputs) != video:
            tab = "the Continue tab" if video else "the Generate tab"
            raise SettingsError("task", f"{task} does not belong in {tab}")

    def tasks_for(self, video):
        """The checkpoint's generation tasks (video=False) or continuation tasks (video=True)."""
        return [name for name in self.checkpoint.tasks if ("video" in get_task(name).inputs) == video]


# ---------------------------------------------------------------------------- helpers
def qwen_command(model, video, output, init_frame, size, stride, max_frames, fps, job, guidance, condition_area,
                 vae_area):
    """The qwen_video_edit.py command line that repeats a TTLG run."""
    import shlex

    square = {"condition": int(condition_area ** 0.5), "vae": int(vae_area ** 0.5)}
    parts = ["python", "qwen_video_edit.py", "video", "--model_id", model, "--video", video, "--output", output,
             "--stride", stride]
    parts += ["--init_frame", init_frame] if init_frame else []
    parts += ["--size", f"{size[0]}*{size[1]}"] if size else []
    parts += ["--max_frames", max_frames] if max_frames else []
    parts += ["--fps", fps] if fps else []
    parts += ["--prompt", job.prompt, "--negative_prompt", job.negative_prompt, "--seed", job.seed,
              "--num_inference_steps", job.num_inference_steps, "--true_cfg_scale", job.true_cfg_scale,
              "--ttlg_edge_scale", guidance.edge_scale, "--ttlg_gram_scale", guidance.gram_scale,
              "--ttlg_temporal_scale", guidance.temporal_scale, "--ttlg_lr", guidance.lr,
              "--ttlg_last_steps", guidance.last_steps, "--ttlg_every", guidance.every,
              "--condition_image_size", f"{square['condition']}*{square['condition']}",
              "--vae_image_size", f"{square['vae']}*{square['vae']}"]
    return " ".join(shlex.quote(str(part)) for part in parts)


def resolve_seed(seed):
    """A seed < 0 means "random": one is drawn (and recorded with the run)."""
    return random.randrange(UI_SEEDS) if seed < 0 else seed


def _qwen_settings(job, guidance, stride, max_frames):
    """The Qwen TTLG numbers, checked here so a bad one is a message naming its field."""
    job = dict(job)
    for name, low in (("seed", 0), ("num_inference_steps", 1)):
        if name in job:
            job[name] = integer(name, job[name], low=low, high=MAX_SEED if name == "seed" else 1000)
    if "true_cfg_scale" in job:
        job["true_cfg_scale"] = number("true_cfg_scale", job["true_cfg_scale"], low=0, high=100)
    checked = {name: number(name, value, low=0) for name, value in guidance.items()
               if name in ("edge_scale", "gram_scale", "temporal_scale", "lr")}
    for name, low in (("last_steps", 0), ("every", 1)):
        if name in guidance:
            checked[name] = integer(name, guidance[name], low=low)
    stride = integer("stride", stride, low=1)
    max_frames = None if max_frames is None else integer("max_frames", max_frames, low=1)
    return job, checked, stride, max_frames


def _area(size, default):
    return size[0] * size[1] if size else default


def _step_cache(threshold):
    return number("step_cache", threshold, low=0, high=10)


def _step_cache_notes(caches):
    counts = [(cache.skipped, cache.computed) for cache in caches if cache is not None]
    if not counts:
        return []
    skipped, computed = (sum(values) for values in zip(*counts))
    return [f"Step cache: skipped {skipped} of {skipped + computed} DiT block passes."]


def _chain_rows(folder, base_seed, captions, num_videos):
    """[video, seed, prompt, state] per video started: finished ones from the chain's prompts log,
    the one in progress with its caption."""
    finished = finished_videos(str(folder))
    rows = [[index, seed, prompt, "done"] for index, (_, seed, prompt) in sorted(finished.items())]
    if len(captions) > len(finished) and len(finished) < num_videos:
        index = len(finished) + 1
        caption = captions[len(finished)] or "(no caption: the prompt prefix alone)"
        rows.append([index, base_seed + index - 1, caption, "generating"])
    return rows


def _latest_video(folder):
    finished = finished_videos(str(folder))
    return os.path.join(folder, finished[max(finished)][0]) if finished else None


def _without_none(settings):
    return {key: _without_none(value) if isinstance(value, dict) else value
            for key, value in settings.items() if value is not None}


def _read(path):
    with open(path) as f:
        return f.read()


def _save_png(frame, path):
    from ..utils.fileio import atomic_path

    with atomic_path(path) as temp:
        Image.fromarray(torch.as_tensor(frame).numpy()).save(temp, format="PNG")
    return path


def _index_of(label, labels, name):
    if label not in labels:
        raise SettingsError(name, f"must be one of the listed ones, got {label!r}")
    return labels.index(label)


_TOY_CASES = {}


def _toy_edit_cases():
    if "edit" not in _TOY_CASES:
        _TOY_CASES["edit"] = make_edit_cases(TOY_SCENES, seed=0)
    return _TOY_CASES["edit"]


def _toy_continuation_cases():
    if "continuation" not in _TOY_CASES:
        _TOY_CASES["continuation"] = make_continuation_cases(TOY_SCENES // 2, seed=0)
    return _TOY_CASES["continuation"]
