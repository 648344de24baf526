"""bench/bench_edit_quality.py's own rules, without running the model: what each variant changes,
the "keeps quality" rule, and the refusal to mix two runs in one --json file."""
import argparse
import importlib.util
import json
import os

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("bench_edit_quality",
                                              os.path.join(REPO, "bench", "bench_edit_quality.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_variants_change_what_they_name_and_nothing_else():
    base = bench.preset_settings(bench.PRESET)
    assert bench.variant_settings(base, "default") == (base, {})
    euler, load = bench.variant_settings(base, "euler:12")
    assert load == {} and euler.inversion.scheme == "euler"
    assert euler.inversion.steps == euler.sampling.steps == 12
    assert euler.replace(inversion=base.inversion, sampling=base.sampling) == base
    steps, _ = bench.variant_settings(base, "steps:5")
    assert steps.inversion.scheme == base.inversion.scheme and steps.inversion.steps == steps.sampling.steps == 5
    assert bench.variant_settings(base, "strength:0.8")[0].inversion.strength == 0.8
    assert bench.variant_settings(base, "guide_inv:2")[0].inversion.guide_scale == 2.0
    assert bench.variant_settings(base, "guide_gen:5")[0].sampling.guide_scale == 5.0
    assert bench.variant_settings(base, "cache:0.1") == (base, {"step_cache": 0.1})
    assert bench.variant_settings(base, "fp8") == (base, {"fp8": True})
    assert bench.variant_settings(base, "flash-fp8") == (base, {"attention": "flash-fp8"})
    with pytest.raises(SystemExit, match="unknown variant 'fast'"):
        bench.variant_settings(base, "fast")


def entry(success, passed, continuation_success=None, continuation_passed=()):
    out = {"summary": {"all": {"success": success}}, "cases": [{"passed": p} for p in passed]}
    if continuation_success is not None:
        out["continuation_summary"] = {"all": {"success": continuation_success}}
        out["continuations"] = [{"passed": p} for p in continuation_passed]
    return out


def test_keeps_quality_within_two_points_and_on_every_case_the_reference_passes():
    reference = entry(0.50, [True, False, True, False], 0.5, [True, False])
    assert bench.keeps_quality(entry(0.50, [True, True, True, False], 0.5, [True, False]), reference)
    assert bench.keeps_quality(entry(0.49, [True, False, True, False], 0.5, [True, True]), reference)
    assert not bench.keeps_quality(entry(0.47, [True, False, True, False], 0.5, [True, False]), reference)
    # same rate, but a case the reference passes now fails
    assert not bench.keeps_quality(entry(0.50, [False, True, True, False], 0.5, [True, False]), reference)
    # edits fine, a continuation the reference passes fails
    assert not bench.keeps_quality(entry(0.50, [True, False, True, False], 0.5, [False, True]), reference)
    assert not bench.keeps_quality(entry(0.50, [True, False, True, False], 0.0, [False, False]), reference)


def test_a_json_file_of_another_run_is_refused_and_one_of_this_run_is_kept(tmp_path):
    path = str(tmp_path / "quality.json")
    args = argparse.Namespace(json=path, ckpt_dir="assets/toyworld-ti2v", seed=0, cases=16, continuations=8)
    assert bench.earlier_report(args) is None
    report = {"ckpt_dir": args.ckpt_dir, "seed": 0, "cases": 16, "continuations": 8, "variants": {"default": {}}}
    bench.save(report, path)
    assert bench.earlier_report(args) == report
    with open(path) as f:
        assert json.load(f) == report
    with pytest.raises(SystemExit, match="holds another run"):
        bench.earlier_report(argparse.Namespace(**{**vars(args), "cases": 104}))
