"""Kills lose nothing: each resumable job, SIGKILLed at seeded random points and then run to
completion, writes the very bytes of an uninterrupted run, keeps what it had finished, and leaves
no temporary file behind.

Jobs (tiny checkpoints, CPU, 64x64): a chain of three continuations (generate_continuous.py), a
manifest of three edits (ti2v_inversion_edit.py --manifest), the denoise stage of a generation and
of an edit with a checkpoint every step (--stage denoise --save_every 1), and the Qwen TTLG editor
(qwen_video_edit.py video).

A kill lands at a random time after the process logged the line where its work begins (its first
log line, after the imports; for the denoise stage the DiT's loading, for the Qwen editor its
model's), within the time the uninterrupted run took from that line to its end (halved for each later
kill: a resumed run has less to do), so kills fall where work happens whatever the machine's
load. A kill after the run logged its last line (while the interpreter exits) does not count;
each job must have had its work stopped at least once.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import DATA, REPO

from wan import jobs
from wan.runner import CHECKPOINT, ENCODED, LATENT
from wan.tasks.continuation import finished_videos

KITTEN = os.path.join(DATA, "kitten-turning-head")
RABBIT = os.path.join(DATA, "rabbit-figurine", "source.mp4")
KILLS = 3
SEED = 21
FIRST_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d ")
LOADING_DIT = re.compile(r"INFO: DiT ")  # wan.loading has read the DiT: the work begins
LOADING_QWEN = re.compile(r"INFO: loading Qwen-Image-Edit components ")  # after the editor's lazy imports
TEMPORARY = re.compile(r"\.partial|\.replaced")
TIMEOUT = 300


class Run:
    """A script in a fresh interpreter; stderr is read as it comes, with the time of each line.
    `start`: the line after which the work a kill should hit begins (by default the first log line:
    the imports are done)."""

    def __init__(self, argv, start=FIRST_LOG_LINE):
        env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
        self.start = start
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)  # text: tqdm's \r ends a line too
        self.lines, self.working = [], threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))
            if self.start.search(line):
                self.working.set()
        self.working.set()  # ended without reaching the work (nothing left to do)

    def finish(self):
        self.process.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        return self

    @property
    def stderr(self):
        return "\n".join(line for _, line in self.lines)

    def working_time(self):
        """Seconds from the start line to the end."""
        first = next(at for at, line in self.lines if self.start.search(line))
        return self.lines[-1][0] - first

    def last_message(self):
        """The text of the last log line (its time stamp left out): what a finished run says last."""
        return FIRST_LOG_LINE.sub("", [line for _, line in self.lines if FIRST_LOG_LINE.match(line)][-1])[:40]

    def kill_when_working(self, delay, finished_message):
        """SIGKILL `delay` seconds after the start line; True if that stopped the work (the run had
        not logged `finished_message` yet: a kill while the interpreter exits proves nothing)."""
        if not self.working.wait(TIMEOUT):
            raise TimeoutError("the process did not start working")
        time.sleep(delay)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.finish()
        return self.process.returncode == -signal.SIGKILL and finished_message not in self.stderr


def run_ok(argv, start=FIRST_LOG_LINE):
    run = Run(argv, start).finish()
    assert run.process.returncode == 0, run.stderr[-3000:]
    return run


def temporaries(folder):
    return [os.path.join(root, name) for root, dirs, files in os.walk(folder) for name in files + dirs
            if TEMPORARY.search(name)]


def mtimes(paths):
    return {path: os.stat(path).st_mtime_ns for path in paths}


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def same_stage_file(a, b):
    """The same tensors, bit for bit, and the same metadata. (Not the same bytes: wan.jobs.write
    lets safetensors order the metadata as its hash map does, which changes between processes;
    see test_reliability.py::test_job_files_are_the_same_bytes_in_two_processes.)"""
    from safetensors import safe_open

    with safe_open(a, framework="pt") as fa, safe_open(b, framework="pt") as fb:
        return fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys()) and all(
            fa.get_tensor(k).equal(fb.get_tensor(k)) and fa.get_tensor(k).dtype == fb.get_tensor(k).dtype
            for k in fa.keys())


def kill_and_finish(argv, reference, finished_units, seed):
    """Run `argv` KILLS times, each SIGKILLed at a random point; then once to completion. Returns
    (the final run, units finished before it with their mtimes, how many runs were really killed)."""
    rng = random.Random(seed)
    window = reference.working_time()
    # Kill k lands at a random point within 0.9 / 2**k of the uninterrupted run's work: every killed
    # run resumes where the one before it stopped and has less left to do, so later kills get
    # shorter windows to stay inside the work instead of after its end.
    delays = [rng.uniform(0, 0.9 * window / 2 ** k) for k in range(KILLS)]
    finished = reference.last_message()
    killed = sum(Run(argv, reference.start).kill_when_working(delay, finished) for delay in delays)
    kept = mtimes(finished_units())
    final = run_ok(argv)
    assert mtimes(kept) == kept  # what was finished before the last run was not recomputed
    print(f"{os.path.basename(argv[0])}: kills at {', '.join(f'{d:.2f}' for d in delays)} s of {window:.2f} s of "
          f"work, {killed} stopped work; {len(kept)} units finished before the last run")
    return final, kept, killed


# ---------------------------------------------------------------------------- the jobs
@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint("ti2v-5B")


def test_a_chain_of_three(ckpt, tiny_vlm, tmp_path):
    def argv(folder):
        return ["generate_continuous.py", "--video", RABBIT, "--task", "v2v-5B", "--ckpt_dir", ckpt, "--vlm_path",
                tiny_vlm("internvl"), "--output_dir", str(folder), "--num_videos", "3", "--size", "64*64",
                "--frame_num", "9", "--sample_steps", "2", "--base_seed", "10", "--device", "cpu"]

    reference = run_ok(argv(tmp_path / "reference"))
    work = tmp_path / "killed"

    def finished():
        return [os.path.join(work, name) for name, _, _ in finished_videos(str(work)).values()]

    final, kept, killed = kill_and_finish(argv(work), reference, finished, SEED)
    assert killed >= 1
    assert final.stderr.count("already finished") == len(kept)
    names = sorted(name for name in os.listdir(tmp_path / "reference") if not name.startswith("."))
    assert sorted(name for name in os.listdir(work) if not name.startswith(".")) == names
    for name in names:
        if name.endswith((".mp4", ".txt")):
            assert same_bytes(tmp_path / "reference" / name, work / name), name
    assert temporaries(work) == []


def test_a_manifest_of_three_edits(ckpt, tmp_path):
    def argv(folder):
        manifest = folder / "edits.jsonl"
        if not manifest.exists():
            folder.mkdir()
            edits = [{"video": os.path.join(KITTEN, "source.mp4"), "source_prompt": "a kitten",
                      "target_prompt": target, "output": str(folder / f"edit{index}.mp4")}
                     for index, target in enumerate(("a dog", "a fox", "a cat"))]
            manifest.write_text("".join(json.dumps(edit) + "\n" for edit in edits))
        return ["ti2v_inversion_edit.py", "--ckpt_dir", ckpt, "--manifest", str(manifest), "--frame_num", "5",
                "--inversion_steps", "2", "--generation_steps", "2", "--max_area", "4096", "--device", "cpu"]

    reference = run_ok(argv(tmp_path / "reference"))
    work = tmp_path / "killed"
    outputs = [work / f"edit{index}.mp4" for index in range(3)]
    final, kept, killed = kill_and_finish(argv(work), reference, lambda: [p for p in outputs if p.exists()], SEED + 1)
    assert killed >= 1
    assert f"{3 - len(kept)} of 3 edits to run here" in final.stderr
    for path in outputs:
        assert same_bytes(tmp_path / "reference" / path.name, path), path
    assert temporaries(work) == []


def resumed_step(stage_dir):
    """The step a rerun of the denoise stage resumes at (0 without a checkpoint, None when done)."""
    if os.path.exists(os.path.join(stage_dir, LATENT)):
        return None
    path = os.path.join(stage_dir, CHECKPOINT)
    return jobs.read(path, "checkpoint")[1]["step"] if os.path.exists(path) else 0


def staged_denoise(script_argv, encode_flags, tmp_path, seed):
    """Encode once; denoise uninterrupted in one copy of the stage folder, killed and resumed (with a
    checkpoint every step) in another: the same latent file. Many steps of the tiny DiT, so that
    the denoise loop, not the model loading, fills most of the time a kill may land in."""
    reference_dir, work = tmp_path / "reference", tmp_path / "killed"
    run_ok([*script_argv, *encode_flags, "--stage", "encode", "--stage_dir", str(reference_dir)])
    work.mkdir()
    (work / ENCODED).write_bytes((reference_dir / ENCODED).read_bytes())
    denoise = ["--stage", "denoise", "--save_every", "1", "--stage_dir"]  # the reference writes checkpoints too:
    reference = run_ok([*script_argv, *denoise, str(reference_dir)], LOADING_DIT)  # as long as a killed run
    argv = [*script_argv, *denoise, str(work)]
    steps_before = []
    final, _, killed = kill_and_finish(argv, reference, lambda: steps_before.append(resumed_step(work)) or [], seed)
    assert killed >= 1
    step = steps_before[0]
    print(f"  the last run {'found the latent written' if step is None else f'started at step {step}'}")
    if step:  # the last run went on from the checkpoint the kills left
        assert re.search(rf"resuming (inverting|generating) at step {step} from", final.stderr), final.stderr[-2000:]
    assert same_stage_file(work / LATENT, reference_dir / LATENT)
    assert not (work / CHECKPOINT).exists() and temporaries(work) == []


def test_the_denoise_stage_of_a_generation(ckpt, tmp_path):
    script = ["generate.py", "--task", "ti2v-5B", "--ckpt_dir", ckpt, "--device", "cpu"]
    staged_denoise(script, ["--size", "64*64", "--frame_num", "9", "--sample_steps", "150", "--base_seed", "4",
                            "--image", os.path.join(KITTEN, "edited_first_frame.png"), "--prompt", "a dog"],
                   tmp_path, SEED + 2)


def test_the_denoise_stage_of_an_edit(ckpt, tmp_path):
    script = ["ti2v_inversion_edit.py", "--ckpt_dir", ckpt, "--device", "cpu", "--frame_num", "9",
              "--inversion_steps", "60", "--generation_steps", "60", "--max_area", "4096"]
    staged_denoise(script, ["--video", os.path.join(KITTEN, "source.mp4"), "--source_prompt", "a kitten",
                            "--target_prompt", "a dog", "--target_image",
                            os.path.join(KITTEN, "edited_first_frame.png")], tmp_path, SEED + 3)


def test_the_qwen_ttlg_editor(tmp_path_factory, tmp_path):
    from wan.tools.tiny_qwen_edit import make_tiny_qwen_edit

    model = make_tiny_qwen_edit(tmp_path_factory.mktemp("tiny-qwen-edit"))

    def argv(folder):
        return ["qwen_video_edit.py", "video", "--video", os.path.join(KITTEN, "source.mp4"), "--model_id", model,
                "--output", str(folder / "styled.mp4"), "--stride", "2", "--max_frames", "5", "--size", "64*64",
                "--num_inference_steps", "3", "--condition_image_size", "56*56", "--vae_image_size", "64*64",
                "--ttlg_last_steps", "2", "--ttlg_every", "1", "--seed", "3", "--dtype", "fp32", "--device", "cpu"]

    reference = run_ok(argv(tmp_path / "reference"), LOADING_QWEN)
    work = tmp_path / "killed"
    frames = [work / "styled_work" / "frames" / f"frame_{index:05d}.png" for index in range(5)]

    def finished():
        done = 0
        while done < len(frames) and frames[done].exists():
            done += 1
        return frames[:done]

    final, kept, killed = kill_and_finish(argv(work), reference, finished, SEED + 4)
    assert killed >= 1
    if len(kept) < len(frames):
        assert f"{len(kept)} of 5 frames already done" in final.stderr
    assert same_bytes(tmp_path / "reference" / "styled.mp4", work / "styled.mp4")
    for path in frames:
        assert same_bytes(tmp_path / "reference" / "styled_work" / "frames" / path.name, path), path
    assert temporaries(work) == []


# ---------------------------------------------------------------------------- windows a random kill rarely hits
class Killed(BaseException):
    """Stands in for SIGKILL at a chosen line: nothing after it runs (not an Exception, so no
    handler of the code under test catches it)."""


def test_a_kill_while_the_latent_is_written_keeps_the_checkpoint(ckpt, tmp_path, monkeypatch):
    from wan import runner, tasks
    from wan.configs import WAN_CONFIGS
    from wan.models import Models
    from wan.settings import Generation, LoadOptions

    models = Models.load(WAN_CONFIGS["ti2v-5B"], ckpt, LoadOptions(device="cpu"))
    values = {**tasks.defaults("ti2v-5B"), "prompt": "a dog", "size": (64, 64), "frame_num": 5, "seed": 1}
    generation = Generation.from_dict({**values, "sampling": {**values["sampling"], "steps": 3}})
    runner.generate(models, generation, None, "encode", str(tmp_path))
    runner.generate(models, generation, None, "denoise", str(tmp_path), save_every=1, stop_after=2)
    write = jobs.write

    def killed_writing_the_latent(path, kind, *args, **kwargs):
        if kind == "latent":
            raise Killed
        return write(path, kind, *args, **kwargs)

    monkeypatch.setattr(jobs, "write", killed_writing_the_latent)
    with pytest.raises(Killed):
        runner.generate(models, generation, None, "denoise", str(tmp_path), save_every=1)
    assert (tmp_path / CHECKPOINT).exists()  # step 2 of 3 is still there to resume from


def test_a_kill_between_an_edit_and_its_settings(ckpt, tmp_path, monkeypatch):
    import ti2v_inversion_edit
    from wan import runner

    output = tmp_path / "edit.mp4"
    manifest = tmp_path / "edits.jsonl"
    edit = {"video": os.path.join(KITTEN, "source.mp4"), "source_prompt": "a kitten", "target_prompt": "a dog",
            "output": str(output)}
    manifest.write_text(json.dumps(edit) + "\n")
    argv = ["--ckpt_dir", ckpt, "--manifest", str(manifest), "--frame_num", "5", "--inversion_steps", "1",
            "--generation_steps", "1", "--max_area", "4096", "--device", "cpu"]
    settings = tmp_path / "edit.settings.yaml"
    write_yaml_atomic = runner.write_yaml_atomic

    def killed_after_the_settings(path, values):
        write_yaml_atomic(path, values)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(runner, "write_yaml_atomic", killed_after_the_settings)
        with pytest.raises(Killed):
            ti2v_inversion_edit.main(argv)
    # The settings come first: no video exists without them, and the edit is not counted as done.
    assert settings.exists() and not output.exists()
    ti2v_inversion_edit.main(argv)  # the rerun
    assert output.exists() and settings.exists()
