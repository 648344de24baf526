"""Run a repository script as a user would, with its stages timed: the child process of
bench_cold_start.py.

    python bench/profiled_script.py OUT.json [--repeat N] generate.py --task ti2v-5B ...

The script runs unchanged (its own `__main__`, its own argument parsing), `--repeat` times in this
one process; wan.profiling.RunProfile times the library calls every run goes through: Models.load
("load"), the task's prepare ("encode"), Runner.invert ("invert"), Runner.denoise ("denoise") and
the decode and write ("decode+write" for generate.py, which writes while decoding; "decode" and
"write" for the edit script). OUT.json gets one entry per repeat: the stage seconds, when the first
stage began and when the run ended (time.time(), so the parent can add the interpreter's start-up).
"""
import json
import os
import runpy
import sys
import time

STARTED = time.time()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wan.runner  # noqa: E402
import wan.tasks  # noqa: E402
from wan.models import Models  # noqa: E402
from wan.profiling import RunProfile  # noqa: E402

STAGES = {
    "generate.py": [(wan.tasks, "prepare", "encode"), (wan.runner.Runner, "denoise", "denoise"),
                    (wan.runner.Runner, "write_video", "decode+write")],
    "ti2v_inversion_edit.py": [(wan.tasks, "prepare_edit", "encode"), (wan.runner.Runner, "invert", "invert"),
                               (wan.runner.Runner, "denoise", "denoise"), (Models, "decode", "decode"),
                               (wan.runner, "save_video", "write")],
}


class Timing:
    """The current run's RunProfile and when its first stage began."""

    profile, first_stage = None, None


def timed(function, stage):
    def run(*args, **kwargs):
        Timing.first_stage = Timing.first_stage or time.time()
        with Timing.profile.stage(stage):
            return function(*args, **kwargs)
    return run


def install(script):
    load = Models.load.__func__  # a classmethod: wrap the function, keep it a classmethod
    Models.load = classmethod(timed(load, "load"))
    for owner, name, stage in STAGES[os.path.basename(script)]:
        setattr(owner, name, timed(getattr(owner, name), stage))


def main():
    out, args = sys.argv[1], sys.argv[2:]
    repeat = 1
    if args[0] == "--repeat":
        repeat, args = int(args[1]), args[2:]
    script = args[0]
    install(script)
    runs = []
    for _ in range(repeat):
        Timing.profile, Timing.first_stage = RunProfile(None), None
        sys.argv = list(args)
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as done:
            if done.code not in (None, 0):
                raise
        runs.append({"stages": {r["stage"]: r["seconds"] for r in Timing.profile.finish()},
                     "first_stage": Timing.first_stage, "ended": time.time()})
    with open(out, "w") as f:
        json.dump({"started": STARTED, "runs": runs}, f)


if __name__ == "__main__":
    main()
