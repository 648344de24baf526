"""Property-based fuzzing (hypothesis) of what reads user input before any model loads:

- each script's command line, parsed and turned into settings: any argv (and any --config file)
  gives settings, a WanInputError (SettingsError, a missing file...) or argparse's SystemExit(2),
  never another exception;
- the job-file readers (wan.jobs.load for every kind, on mutated bytes and on mutated headers):
  a WanInputError or a value of the right types, never another exception.

Example counts are bounded and the examples derandomized, so a CI run is short and repeatable.
"""
import json
import math
import os
import string
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import generate
import generate_continuous
import qwen_video_edit
import ti2v_inversion_edit
from wan import flow, jobs
from wan.cli import build_parser, parse
from wan.errors import WanInputError
from wan.settings import InversionSettings, Sampling

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
IMAGE = os.path.join(DATA, "kitten-turning-head", "edited_first_frame.png")
VIDEO = os.path.join(DATA, "kitten-turning-head", "source.mp4")

# ---------------------------------------------------------------------------- values and argv
numbers = st.one_of(st.integers(-10 ** 20, 10 ** 20), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 4, 5, 17, 81, 2 ** 63, 0.5, 1e-300, 1e300]))
texts = st.one_of(st.text(max_size=20), st.text(alphabet=string.digits + "*x.-e", max_size=12),
                  st.sampled_from(["", "64*64", "1280*704", "0*0", "-64*64", "64*64*64", "a*b", "99999999*1",
                                   "true", "no", "nan", "inf", "unipc", "euler", "fixed_point", "cpu", "cuda:7",
                                   "ti2v-5B", "t2v-A14B", "v2v-5B", IMAGE, VIDEO, "/dev/null", "/"]))
values = st.one_of(texts, numbers.map(str))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, texts),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(texts, inner, max_size=3)), max_leaves=8)


def flag_tokens(flag, kwargs):
    """[flag] plus a value fitting the flag's type (most of the time) or anything."""
    if kwargs.get("action") == "store_true":
        return st.just([flag])
    fitting = values
    if "choices" in kwargs:
        fitting = st.sampled_from(list(kwargs["choices"]))
    elif kwargs.get("type") is int:
        fitting = st.one_of(st.integers(-10, 200), st.integers()).map(str)
    elif kwargs.get("type") is float:
        fitting = numbers.map(str)
    elif kwargs.get("type") is not None:  # str2bool
        fitting = st.sampled_from(["yes", "no", "true", "0", "maybe"])
    value = st.integers(0, 9).flatmap(lambda dice: values if dice == 0 else fitting)  # a misfit one time in ten
    return value.map(lambda text: [flag, text])


def argv_for(options):
    """Mostly well-formed argv of the script's flags, with type-fitting values; sometimes a
    missing value, an unknown flag or a stray word."""
    flags = [flag_tokens(opt.flag, opt.kwargs) for opt in options]
    strays = st.sampled_from([["--no_such_flag"], ["positional"], ["--"], ["-x", "1"], [options[0].flag]])
    return with_stray(st.lists(st.one_of(*flags), max_size=8), strays)


def with_stray(items, strays):
    """The items' tokens, with a stray item inserted one time in five."""
    def insert(items, stray, where, odds):
        if odds == 0:
            items = items[: where % (len(items) + 1)] + [stray] + items[where % (len(items) + 1):]
        return [token for tokens in items for token in tokens]

    return st.builds(insert, items, strays, st.integers(0, 8), st.integers(0, 4))


def config_trees(options):
    """Settings trees for --config: real setting names with values of any type, nested or not."""
    names = [opt.path for opt in options]

    def tree(pairs):
        out = {}
        for name, value in pairs:
            node = out
            *parents, leaf = name.split(".")
            for parent in parents:
                node = node.setdefault(parent, {}) if isinstance(node.get(parent, {}), dict) else {}
            node[leaf] = value
        return out

    return st.lists(st.tuples(st.sampled_from(names + ["sampling", "load", "bogus"]), json_values),
                    max_size=5).map(tree)


def outcome(build):
    """Run `build()`: 'ok', 'input error' (a WanInputError) or 'usage' (argparse's exit 2). Any other
    exception propagates and fails the test."""
    try:
        build()
    except WanInputError:
        return "input error"
    except SystemExit as exit_:
        assert exit_.code == 2, f"argparse exited with {exit_.code}"
        return "usage"
    return "ok"


def with_config(argv, tree, tmp_path_factory):
    if tree is None:
        return argv
    path = tmp_path_factory.mktemp("config") / "settings.yaml"
    path.write_text(yaml.safe_dump(tree))
    return [*argv, "--config", str(path)]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """An existing (empty) folder, so checks that need one get past it."""
    return str(tmp_path_factory.mktemp("ckpt"))


# ---------------------------------------------------------------------------- the scripts
@FUZZ
@given(argv=argv_for(generate.OPTIONS), tree=st.none() | config_trees(generate.OPTIONS), with_ckpt=st.booleans())
def test_generate_command_line(argv, tree, with_ckpt, ckpt_dir, tmp_path_factory):
    argv = with_config(argv, tree, tmp_path_factory) + (["--ckpt_dir", ckpt_dir] if with_ckpt else [])
    outcome(lambda: generate.check(generate.parse_args(argv).settings))


@FUZZ
@given(argv=argv_for(ti2v_inversion_edit.OPTIONS), tree=st.none() | config_trees(ti2v_inversion_edit.OPTIONS),
       manifest=st.none() | st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)), max_size=3))
def test_inversion_edit_command_line(argv, tree, manifest, ckpt_dir, tmp_path_factory):
    argv = with_config(argv, tree, tmp_path_factory) + ["--ckpt_dir", ckpt_dir]
    if manifest is not None:
        path = tmp_path_factory.mktemp("manifest") / "edits.jsonl"
        path.write_text("\n".join(manifest))
        argv += ["--manifest", str(path)]
    script = ti2v_inversion_edit

    def build():
        settings_tree = parse(build_parser("", script.OPTIONS), script.OPTIONS, script.DEFAULTS, argv).settings
        script.check(settings_tree)
        script.requests_from(settings_tree)

    outcome(build)


@FUZZ
@given(argv=argv_for(generate_continuous.OPTIONS), tree=st.none() | config_trees(generate_continuous.OPTIONS))
def test_continuous_command_line(argv, tree, ckpt_dir, tmp_path_factory):
    argv = with_config(argv, tree, tmp_path_factory) + ["--ckpt_dir", ckpt_dir, "--video", VIDEO]
    script = generate_continuous
    outcome(lambda: script.check(parse(build_parser("", script.OPTIONS), script.OPTIONS, script.defaults,
                                       argv).settings))


def qwen_argv():
    """The Qwen editor's flags (those of every subcommand), from its own parsers."""
    parser = qwen_video_edit.ArgumentParser()
    commands = parser.add_subparsers()
    qwen_video_edit._add_video(commands.add_parser("video"), "prompt")
    qwen_video_edit._add_edit(commands.add_parser("edit"), "prompt")
    actions = [action for sub in commands.choices.values() for action in sub._actions if action.option_strings]
    kwargs = {action.option_strings[0]: {"type": action.type, "choices": action.choices,
                                         "action": "store_true" if action.nargs == 0 else None}
              for action in actions if action.option_strings[0] != "-h"}
    flags = [flag_tokens(flag, {k: v for k, v in kw.items() if v is not None}) for flag, kw in kwargs.items()]
    return with_stray(st.lists(st.one_of(*flags), max_size=6), st.sampled_from([["--bogus"], ["word"]]))


QWEN_REQUIRED = {"edit": ["--init_frame", IMAGE, "--edge_frames_dir", "edges", "--out_frames_dir", "out"],
                 "video": ["--video", VIDEO, "--output", "out.mp4"], "extract": ["--video", VIDEO, "--out_dir", "w"],
                 "assemble": ["--frames_dir", "frames", "--output", "out.mp4"]}


@FUZZ
@given(command=st.sampled_from(["", "edit", "video", "extract", "assemble"]), tokens=qwen_argv(),
       with_required=st.integers(0, 9))
def test_qwen_command_line(command, tokens, with_required):
    """The Qwen editor's parse and the settings it builds before its model loads: guidance
    settings, sizes and areas. The subcommand's required flags are given nine times in ten."""
    required = QWEN_REQUIRED[command or "edit"] if with_required else []
    argv = ([command] if command else []) + required + tokens

    def build():
        args = qwen_video_edit.parse_args(argv)
        if args.command in ("edit", "video"):
            qwen_video_edit._guidance(args)
            qwen_video_edit._area(args.condition_image_size, "--condition_image_size")
            qwen_video_edit._area(args.vae_image_size, "--vae_image_size")
        if getattr(args, "size", None):
            qwen_video_edit.size("--size", args.size)

    outcome(build)


# ---------------------------------------------------------------------------- job files
def tiny_job(start=0):
    generator = torch.Generator().manual_seed(start)  # the same files in every run: repeatable examples
    latent = torch.randn(4, 2, 4, 4, generator=generator)
    context, context_null = torch.randn(2, 3, 8, generator=generator)
    return jobs.Job(latent, context, context_null, flow.FirstFrameCondition(latent[:, :1].clone()),
                    Sampling(steps=3), seq_len=8, start=start, record={"prompt": "a dog", "seed": 5})


def tiny_values():
    """One value of every kind the job files hold."""
    job = tiny_job()
    inversion_job = jobs.InversionJob(job.latent, job.context, None, job.condition, InversionSettings(steps=3), 5.0, 8)
    source = jobs.Source("clip.mp4", "0" * 64, 16.0, 5, (64, 64))
    return {"generation": job,
            "edit": jobs.EditJob(inversion_job, tiny_job(start=1), source, torch.zeros(1, 8, 8, 3, dtype=torch.uint8)),
            "inversion": jobs.Inversion(job.latent, 1.0, source.identity(), {"shift": 5.0, "model": "m"})}


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs")
    files = {}
    for kind, value in tiny_values().items():
        files[kind] = str(folder / f"{kind}.safetensors")
        jobs.save(files[kind], kind, value, "fingerprint")
    return files


def check_loaded(kind, value):
    """What a reader hands on must be usable: the right classes and types, finite where it counts."""
    if kind == "inversion":
        assert isinstance(value, jobs.Inversion) and torch.is_tensor(value.latent)
        assert isinstance(value.source, dict) and isinstance(value.settings, dict)
        assert isinstance(value.sigma, (int, float)) and math.isfinite(value.sigma)
        return
    for job in ((value,) if kind == "generation" else (value.inversion, value.generation)):
        assert torch.is_tensor(job.context) and job.context.dim() == 2
        assert isinstance(job.seq_len, int) and job.seq_len > 0
        assert isinstance(job.condition, flow.Condition)
        if isinstance(job, jobs.Job):
            assert isinstance(job.start, int) and 0 <= job.start < job.sampling.steps
            assert isinstance(job.record, dict)
    if kind == "edit":
        assert isinstance(value.source, jobs.Source) and isinstance(value.source.size, tuple)


def load_outcome(path, kind, check=True):
    """jobs.load: 'refused' (a WanInputError) or 'loaded' (checked with check_loaded when `check`)."""
    try:
        value = jobs.load(path, kind, "fingerprint")
    except WanInputError:
        return "refused"
    if check:
        check_loaded(kind, value)
    return "loaded"


mutations = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


@FUZZ
@given(kind=st.sampled_from(["generation", "edit", "inversion"]), edits=mutations,
       cut=st.none() | st.floats(0, 1, exclude_max=True))
def test_job_files_with_mutated_bytes(job_files, kind, edits, cut, tmp_path_factory):
    data = bytearray(Path(job_files[kind]).read_bytes())
    for where, byte in edits:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path_factory.mktemp("mutated") / "job.safetensors"
    path.write_bytes(bytes(data))
    load_outcome(str(path), kind)


def header_paths(tree, prefix=()):
    """Every path into a JSON tree (dict keys and list indices)."""
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from header_paths(value, (*prefix, key))


def replaced(tree, path, value):
    if not path:
        return value
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[path[0]] = replaced(tree[path[0]], path[1:], value)
    return copy


def header_mutant(job_file, choice, value, drop_tensor, folder):
    """A well-formed copy of `job_file` whose header holds `value` at one place, or that misses a
    tensor: what a stage file written by another version, or edited by hand, may look like."""
    with safe_open(job_file, framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(metadata["header"])
    paths = list(header_paths(header))
    header = replaced(header, paths[choice % len(paths)], value)
    if drop_tensor is not None:
        tensors.pop(sorted(tensors)[drop_tensor % len(tensors)])
    target = folder / "job.safetensors"
    save_file(tensors, str(target), metadata={**metadata, "header": json.dumps(header)})
    return str(target)


header_mutations = {"kind": st.sampled_from(["generation", "edit", "inversion"]), "choice": st.integers(0, 10 ** 6),
                    "value": json_values, "drop_tensor": st.none() | st.integers(0, 10 ** 6)}


@FUZZ
@given(**header_mutations)
def test_job_files_with_mutated_headers_never_crash(job_files, kind, choice, value, drop_tensor, tmp_path_factory):
    path = header_mutant(job_files[kind], choice, value, drop_tensor, tmp_path_factory.mktemp("headers"))
    load_outcome(path, kind, check=False)


@FUZZ
@given(**header_mutations)
def test_job_files_with_mutated_headers_load_usable_values(job_files, kind, choice, value, drop_tensor,
                                                           tmp_path_factory):
    path = header_mutant(job_files[kind], choice, value, drop_tensor, tmp_path_factory.mktemp("headers"))
    load_outcome(path, kind)
