"""The runner: the one place that runs prepared jobs, for generations and edits alike.

- `Runner(models)` denoises a `Job`, inverts an `InversionJob`, runs an `EditJob` (inversion, then
  generation from its result), decodes, and writes videos: all through `flow.integrate`, the one loop.
- `generate` / `edit` run a whole job or one stage of it: encode (text encoder + VAE: the job file),
  denoise (DiT only: the latent file, with resumable checkpoints every `save_every` steps) and
  decode (VAE only: the video), the stages exchanging files in a folder (wan.jobs). Every output
  gets the resolved settings written beside it, so the run can be repeated exactly.
- `run_chain` makes a long video from continuations, resuming after the last finished one.
"""
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import torch

from . import distributed, flow, jobs, tasks
from .errors import WanInputError
from .report.stages import StageTimer
from .settings import check_agrees
from .solvers import INVERSION_STEPPERS, SAMPLERS, History
from .tasks.continuation import (PROMPTS_LOG, STITCHED_VIDEO, finished_videos, stitched_frames,
                                 write_prompts_log)
from .tasks.edit import inversion_result, load_source, write_comparison
from .utils.fileio import write_yaml_atomic
from .utils.utils import save_video
from .utils.video_io import output_stem, probe_video, write_video

log = logging.getLogger(__name__)

STAGES = ("all", "encode", "denoise", "decode")
ENCODED, LATENT, CHECKPOINT = "encoded.safetensors", "latent.safetensors", "denoise_checkpoint.safetensors"
# Written with the video, not part of what a job computes: a later stage may change them.
OUTPUT_ONLY = ("fps", "output")


class StopRequested(Exception):
    """Raised inside the denoise loop when a run was asked to stop after a number of steps."""


@dataclass
class Checkpointing:
    """Resumable denoising: every `save_every` steps the latent and the solver's history go to
    `path`; `stop_after` ends this run (resumably) after that many steps; `key` ties the file to
    its job."""

    path: str
    key: str
    save_every: int = 0
    stop_after: int = None
    fingerprint: str = None

    def resume(self, phase, device):
        """(start step, latent, history) of `phase` from the file, or (0, None, None)."""
        if not os.path.exists(self.path):
            return 0, None, None
        tensors, header = jobs.read(self.path, "checkpoint", self.fingerprint)
        if header["key"] != self.key:
            raise WanInputError(f"{self.path} belongs to another job; delete it to start over")
        if header["phase"] != phase:
            return None, None, None  # that phase is already done
        tensors = {k: v.to(device) for k, v in tensors.items()}
        latent = tensors.pop("latent")
        history = History.from_tensors(tensors, header["history"]) if header["history"] else None
        log.info("resuming %s at step %d from %s", phase, header["step"], self.path)
        return header["step"], latent, history

    def callback(self, phase, total):
        steps_this_run = 0

        def after_step(i, x, history):
            nonlocal steps_this_run
            steps_this_run += 1
            done = i + 1
            stopping = self.stop_after is not None and steps_this_run >= self.stop_after and done < total
            if done < total and ((self.save_every and done % self.save_every == 0) or stopping):
                self.save(phase, done, x, history)
            if stopping:
                raise StopRequested(f"{phase} step {done}")
        return after_step

    def save(self, phase, step, latent, history):
        tensors, values = history.to_tensors() if history is not None else ({}, None)
        jobs.write(self.path, "checkpoint", {"latent": latent, **tensors},
                   {"key": self.key, "phase": phase, "step": step, "history": values}, self.fingerprint)

    def done(self):
        if os.path.exists(self.path):
            os.remove(self.path)


class Runner:
    """Runs jobs on `models` (the DiT for denoising, the VAE for decoding). `on_step()` is called after
    every solver step (a profiler's step, a UI's cancel check)."""

    def __init__(self, models, progress=True, on_step=None):
        self.models, self.progress, self.on_step = models, progress, on_step

    def _callback(self, checkpointing, phase, total):
        """flow.integrate's callback: the checkpoint's, then on_step."""
        saving = checkpointing.callback(phase, total) if checkpointing is not None else None
        if saving is None and self.on_step is None:
            return None

        def after_step(i, x, history):
            if saving is not None:
                saving(i, x, history)
            if self.on_step is not None:
                self.on_step()
        return after_step

    def field(self, job, guide_scale):
        m = self.models
        return flow.GuidedVelocity(m.experts, [job.context], None if job.context_null is None else [job.context_null],
                                   guide_scale, job.seq_len, job.condition, m.config.get("boundary"),
                                   m.num_train_timesteps, prepare=m.place, cfg_parallel=m.cfg_parallel)

    # A plan is flow.integrate's arguments. The stage functions below call flow.integrate on plans
    # themselves, so a script reaches the network in five calls: script -> wan.runner.edit (or
    # generate) -> flow.integrate -> stepper -> GuidedVelocity -> WanModel.
    def sampling_plan(self, job, checkpointing=None):
        """How `job` is sampled from its latent (resumed from the checkpoint's file when it has one)."""
        s = job.sampling
        schedule = flow.sampling_schedule(s, self.models.num_train_timesteps)
        start, latent, history = job.start, job.latent, None
        if checkpointing is not None:
            step, saved, history = checkpointing.resume("generating", self.models.device)
            if saved is not None:
                start, latent = step, saved
        return dict(field=self.field(job, s.guide_scale), x=latent.to(self.models.device), schedule=schedule,
                    step=SAMPLERS[s.solver], condition=job.condition, start=start, history=history,
                    desc="denoising", progress=self.progress,
                    callback=self._callback(checkpointing, "generating", len(schedule)))

    def inversion_plan(self, job, checkpointing=None):
        """How the clean latent of `job` is integrated up its schedule; None when the checkpoint is past it."""
        inv = job.inversion
        schedule = flow.inversion_schedule(inv.steps, job.shift, inv.strength, self.models.num_train_timesteps,
                                           job.exact_timesteps).reversed()
        start, latent = 0, job.latent
        if checkpointing is not None:
            step, saved, _ = checkpointing.resume("inverting", self.models.device)
            if step is None:
                return None
            if saved is not None:
                start, latent = step, saved
        return dict(field=self.field(job, inv.guide_scale), x=latent.to(self.models.device), schedule=schedule,
                    step=INVERSION_STEPPERS[inv.scheme], condition=job.condition, start=start, desc="inverting",
                    progress=self.progress, callback=self._callback(checkpointing, "inverting", len(schedule)))

    def edit_start(self, edit_job, load_inversion=None, checkpointing=None):
        """Where an edit's regeneration starts. From a saved inversion: its latent is put in place and
        None returned. Otherwise the inversion's plan (None when a resumed checkpoint is past it);
        `keep_inversion` takes its result."""
        if not load_inversion:
            return self.inversion_plan(edit_job.inversion, checkpointing)
        inversion = jobs.load(load_inversion, "inversion")
        inversion.check_matches(edit_job.source, self.models.fingerprint)
        if inversion.settings["shift"] != edit_job.generation.sampling.shift:
            raise WanInputError(f"load_inversion: {load_inversion} was inverted with shift "
                                f"{inversion.settings['shift']}, this edit samples with "
                                f"{edit_job.generation.sampling.shift}")
        log.info("reusing inversion %s", load_inversion)
        edit_job.generation.latent = inversion.latent
        return None

    def keep_inversion(self, edit_job, noise, save_inversion=None):
        """The inverted latent becomes the regeneration's start; saved to `save_inversion` when given."""
        edit_job.generation.latent = noise
        if save_inversion and self.models.layout.writes_outputs:
            record = inversion_result(edit_job.inversion, edit_job.source,
                                      edit_job.generation.record.get("source_prompt"), noise, self.models.fingerprint)
            jobs.save(save_inversion, "inversion", record)
            log.info("saved the inversion to %s", save_inversion)

    @contextlib.contextmanager
    def running(self):
        """No autograd, the networks' autocast, and offloaded networks moved off the GPU afterwards."""
        with torch.no_grad(), self.models.autocast():
            yield
        self.models.release()

    def denoise(self, job, checkpointing=None):
        """Sample `job` from its latent; the final latent (fp32). With checkpointing, resumes from
        its file and keeps it up to date (raises StopRequested when stopped on request)."""
        with self.running():
            return flow.integrate(**self.sampling_plan(job, checkpointing))

    def invert(self, job, checkpointing=None):
        """Integrate the clean latent of `job` up its schedule: the latent at the schedule's top (None
        when the checkpoint is past the inversion)."""
        plan = self.inversion_plan(job, checkpointing)
        if plan is None:
            return None
        with self.running():
            return flow.integrate(**plan)

    def edit(self, edit_job, load_inversion=None, save_inversion=None, checkpointing=None):
        """Invert the source (or reuse a saved inversion) and regenerate: the edited latent."""
        with self.running():
            inversion = self.edit_start(edit_job, load_inversion, checkpointing)
            if inversion is not None:
                self.keep_inversion(edit_job, flow.integrate(**inversion), save_inversion)
            return flow.integrate(**self.sampling_plan(edit_job.generation, checkpointing))

    @torch.no_grad()
    def write_edit(self, latent, output, fps, source_frames=None, target=None):
        """Decode and write an edit; with the source frames and the edited first frame also
        OUTPUT_comparison.mp4 and the first frames as PNGs."""
        edited = self.models.decode(latent)
        save_video(edited[None], save_file=output, fps=fps, nrow=1)
        if source_frames is not None:
            write_comparison(output, source_frames, target.to(torch.uint8), edited, fps)
        log.info("wrote %s (%d frames, %dx%d, %.3g fps)", output, edited.shape[1], edited.shape[3], edited.shape[2],
                 fps)

    @torch.no_grad()
    def write_video(self, latent, path, fps):
        """Decode and write, each chunk encoded to mp4 while the VAE decodes the next one."""
        log.info("decoding and writing %s", path)
        save_video((chunk[None] for chunk in self.models.decode_chunks(latent)), save_file=path, fps=fps, nrow=1,
                   normalize=True, value_range=(-1, 1))


# ---------------------------------------------------------------------------- whole runs and stages
def job_key(kind, job):
    """An identity of a job's content, for checkpoints: the hash of its file header."""
    _, header = jobs.to_tensors(kind, job)
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def settings_beside(output, resolved):
    """`OUTPUT.settings.yaml` (everything needed to repeat the run; give it back with --config), written
    before the output inside: a finished output always has its settings (a kill in between cannot
    leave it without), and a failed one leaves neither."""
    path = f"{output_stem(output)}.settings.yaml"
    if resolved is not None:
        write_yaml_atomic(path, resolved)
    try:
        yield
    except BaseException:
        if resolved is not None and os.path.exists(path):
            os.remove(path)
        raise


def stage_job(models, kind, prepare, stage, encoded, requested, timer):
    """The job of a stage: prepared by `prepare()` for the whole run and the encode stage (which saves it
    to `encoded`), read back from `encoded` by the denoise stage (and checked against the settings
    `requested`); None for the decode stage."""
    if stage in ("all", "encode"):
        with timer.stage("encode"):
            job = prepare()
        if stage == "encode" and models.layout.writes_outputs:
            jobs.save(encoded, kind, job, models.fingerprint)
            log.info("encoded to %s; next: the denoise stage", encoded)
        return job
    if stage == "denoise":
        job = jobs.load(encoded, kind, models.fingerprint, models.config.patch_size)
        check_agrees(job.record, requested or {}, encoded, ignore=OUTPUT_ONLY)
        return job
    return None


def generate(models, generation, output, stage="all", stage_dir=None, save_every=0, stop_after=None,
             requested=None, resolved=None, timer=None, on_step=None):
    """Generate one video, whole or one stage (see the module docstring). `requested`: the settings
    given explicitly, which a later stage checks against the job's file. Returns the output path when
    a video was written."""
    runner, folder, timer = Runner(models, on_step=on_step), stage_dir or "", timer or StageTimer(models.device)
    encoded, latent_file = os.path.join(folder, ENCODED), os.path.join(folder, LATENT)
    job = stage_job(models, "generation", lambda: tasks.prepare(models, generation), stage, encoded, requested, timer)
    if stage == "encode":
        return None
    if stage == "denoise":
        checkpointing = Checkpointing(os.path.join(folder, CHECKPOINT), job_key("generation", job), save_every,
                                      stop_after, models.fingerprint)
        try:
            with timer.stage("denoise"), runner.running():
                latent = flow.integrate(**runner.sampling_plan(job, checkpointing))
        except StopRequested as stop:
            log.info("stopped after %s; run the denoise stage again to resume", stop)
            return None
        if models.layout.writes_outputs:  # the latent first: a kill in between keeps the checkpoint
            jobs.write(latent_file, "latent", {"latent": latent}, {"record": job.record}, models.fingerprint)
            log.info("denoised to %s; next: the decode stage", latent_file)
        checkpointing.done()
        return None
    if stage == "all":
        with timer.stage("denoise"), runner.running():
            latent, record = flow.integrate(**runner.sampling_plan(job)), job.record
    else:
        tensors, header = jobs.read(latent_file, "latent", models.fingerprint)
        latent, record = tensors["latent"], header["record"]
        check_agrees(record, requested or {}, latent_file, ignore=OUTPUT_ONLY)
    if not models.layout.writes_outputs:
        return None
    with settings_beside(output, resolved), timer.stage("decode and write"):
        runner.write_video(latent, output, (requested or {}).get("fps") or record["fps"])
    return output


def edit(models, request, settings, stage="all", stage_dir=None, save_every=0, stop_after=None,
         load_inversion=None, save_inversion=None, comparison=False, requested=None, resolved=None, timer=None,
         on_step=None):
    """One edit, whole or one stage; returns the output path when a video was written."""
    runner, folder, timer = Runner(models, on_step=on_step), stage_dir or "", timer or StageTimer(models.device)
    encoded, latent_file = os.path.join(folder, ENCODED), os.path.join(folder, LATENT)
    # A whole run from a saved inversion need not encode the source clip.
    invert = not (load_inversion and stage == "all")
    edit_job = stage_job(models, "edit", lambda: tasks.prepare_edit(models, request, settings, invert=invert), stage,
                         encoded, requested, timer)
    if stage == "encode":
        return None
    if stage in ("all", "denoise"):
        checkpointing = None
        if stage == "denoise":
            checkpointing = Checkpointing(os.path.join(folder, CHECKPOINT), job_key("edit", edit_job), save_every,
                                          stop_after, models.fingerprint)
        try:
            with timer.stage("invert and regenerate"), runner.running():  # as Runner.edit, one call nearer the network
                inversion = runner.edit_start(edit_job, load_inversion, checkpointing)
                if inversion is not None:
                    runner.keep_inversion(edit_job, flow.integrate(**inversion), save_inversion)
                latent = flow.integrate(**runner.sampling_plan(edit_job.generation, checkpointing))
        except StopRequested as stop:
            log.info("stopped after %s; run the denoise stage again to resume", stop)
            return None
        if checkpointing is not None:
            if models.layout.writes_outputs:  # the latent first: a kill in between keeps the checkpoint
                jobs.write(latent_file, "latent", {"latent": latent, "target_frame": edit_job.target_frame},
                           {"record": edit_job.generation.record, "source": edit_job.source.identity()},
                           models.fingerprint)
                log.info("denoised to %s; next: the decode stage", latent_file)
            checkpointing.done()
            return None
        record, source, target = edit_job.generation.record, edit_job.source, edit_job.target_frame
        source_fps = source.fps
    else:
        tensors, header = jobs.read(latent_file, "latent", models.fingerprint)
        latent, record, target = tensors["latent"], header["record"], tensors.get("target_frame")
        check_agrees(record, requested or {}, latent_file, ignore=OUTPUT_ONLY)
        source, source_fps = None, header["source"]["fps"]
    if not models.layout.writes_outputs:
        return None
    output = request.output or record["output"]
    if comparison and source is None:  # a decode stage in its own process reads the clip again
        source = load_source(models.config, record["video"], record["frame_num"], record["max_area"])
    with settings_beside(output, resolved), timer.stage("decode and write"):
        runner.write_edit(latent, output, settings.fps or source_fps, source.frames if comparison else None, target)
    return output


def run_chain(load_models, generation, output_dir, num_videos, resolved=None, timer=None, on_step=None):
    """Videos 1..num_videos into `output_dir`: video 1 continues generation.video, video i continues
    video i-1 with seed generation.seed + i - 1. Videos already in the prompts log are kept, so a
    rerun resumes after the last finished one. `load_models()` is called only if something is left.
    Returns (video paths, stitched video path)."""
    from .tasks.common import resolve_seed

    base_seed = resolve_seed(generation.seed)
    timer = timer or StageTimer()
    log_path = os.path.join(output_dir, PROMPTS_LOG)
    entries = finished_videos(output_dir)
    source, models = generation.video, None
    for index in distributed.main_tqdm(range(1, num_videos + 1), desc="videos", unit="video"):
        if index in entries:
            log.info("video %d already finished (%s), skipping", index, entries[index][0])
            source = os.path.join(output_dir, entries[index][0])
            continue
        if models is None:
            with timer.stage("load"):
                models = load_models()
        seed = base_seed + index - 1
        name = f"video_{index:02d}_seed{seed}.mp4"
        log.info("video %d/%d: continuing %s (seed %d)", index, num_videos, source, seed)
        with timer.stage("caption and encode"):
            job = tasks.prepare(models, generation.replace(video=source, seed=seed))
        path, runner = os.path.join(output_dir, name), Runner(models, on_step=on_step)
        with timer.stage("denoise"):
            latent = runner.denoise(job)
        with timer.stage("decode and write"):
            runner.write_video(latent, path, generation.fps or models.config.sample_fps)
        entries[index] = (name, seed, job.record["prompt"])
        write_prompts_log(log_path, entries)
        source = path
    paths = [os.path.join(output_dir, entries[i][0]) for i in range(1, num_videos + 1)]
    stitched = os.path.join(output_dir, STITCHED_VIDEO)
    write_video(stitched_frames(paths), stitched, fps=probe_video(paths[0])[1])
    if resolved is not None:
        write_yaml_atomic(os.path.join(output_dir, "chain.settings.yaml"), resolved)
    log.info("stitched %d videos into %s", num_videos, stitched)
    return paths, stitched
