"""Edit quality on the toy world: success rate and mean metrics per edit type against ground truth, for
the editor's settings and every inexact speed option, with the benchmark's controls (docs/QUALITY.md).

    python bench/bench_edit_quality.py --cases 104 --variants default euler:20 fixed_point:20 cache:0.1 fp8
    python bench/bench_edit_quality.py --device cpu --cases 4 --variants default    # a CPU smoke run

A variant is "name" or "name:value": default (configs/edit_toyworld.yaml), euler / midpoint / heun /
fixed_point:N (that inversion scheme, N inversion and generation steps), strength:S, guide_inv:G,
guide_gen:G, steps:N (both passes), cache:T (step cache threshold), fp8 (FP8 linears, CUDA),
flash-fp8 (FP8 attention, CUDA). Each runs the same cases; the table lists, per variant, the success
rate and the mean metrics, and for speed options whether they keep quality (success within 2 points
and no metric over its threshold where the default passes). Continuation cases go through the v2v
path (last frame + the procedural captioner's caption) for every variant whose generation differs.
Controls: the VAE floor, the no-op reconstruction, the fresh-noise trajectory ratio, seed diversity.
--json writes everything after each variant; a rerun with the same file keeps the variants it holds.
"""
import argparse
import json
import os
import sys
import time

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wan.configs import WAN_CONFIGS  # noqa: E402
from wan.models import Models  # noqa: E402
from wan.runner import Runner  # noqa: E402
from wan.settings import LoadOptions  # noqa: E402
from wan.step_cache import enable_step_cache  # noqa: E402
from wan.toyworld.cases import make_continuation_cases, make_edit_cases  # noqa: E402
from wan.toyworld.evaluate import (  # noqa: E402
    continuation_case,
    edit_case,
    fresh_noise_control,
    preset_settings,
    seed_diversity_of,
    summarise,
    vae_floor,
)
from wan.toyworld.metrics import CONTINUATION_THRESHOLDS, EDIT_THRESHOLDS  # noqa: E402
from wan.utils.fileio import atomic_path  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(REPO, "configs", "edit_toyworld.yaml")
SPEED_OPTIONS = ("cache", "fp8", "flash-fp8", "steps")


def variant_settings(base, variant):
    """(EditSettings, load changes) of a variant name."""
    name, _, value = variant.partition(":")
    inv, gen = base.inversion, base.sampling
    if name == "default":
        return base, {}
    if name in ("euler", "midpoint", "heun", "fixed_point"):
        steps = int(value or inv.steps)
        return base.replace(inversion=inv.replace(scheme=name, steps=steps), sampling=gen.replace(steps=steps)), {}
    if name == "steps":
        return base.replace(inversion=inv.replace(steps=int(value)), sampling=gen.replace(steps=int(value))), {}
    if name == "strength":
        return base.replace(inversion=inv.replace(strength=float(value))), {}
    if name == "guide_inv":
        return base.replace(inversion=inv.replace(guide_scale=float(value))), {}
    if name == "guide_gen":
        return base.replace(sampling=gen.replace(guide_scale=float(value))), {}
    if name == "cache":
        return base, {"step_cache": float(value)}
    if name == "fp8":
        return base, {"fp8": True}
    if name == "flash-fp8":
        return base, {"attention": "flash-fp8"}
    raise SystemExit(f"unknown variant {variant!r}")


def keeps_quality(results, reference):
    """Within 2 points of the default's success, and no metric over its bar where the default passes,
    for edits and continuations alike."""
    for kind in ("summary", "continuation_summary"):
        if kind in reference and results[kind]["all"]["success"] < reference[kind]["all"]["success"] - 0.02:
            return False
    for cases in ("cases", "continuations"):
        for ours, theirs in zip(results.get(cases, []), reference.get(cases, [])):
            if theirs["passed"] and not ours["passed"]:
                return False
    return True


def case_rows(results):
    return [{"case_id": r.case_id, "edit_type": r.edit_type, "passed": r.passed, **r.metrics} for r in results]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_dir", default=os.path.join(REPO, "assets", "toyworld-ti2v"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--cases", type=int, default=104, help="edit cases (the spec's mix, 1 in 8 a no-op)")
    parser.add_argument("--seed", type=int, default=0, help="case seed")
    parser.add_argument("--variants", nargs="*", default=["default"])
    parser.add_argument("--continuations", type=int, default=24, help="continuation cases (v2v path)")
    parser.add_argument("--controls", type=int, default=8, help="cases for the fresh-noise and diversity controls")
    parser.add_argument("--json", default=None,
                        help="every metric, written after each variant; a rerun keeps the variants it holds")
    args = parser.parse_args()
    cases = make_edit_cases(args.cases, args.seed)
    continuations = make_continuation_cases(args.continuations, args.seed)
    base = preset_settings(PRESET)
    report = earlier_report(args) or {"ckpt_dir": args.ckpt_dir, "seed": args.seed, "cases": args.cases,
                                      "continuations": args.continuations, "variants": {}}
    continued = {entry["generation_key"]: {k: entry[k] for k in ("continuation_summary", "continuations")}
                 for entry in report["variants"].values() if "generation_key" in entry}
    loaded = {}
    for variant in args.variants:
        if variant in report["variants"]:
            print(f"{variant}: kept from {args.json}", flush=True)
            continue
        settings, changes = variant_settings(base, variant)
        models = models_for(loaded, args, changes)
        entry = report["variants"][variant] = run_variant(models, variant, settings, changes, cases, continuations,
                                                          continued)
        save(report, args.json)
        print(f"{variant}: edit success {entry['summary']['all']['success']:.1%}"
              + (f", continuation success {entry['continuation_summary']['all']['success']:.1%}" if continuations else "")
              + (f", step cache skipped {entry['step_cache']['skipped']} of "
                 f"{entry['step_cache']['skipped'] + entry['step_cache']['computed']} block passes"
                 if "step_cache" in entry else "")
              + f" ({entry['seconds']:.0f} s)", flush=True)
    if report.get("controls", {}).get("cases") != args.controls:
        report["controls"] = controls(models_for(loaded, args, {}), cases[: args.controls], base)
        save(report, args.json)
    print_table(report)


def earlier_report(args):
    """The report at --json of an earlier run of the same cases (its finished variants are kept), or None."""
    if not (args.json and os.path.exists(args.json)):
        return None
    with open(args.json) as f:
        report = json.load(f)
    wanted = {"ckpt_dir": args.ckpt_dir, "seed": args.seed, "cases": args.cases, "continuations": args.continuations}
    if {key: report.get(key) for key in wanted} != wanted:
        raise SystemExit(f"--json {args.json}: holds another run ({ {k: report.get(k) for k in wanted} }); "
                         "give another file")
    return report


def save(report, path):
    if path:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1, default=float)


def models_for(loaded, args, changes):
    """The toy model under a variant's load changes, loaded once per setting (fp8 cannot be undone)."""
    key = tuple(sorted((k, v) for k, v in changes.items() if k != "step_cache"))
    if key not in loaded:
        loaded[key] = Models.load(WAN_CONFIGS["ti2v-5B"], args.ckpt_dir,
                                  LoadOptions(device=args.device, offload_model=False, **dict(key)))
    return loaded[key]


def run_variant(models, variant, settings, changes, cases, continuations, continued):
    """One variant's report entry. Continuations depend on the generation and the load only, so
    variants of the inversion share them through `continued`."""
    cache = enable_step_cache(models.experts[0], changes.get("step_cache", 0.0))
    start, runner = time.time(), Runner(models, progress=False)
    results = [edit_case(models, case, settings, runner)[1] for case in tqdm(cases, desc=variant, unit="case")]
    entry = {"settings": settings.to_dict(), "load": changes, "summary": summarise(results),
             "cases": case_rows(results)}
    if continuations:
        key = json.dumps([settings.sampling.to_dict(), settings.n_prompt, sorted(changes.items())])
        if key not in continued:
            rows = [continuation_case(models, case, settings, runner=runner)[1]
                    for case in tqdm(continuations, desc=f"{variant} continuations", unit="case")]
            continued[key] = {"continuation_summary": summarise(rows), "continuations": case_rows(rows)}
        entry.update(continued[key], generation_key=key)
    if cache is not None:
        entry["step_cache"] = {"computed": cache.computed, "skipped": cache.skipped}
    enable_step_cache(models.experts[0], 0.0)
    entry["seconds"] = time.time() - start
    return entry


def controls(models, control_cases, base):
    """The benchmark's controls (docs/TOYWORLD.md 11.4) on the first cases."""
    return {"cases": len(control_cases),
            "vae_floor_db": [vae_floor(models, case) for case in control_cases],
            "fresh_noise_te_rel": [fresh_noise_control(models, case, base, seed=1000 + i)["te_rel"]
                                   for i, case in enumerate(control_cases)],
            "seed_diversity": seed_diversity_of(models, control_cases[0], base,
                                                seeds=range(16 if len(control_cases) >= 8 else 4))}


def print_table(report):
    columns = ["success", "te_mean", "te_max", "direction_agreement", "colour_accuracy", "colour_leak",
               "shape_accuracy", "mask_iou", "background_psnr", "flicker"]
    reference = report["variants"].get("default")
    print(f"\n# toy-world edits: {report['cases']} cases, {report['ckpt_dir']}")
    print("| variant | edit type | cases | " + " | ".join(columns) + " | keeps quality |")
    print("|---|---|---|" + "---|" * (len(columns) + 1))
    for variant, results in report["variants"].items():
        speed = variant.split(":")[0] in SPEED_OPTIONS
        keeps = ("yes" if keeps_quality(results, reference) else "no") if speed and reference else "-"
        for kind, row in results["summary"].items():
            cells = [f"{row['success']:.0%}"] + [f"{row.get(c, float('nan')):.3g}" for c in columns[1:]]
            print(f"| {variant} | {kind} | {row['cases']} | " + " | ".join(cells) + f" | {keeps if kind == 'all' else ''} |")
    if report["continuations"]:
        print_continuation_table(report)
    c = report["controls"]
    print(f"\ncontrols: VAE floor {min(c['vae_floor_db']):.1f}-{max(c['vae_floor_db']):.1f} dB; fresh-noise TE_rel "
          f"min {min(c['fresh_noise_te_rel']):.2f} (>= 0.6 needed, else void); seed diversity "
          f"{c['seed_diversity']:.2f} (>= 0.7); thresholds {EDIT_THRESHOLDS}")


def print_continuation_table(report):
    columns = ["success", "seam_psnr", "colour_accuracy", "shape_accuracy", "mask_iou", "background_psnr",
               "direction_error", "speed_in_band", "flicker"]
    print(f"\n# toy-world continuations (v2v path, procedural captions): {report['continuations']} cases")
    print("| variant | cases | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for variant, results in report["variants"].items():
        row = results["continuation_summary"]["all"]
        cells = [f"{row['success']:.0%}"] + [f"{row.get(c, float('nan')):.3g}" for c in columns[1:]]
        print(f"| {variant} | {row['cases']} | " + " | ".join(cells) + " |")
    print(f"continuation thresholds {CONTINUATION_THRESHOLDS} (the seam bar is 30 dB: no per-case VAE floor is measured here)")


if __name__ == "__main__":
    main()
