"""Where a run's time goes, and whether compiling pays for it.

`RunProfile` times the stages of a run (load, encode, denoise, decode, write) with
`wan.report.StageTimer`, logs them as one table at the end and, given a folder, writes the table as
`stages.json` and a torch profiler trace of a few denoising steps as `trace.json` (Chrome trace
format: open it in https://ui.perfetto.dev or chrome://tracing):

    profile = RunProfile(folder)                      # folder None: the table only
    with profile.stage("load"):
        models = Models.load(...)
    with profile.stage("denoise", trace=True):        # the profiler records steps 2..4 of this stage
        flow.integrate(..., callback=profile.step_callback(checkpoint_callback))
    profile.finish()

`compile_pays_off` is the rule for choosing torch.compile per run: the seconds a compiled forward
saves, summed over the run's forwards, against what the first compiled call costs (measured on an
H200, docs/PERFORMANCE.md "Compile or not").
"""
import contextlib
import json
import logging
import os

from .report import StageTimer, format_bytes
from .utils.fileio import write_json_atomic

log = logging.getLogger(__name__)

STAGES_FILE, TRACE_FILE = "stages.json", "trace.json"
TRACED_STAGES = ("denoise", "invert and regenerate")  # the stage names wan.runner gives its denoising


class RunProfile:
    """Stage times of one run, and optionally a profiler trace of `trace_steps` steps.

    folder: where stages.json and trace.json go (None: log the table only). skip_steps: steps left
    out of the trace first (the first step compiles and plans kernels; it is not representative)."""

    def __init__(self, folder=None, device=None, trace_steps=3, skip_steps=1):
        self.folder = folder
        self.timer = StageTimer(device)
        self.trace_steps, self.skip_steps = trace_steps, skip_steps
        self._profiler = None
        self.traced = False  # whether trace.json was written
        if folder:
            os.makedirs(folder, exist_ok=True)

    @contextlib.contextmanager
    def stage(self, name, trace=None):
        """Time the block as stage `name`. With a folder, the torch profiler runs through the first
        traced stage (trace=None: the denoising stages, TRACED_STAGES) and records the steps
        announced by `step()`."""
        trace = name in TRACED_STAGES if trace is None else trace
        tracing = trace and self.folder and not self.traced and self._profiler is None
        with self.timer.stage(name), (self._tracing() if tracing else contextlib.nullcontext()):
            yield

    def step(self):
        """Call after each solver step inside a traced stage (no-op elsewhere)."""
        if self._profiler is not None:
            self._profiler.step()

    def step_callback(self, then=None):
        """A flow.integrate callback (i, x, history) that announces the step, then calls `then`."""
        def after_step(i, x, history):
            self.step()
            if then is not None:
                then(i, x, history)
        return after_step

    @contextlib.contextmanager
    def _tracing(self):
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU]
        if self.timer.cuda:
            activities.append(ProfilerActivity.CUDA)
        wait = max(self.skip_steps - 1, 0)  # the schedule's warm-up step also stays out of the trace
        plan = schedule(wait=wait, warmup=1 if self.skip_steps else 0, active=self.trace_steps, repeat=1)
        with profile(activities=activities, schedule=plan, on_trace_ready=self._write_trace) as profiler:
            self._profiler = profiler
            try:
                yield
            finally:
                self._profiler = None

    def _write_trace(self, profiler):
        path = os.path.join(self.folder, TRACE_FILE)
        profiler.export_chrome_trace(path)
        self.traced = True
        log.info("profiler trace of %d steps: %s", self.trace_steps, path)

    def rows(self):
        """(stage, seconds, share of the total, peak memory) per stage, in the order they ran."""
        records = list(self.timer.records.values())
        total = sum(r.seconds for r in records) or 1.0
        return [{"stage": r.name, "seconds": round(r.seconds, 3), "share": round(r.seconds / total, 4),
                 "calls": r.calls, "peak_bytes": r.peak_bytes} for r in records]

    def table(self):
        """The stage table as text, one line per stage and a total."""
        rows = self.rows()
        width = max([len(r["stage"]) for r in rows] + [5])
        lines = [f"{'stage':<{width}}  {'seconds':>8}  {'share':>6}  {self.timer.memory_kind}"]
        for r in rows:
            lines.append(f"{r['stage']:<{width}}  {r['seconds']:>8.2f}  {r['share']:>6.1%}  "
                         f"{format_bytes(r['peak_bytes'])}")
        lines.append(f"{'total':<{width}}  {sum(r['seconds'] for r in rows):>8.2f}")
        return "\n".join(lines)

    def finish(self):
        """Log the table; with a folder, write stages.json. Returns the rows."""
        rows = self.rows()
        log.info("time per stage:\n%s", self.table())
        if self.folder:
            write_json_atomic(os.path.join(self.folder, STAGES_FILE),
                              {"memory": self.timer.memory_kind, "stages": rows, "traced": self.traced})
        return rows


def read_stages(folder):
    """{stage: seconds} from a stages.json written by RunProfile.finish."""
    with open(os.path.join(folder, STAGES_FILE)) as f:
        return {row["stage"]: row["seconds"] for row in json.load(f)["stages"]}


# ---------------------------------------------------------------------------- compile or not
# Seconds a compiled DiT forward saves per 1000 tokens of one sample, by model width (H200, bf16,
# eager against compiled blocks, SDPA attention: TI2V-5B 1.141 -> 0.900 s at 27,280 tokens and
# 0.360 -> 0.264 s at 11,154; A14B 12.44 -> 11.20 s at 75,600). The compiled VAE decoder saves
# about 0.7 s per 121 frames at 704x1280 as well; it is left out (it compiles in the same call).
COMPILE_SAVING_PER_KILOTOKEN = {3072: 0.0088, 5120: 0.0164}
# What the first compiled forward and decode cost once per process: with inductor's on-disk caches
# empty (a fresh machine, a new torch) and with them filled by an earlier run of the same shapes.
COMPILE_FIRST_CALL_S = {"cold": 90.0, "warm": 15.0}


def inductor_caches_warm():
    """Whether inductor's on-disk FX graph cache holds anything (an earlier compiled run on this
    machine); None when its location cannot be found."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    folder = os.path.join(cache_dir(), "fxgraph")
    return os.path.isdir(folder) and any(os.scandir(folder))


def compile_pays_off(dim, token_forwards, caches_warm=None):
    """Whether torch.compile is likely to save time in a run of `token_forwards` tokens through the
    DiT (tokens per sample x samples per forward x forwards: a TI2V-5B 121f 720p generation with
    batched CFG is 27,280 x 2 x 50) for a model of width `dim`. caches_warm: whether inductor's
    caches hold this run's kernels (None: look on disk). A model width not measured uses the
    per-token saving of the nearest measured width scaled by width."""
    if caches_warm is None:
        caches_warm = bool(inductor_caches_warm())
    nearest = min(COMPILE_SAVING_PER_KILOTOKEN, key=lambda d: abs(d - dim))
    per_kilotoken = COMPILE_SAVING_PER_KILOTOKEN[nearest] * dim / nearest
    saving = token_forwards / 1000 * per_kilotoken
    return saving > COMPILE_FIRST_CALL_S["warm" if caches_warm else "cold"]

