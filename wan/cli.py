"""The command-line layer: flags <-> settings, configuration files, one-line errors.

Each script declares its flags once, as `Option`s: the flag, the setting it fills (a dotted path in
the script's settings tree, e.g. "sampling.shift") and argparse's arguments. From that one table:
- the parser is built (flags left out of a command line stay out of the namespace);
- settings are merged: the script's defaults, then `--config FILE` (YAML or TOML, the same tree of
  setting names), then the flags given; the result is what the run uses, and what is written beside
  its outputs as OUTPUT.settings.yaml (give it back with --config to repeat the run exactly);
- errors name the flag: a `SettingsError` for "sampling.shift" reads "--sample_shift must be ...".
"""
import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

from .errors import NonFiniteError, WanError
from .settings import SettingsError
from .utils.utils import str2bool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    flag: str  # "--sample_shift"
    path: str  # the setting it fills: "sampling.shift"
    kwargs: dict = field(default_factory=dict)  # argparse's add_argument arguments (help, type, choices...)
    resolved: bool = True  # written to OUTPUT.settings.yaml (not output paths or stage choices)


def option(flag, path=None, resolved=True, **kwargs):
    return Option(flag, path or flag.lstrip("-"), kwargs, resolved)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and a pointer to --help, not the whole usage."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(description, options, epilog=None):
    parser = ArgumentParser(description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="a YAML or TOML file of settings (see configs/); flags given here override it")
    for opt in options:
        parser.add_argument(opt.flag, dest=opt.path, default=argparse.SUPPRESS, **opt.kwargs)
    return parser


def set_path(tree, path, value):
    *parents, leaf = path.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def get_path(tree, path, default=None):
    for name in path.split("."):
        if not isinstance(tree, dict) or name not in tree:
            return default
        tree = tree[name]
    return tree


def merge(base, override):
    """A copy of `base` with `override`'s values (nested dicts merged key by key)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config(path, options):
    """The settings tree of a YAML or TOML file; keys must be settings of this script."""
    if not os.path.isfile(path):
        raise SettingsError("config", f"file not found: {path}")
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                tree = tomllib.load(f)
        else:
            import yaml

            with open(path) as f:
                tree = yaml.safe_load(f) or {}
    except Exception as exc:
        raise SettingsError("config", f"{path} is not valid YAML/TOML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(tree, dict):
        raise SettingsError("config", f"{path} must hold a mapping of settings")
    known = {opt.path for opt in options}
    for path_name, value in _leaves(tree):
        if path_name in known:
            continue
        if not any(k.startswith(path_name + ".") for k in known):
            raise SettingsError("config", f"{path}: {path_name!r} is not a setting of this script")
        if value != {}:  # a section (load, sampling...) holds settings, not a value
            raise SettingsError("config", f"{path}: {path_name!r} must be a mapping of settings, got {value!r}")
    return tree


def _leaves(tree, prefix=""):
    """(dotted name, value) of every leaf of a settings tree; an empty mapping is a leaf."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{name}.")
        else:
            yield name, value


@dataclass
class Parsed:
    """settings: the merged tree; given: the paths set on the command line or by --config."""

    settings: dict
    given: dict


def parse(parser, options, defaults, argv=None):
    """Merge the defaults, --config and the flags given; returns Parsed. `defaults` is a settings
    tree, or a function of the given tree returning one (defaults that depend on a task, say)."""
    namespace = vars(parser.parse_args(argv))
    config_path = namespace.pop("config", None)
    given = read_config(config_path, options) if config_path else {}
    for opt in options:
        if opt.path in namespace:
            set_path(given, opt.path, namespace[opt.path])
    return Parsed(merge(defaults(given) if callable(defaults) else defaults, given), given)


def parse_with_config(parser, argv, subparser=None):
    """argparse for scripts without a flag table: `--config FILE` (a YAML/TOML mapping of option
    names without their dashes) gives defaults that the flags on the command line override.
    `subparser`: the sub-command's parser, whose options the file sets."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv)[0].config
    if config:
        target = subparser or parser
        options = [option(a.option_strings[-1], a.dest) for a in target._actions if a.option_strings]
        values = read_config(config, options)
        nested = [path for path, _ in _leaves(values) if "." in path]
        if nested:
            raise SettingsError("config", f"{config}: {nested[0]!r} is not a setting of this script")
        target.set_defaults(**values)
    return parser.parse_args(argv)


def given_values(given, settings, names):
    """{dotted name: value} of the settings given (on the command line or in --config) under the
    top-level `names`, with the values as the settings objects normalised them (`settings`)."""
    return {path: get_path(settings, path) for path, _ in _leaves(given) if path.split(".")[0] in names}


def resolved_settings(settings, options):
    """The settings tree without what only says where outputs go (see Option.resolved)."""
    out = {}
    for opt in options:
        value = get_path(settings, opt.path, _MISSING)
        if opt.resolved and value is not _MISSING:
            set_path(out, opt.path, list(value) if isinstance(value, tuple) else value)
    return out


_MISSING = object()


def setup_logging(rank=0):
    level = logging.INFO if rank == 0 else logging.ERROR
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s: %(message)s", stream=sys.stderr)


def run_cli(main, options=(), argv=None, flags=None):
    """Run `main(argv)`. A WanError (bad setting, file or checkpoint; a run gone non-finite) becomes
    one line on stderr naming the flag, and exit status 2 (3 for non-finite numbers). WAN_DEBUG=1
    shows the traceback instead. `flags`: more setting-to-flag names, for scripts without option tables."""
    flags = {**{opt.path: opt.flag for opt in options}, **(flags or {}), "config": "--config"}
    try:
        return main(argv)
    except WanError as err:
        if os.environ.get("WAN_DEBUG"):
            raise
        print(f"error: {describe(err, flags)}", file=sys.stderr)
        sys.exit(3 if isinstance(err, NonFiniteError) else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def describe(err, flags):
    """The error's message, a setting's name replaced by the flag that sets it. A library that
    names a setting without its section ("ulysses_size" for "load.ulysses_size") is matched by the
    last part of the name when that is unambiguous."""
    if not isinstance(err, SettingsError):
        return str(err)
    flag = flags.get(err.field)
    if flag is None:
        matches = [f for path, f in flags.items() if path.endswith("." + err.field)]
        flag = matches[0] if len(matches) == 1 else err.field
    return f"{flag} {err.problem}"


def exact_timesteps_option():
    return option("--exact_timesteps", "sampling.exact_timesteps", action="store_true",
                  help="model timesteps 1000*sigma as floats, as step-distilled LoRAs were trained "
                       "(configs/lightning_*.yaml); default: the official truncated integers")


def sampling_options():
    """The official sampling flags (generate.py's; the chain script's too)."""
    from .settings import SOLVERS

    return [
        option("--sample_solver", "sampling.solver", choices=SOLVERS, help="default unipc"),
        option("--sample_steps", "sampling.steps", type=int, help="sampling steps (default per task)"),
        option("--sample_shift", "sampling.shift", type=float, help="noise schedule shift (default per task)"),
        option("--sample_guide_scale", "sampling.guide_scale", type=float, help="classifier-free guidance scale"),
        exact_timesteps_option(),
    ]


def load_options():
    """The flags of wan.settings.LoadOptions that every generation script shares."""
    from .settings import ATTENTION_BACKENDS, VAE_DTYPES

    return [
        option("--device", "load.device", help="torch device (default: cuda:0 if available, else cpu)"),
        option("--offload_model", "load.offload_model", type=offload_value,
               help="move models to the CPU after use to save GPU memory (true/false); blocks: also stream the "
                    "DiT's blocks from pinned host memory, one at a time (A14B on a 24 GB card)"),
        option("--t5_cpu", "load.t5_cpu", action="store_true", help="run the T5 encoder on the CPU"),
        option("--convert_model_dtype", "load.convert_model_dtype", action="store_true",
               help="cast the DiT weights to bf16 on load"),
        option("--compile", "load.compile", action="store_true",
               help="torch.compile the DiT blocks and the VAE decoder (same numerics up to rounding; faster "
                    "after a one-time compile)"),
        option("--vae_dtype", "load.vae_dtype", choices=VAE_DTYPES,
               help="VAE precision: fp32 (reference) or bf16 (faster, about 35+ dB PSNR to fp32)"),
        option("--fp8", "load.fp8", action="store_true",
               help="inexact, opt-in: FP8 linear layers in the DiT blocks (Hopper; ~4%% output deviation on random "
                    "weights, 1.1x faster, half the linear-weight memory)"),
        option("--attention", "load.attention", choices=ATTENTION_BACKENDS,
               help="attention kernel: sdpa (cuDNN first on CUDA), flash (FlashAttention-3, or 2) or flash-fp8 "
                    "(inexact, opt-in: FlashAttention-3 with fp8 q/k/v). Default: flash when FlashAttention-3 is "
                    "installed, else sdpa"),
        option("--step_cache", "load.step_cache", type=float, metavar="THRESHOLD",
               help="inexact, opt-in: skip the DiT blocks on steps whose input changed less than this "
                    "(accumulated relative L1, e.g. 0.05-0.2), reusing the last residual; 0: off"),
        option("--ulysses_size", "load.ulysses_size", type=int,
               help="Ulysses sequence-parallel size: the DiT's tokens split over this many GPUs (torchrun)"),
        option("--t5_fsdp", "load.t5_fsdp", action="store_true", help="shard T5 over the GPUs of a job (torchrun)"),
        option("--dit_fsdp", "load.dit_fsdp", action="store_true",
               help="shard the DiT over the GPUs of a job (torchrun)"),
        option("--cfg_parallel", "load.cfg_parallel", action="store_true",
               help="prompt and negative-prompt passes on two halves of the GPUs (torchrun; 2 x --ulysses_size "
                    "processes)"),
        option("--dit", "load.dit", help="a single-file DiT (ComfyUI safetensors, fp8-scaled, GGUF...) replacing the "
                                         "checkpoint's"),
        option("--dit_high", "load.dit_high", help="A14B: the high-noise expert as a single file"),
        option("--dit_low", "load.dit_low", help="A14B: the low-noise expert as a single file"),
        option("--vae", "load.vae", help="a VAE file (official .pth, ComfyUI safetensors)"),
        option("--t5", "load.t5", help="a umT5 text-encoder file (official, Hugging Face or GGUF names)"),
        option("--clip", "load.clip", help="Wan2.1 i2v/flf2v: the CLIP image-encoder file or folder"),
        option("--tokenizer", "load.tokenizer", help="the umT5 tokenizer folder (when the checkpoint has none)"),
        option("--lora", "load.lora", action="append", metavar="FILE[:STRENGTH]",
               help="a LoRA for every DiT (repeatable); merged exactly, or applied at run time on quantised weights"),
        option("--lora_high", "load.lora_high", action="append", metavar="FILE[:STRENGTH]",
               help="a LoRA for the A14B high-noise expert (repeatable)"),
        option("--lora_low", "load.lora_low", action="append", metavar="FILE[:STRENGTH]",
               help="a LoRA for the A14B low-noise expert (repeatable)"),
    ]


def offload_value(text):
    """--offload_model: a yes/no value (the official flag), or 'blocks'."""
    return "blocks" if str(text).strip().lower() == "blocks" else str2bool(text)


def run_options():
    """The flags of every generation script about the run itself, not what it computes."""
    return [
        option("--profile", "profile", resolved=False, metavar="DIR",
               help="write DIR/trace.json (a torch profiler trace of a few denoising steps; open it in Perfetto) and "
                    "DIR/stages.json (time and peak memory per stage); the stage table is logged either way"),
        option("--deterministic", "deterministic", action="store_true",
               help="make GPU runs repeat bit for bit (deterministic cuBLAS/cuDNN kernels, a little slower); CPU "
                    "runs always do"),
    ]


RUN_DEFAULTS = {"profile": None, "deterministic": False}


def start_run(settings, device):
    """What every generation script does first: deterministic kernels when asked, and the run's
    profile (its stage table, and with --profile a trace)."""
    from .profiling import RunProfile
    from .utils.utils import set_deterministic

    if settings["deterministic"]:
        set_deterministic()
    return RunProfile(settings["profile"], device)


def check_checkpoint(settings):
    """A checkpoint (folder or Hugging Face id), or at least the DiT as single files."""
    load = settings["load"]
    if not settings.get("ckpt_dir") and not (load.get("dit") or load.get("dit_high")):
        raise SettingsError("ckpt_dir", "is required (a checkpoint folder or a Hugging Face id in the local cache), "
                                        "or give the parts as single files (dit, vae, t5)")


def stage_options():
    """The flags of staged runs (encode / denoise / decode in separate processes)."""
    return [
        option("--stage", "stage", resolved=False, choices=("all", "encode", "denoise", "decode"),
               help="run one stage: encode (T5 + VAE), denoise (DiT), decode (VAE); default all"),
        option("--stage_dir", "stage_dir", resolved=False, help="folder for the files the stages exchange"),
        option("--save_every", "save_every", resolved=False, type=int,
               help="denoise stage: keep a resumable checkpoint every N steps (a rerun resumes from it)"),
        option("--stop_after_steps", "stop_after_steps", resolved=False, type=int,
               help="denoise stage: stop after N steps of this run (resumable), e.g. to fit a time slot"),
    ]


STAGE_DEFAULTS = {"stage": "all", "stage_dir": None, "save_every": 0, "stop_after_steps": None}


def check_stage(settings):
    """Stage options that cannot work together, as setting errors."""
    from .settings import integer

    integer("save_every", settings["save_every"], low=0)
    if settings["stop_after_steps"] is not None:
        integer("stop_after_steps", settings["stop_after_steps"], low=1)
    if settings["stage"] != "all" and not settings["stage_dir"]:
        raise SettingsError("stage_dir", f"is required with the {settings['stage']} stage")
