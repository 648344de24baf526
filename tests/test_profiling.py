"""wan.profiling: the per-stage table, the profiler trace of a few steps, the compile rule."""
import json
import logging

import torch

from wan import flow
from wan.profiling import COMPILE_FIRST_CALL_S, COMPILE_SAVING_PER_KILOTOKEN, RunProfile, compile_pays_off, read_stages


def work(n=64):
    a = torch.randn(n, n)
    return (a @ a).sum()


def test_stage_table_and_a_trace_of_the_chosen_steps(tmp_path, caplog):
    """Stages in the order they ran, logged as one table and written as stages.json; the denoise
    stage's trace holds exactly the steps after the skipped first one, as a Chrome/Perfetto trace."""
    profile = RunProfile(str(tmp_path), "cpu", trace_steps=2, skip_steps=1)
    with profile.stage("load"):
        work()
    schedule = flow.make_schedule("euler", 5, 5.0)
    calls = []

    def field(x, t):
        with torch.profiler.record_function("velocity"):
            return x * 0.5 + work(16)

    with profile.stage("denoise", trace=True):
        flow.integrate(field, torch.zeros(2, 3), schedule, flow.SAMPLERS["euler"], progress=False,
                       callback=profile.step_callback(lambda i, x, h: calls.append(i)))
    with profile.stage("decode"):
        work()
    with caplog.at_level(logging.INFO, logger="wan.profiling"):
        rows = profile.finish()

    assert [r["stage"] for r in rows] == ["load", "denoise", "decode"] and calls == [0, 1, 2, 3, 4]
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-3
    assert list(read_stages(str(tmp_path))) == ["load", "denoise", "decode"]
    table = next(r.getMessage() for r in caplog.records if "time per stage" in r.getMessage())
    assert all(name in table for name in ("load", "denoise", "decode", "total"))
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#1", "ProfilerStep#2"}  # step 0 skipped, then two traced
    assert sum(e.get("name") == "velocity" for e in events) == 2
    assert json.loads((tmp_path / "stages.json").read_text())["traced"] is True


def test_without_a_folder_only_the_table(tmp_path, caplog):
    profile = RunProfile(None, "cpu")
    with profile.stage("denoise", trace=True):
        profile.step()
        work()
    with caplog.at_level(logging.INFO, logger="wan.profiling"):
        profile.finish()
    assert any("denoise" in r.getMessage() for r in caplog.records)
    assert not profile.traced and list(tmp_path.iterdir()) == []


def test_compile_pays_off_past_the_measured_break_even():
    """The saving grows with tokens x forwards; a warm cache moves the break-even down."""
    per_kilotoken = COMPILE_SAVING_PER_KILOTOKEN[3072]
    break_even_warm = COMPILE_FIRST_CALL_S["warm"] / per_kilotoken * 1000
    assert compile_pays_off(3072, 27280 * 2 * 50, caches_warm=True)  # TI2V-5B 121f 720p, 50 CFG steps
    assert not compile_pays_off(3072, 3000 * 2 * 4, caches_warm=True)  # a small 4-step preview
    assert compile_pays_off(3072, 1.01 * break_even_warm, caches_warm=True)
    assert not compile_pays_off(3072, 0.99 * break_even_warm, caches_warm=True)
    assert not compile_pays_off(3072, 1.01 * break_even_warm, caches_warm=False)
    # A width between the measured ones scales the nearest measured saving by width.
    assert compile_pays_off(4096, 1.01 * break_even_warm * 3072 / 4096, caches_warm=True)
