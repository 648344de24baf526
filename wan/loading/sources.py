"""Where the weights are: one front door, `locate`, for every layout practitioners hold.

    parts = locate("Wan-AI/Wan2.2-TI2V-5B-Diffusers")                      # HF cache, offline
    parts = locate("/ckpt/Wan2.2-T2V-A14B")                                  # official folder
    parts = locate(None, dit_high="high_Q4_K_M.gguf", dit_low="low_Q4_K_M.gguf",
                   vae="wan_2.1_vae.safetensors", t5="umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                   tokenizer="/ckpt/google/umt5-xxl")                        # ComfyUI-style files

A source is an official Wan folder, a Diffusers pipeline folder (model_index.json) or an HF repo
id found in the local Hugging Face cache (never the network). Keyword files replace or supply
parts. The result says, per part, where the weights are and in which container; the readers
(readers.py) open them. Completeness is checked here, for the parts named in `need`: one
CheckpointError names every missing file.
"""
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from safetensors import safe_open

from ..errors import CheckpointError
from ..utils.hub import local_folder
from ..modules.model import CONFIG_TYPES
from ..utils.checkpoint import check_config, read_json
from .files import container_of

log = logging.getLogger(__name__)

PART_NAMES = ("dit", "vae", "t5", "tokenizer", "clip")
DEFAULT_NEED = ("dit", "vae", "t5", "tokenizer")
ROLES = ("main", "high", "low")

# Official folder names (Wan2.1 / Wan2.2 releases)
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = os.path.join("google", "umt5-xxl")
OFFICIAL_VAES = ("Wan2.2_VAE.pth", "Wan2.1_VAE.pth")
OFFICIAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
OFFICIAL_EXPERTS = {"high": "high_noise_model", "low": "low_noise_model"}
DIT_WEIGHTS = "diffusion_pytorch_model"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
# Name fragments that mark an expert in file and folder names (QuantStack, Comfy-Org, Lightning)
ROLE_HINTS = {"high": ("high_noise", "highnoise", "_high_", "-high-", "high-noise"),
              "low": ("low_noise", "lownoise", "_low_", "-low-", "low-noise")}
# Markers of parts inside an all-in-one ComfyUI checkpoint
AIO_PARTS = {"vae": "vae.decoder.conv1.weight", "t5": "text_encoders.umt5xxl.transformer.shared.weight"}
SPIECE_KEY = "spiece_model"
DIT_CONFIG_TYPES = {**CONFIG_TYPES, "num_attention_heads": int}  # official names, and diffusers' head count


@dataclass
class Part:
    """One part's weights: `path` (file or folder) and `container` ('folder', 'safetensors',
    'gguf', 'pth'; 'embedded' for a tokenizer stored inside the text-encoder file). `config` is
    the component's config.json where it has one; `role` the expert role of a DiT."""

    what: str
    path: str
    container: str
    layout: str = "file"  # 'official', 'diffusers' or 'file'
    role: str = None
    config: dict = None

    def describe(self):
        role = {"high": " (high-noise expert)", "low": " (low-noise expert)"}.get(self.role, "")
        return f"{self.what}{role}: {self.path} [{self.layout} {self.container}]"


@dataclass
class CheckpointParts:
    """Where each part is, plus the pipeline facts a Diffusers folder records.

    dit: role -> Part, with role 'main' (one DiT) or 'high' and 'low' (the A14B experts).
    boundary_ratio / expand_timesteps: from model_index.json (None where the layout has none).
    vae_mean / vae_std: from a Diffusers vae/config.json (None: the official constants)."""

    source: str = None
    layout: str = "files"
    dit: dict = field(default_factory=dict)
    vae: Part = None
    t5: Part = None
    tokenizer: Part = None
    clip: Part = None
    boundary_ratio: float = None
    expand_timesteps: bool = None
    vae_mean: list = None
    vae_std: list = None
    missing: dict = field(default_factory=dict)  # part name -> what is missing

    def experts(self):
        """DiT parts, low-noise expert first (the order the pipelines use), or the single DiT."""
        if "main" in self.dit:
            return [self.dit["main"]]
        return [self.dit[role] for role in ("low", "high") if role in self.dit]

    def has_experts(self):
        return "high" in self.dit or "low" in self.dit

    def require(self, *names):
        """One-line error naming what is missing among `names` (part names, e.g. 'dit', 'clip')."""
        problems = [f"{name}: {self.missing.get(name, 'not given')}" for name in names
                    if name in self.missing or not self._present(name)]
        if problems:
            raise CheckpointError(f"{self.source or 'the checkpoint files'} is incomplete: " + "; ".join(problems))
        return self

    def _present(self, name):
        if name == "dit":
            return "main" in self.dit or ("high" in self.dit and "low" in self.dit)
        return getattr(self, name) is not None

    def describe(self):
        lines = [f"checkpoint parts ({self.layout}{': ' + self.source if self.source else ''}):"]
        for part in [*self.dit.values(), self.vae, self.t5, self.tokenizer, self.clip]:
            if part is not None:
                lines.append("  " + part.describe())
        facts = [f"{name} {value}" for name, value in (("boundary_ratio", self.boundary_ratio),
                                                        ("expand_timesteps", self.expand_timesteps))
                 if value is not None]
        if facts:
            lines.append("  " + ", ".join(facts))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- front door
def locate(source=None, dit=None, dit_high=None, dit_low=None, vae=None, t5=None, clip=None, tokenizer=None,
           need=DEFAULT_NEED):
    """Find every part; keyword paths replace or supply parts. `need`: the part names that must
    be complete (a CheckpointError names each missing file); others are reported when absent."""
    if dit is not None and (dit_high is not None or dit_low is not None):
        raise CheckpointError("give either dit (one DiT) or dit_high/dit_low (the two A14B experts), not both")
    parts = CheckpointParts()
    if source is not None:
        folder = resolve_source(source)
        parts.source = str(source)
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            _scan_diffusers(folder, parts)
        else:
            _scan_official(folder, parts)
    _apply_overrides(parts, dit=dit, dit_high=dit_high, dit_low=dit_low, vae=vae, t5=t5, clip=clip,
                     tokenizer=tokenizer)
    parts.require(*need)
    log.info("%s", parts.describe())
    return parts


def resolve_source(source):
    """A local folder for `source`: the folder itself, or an HF repo id's snapshot in the local cache."""
    return local_folder(source, "checkpoint")


# --------------------------------------------------------------------------------------- official
def _scan_official(folder, parts):
    parts.layout = "official"
    found = False
    expert_dirs = {role: os.path.join(folder, name) for role, name in OFFICIAL_EXPERTS.items()}
    if any(os.path.isdir(d) for d in expert_dirs.values()):
        for role, path in expert_dirs.items():
            found |= _official_dit(path, role, parts)
    elif os.path.isfile(os.path.join(folder, "config.json")):
        found |= _official_dit(folder, "main", parts)
    else:
        parts.missing["dit"] = f"no config.json or {'/'.join(OFFICIAL_EXPERTS.values())} folders in {folder}"

    dit_config = next((p.config for p in parts.dit.values() if p.config), {})
    vaes = [name for name in OFFICIAL_VAES if os.path.isfile(os.path.join(folder, name))]
    if len(vaes) > 1:  # both present: the 48-channel DiT (TI2V-5B) uses the Wan2.2 VAE
        vaes = [OFFICIAL_VAES[0] if dit_config.get("in_dim") == 48 else OFFICIAL_VAES[1]]
    if vaes:
        parts.vae = Part("VAE", os.path.join(folder, vaes[0]), "pth", "official")
    else:
        parts.missing["vae"] = f"{' or '.join(OFFICIAL_VAES)} not found in {folder}"
    t5 = os.path.join(folder, OFFICIAL_T5)
    if os.path.isfile(t5):
        parts.t5 = Part("T5", t5, "pth", "official")
    else:
        parts.missing["t5"] = f"{OFFICIAL_T5} not found in {folder}"
    tok = os.path.join(folder, OFFICIAL_TOKENIZER)
    problem = _tokenizer_problem(tok)
    if problem:
        parts.missing["tokenizer"] = problem
    else:
        parts.tokenizer = Part("tokenizer", tok, "folder", "official")
    clip = os.path.join(folder, OFFICIAL_CLIP)
    if os.path.isfile(clip):
        parts.clip = Part("CLIP", clip, "pth", "official")
    else:  # only Wan2.1's i2v / flf2v need it: an error only when they ask
        parts.missing["clip"] = f"{OFFICIAL_CLIP} not found in {folder}"
    found |= any(getattr(parts, n) is not None for n in ("vae", "t5"))
    if not found:
        raise CheckpointError(f"{folder} is neither an official Wan checkpoint folder nor a Diffusers pipeline "
                              "folder (no config.json, model_index.json, VAE or T5 file)")


def _official_dit(folder, role, parts):
    """Record the DiT in `folder` (config.json + safetensors) or what is missing; True if found."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        parts.missing["dit"] = f"{config_path} not found"
        return False
    problem = _weights_problem(folder, DIT_WEIGHTS)
    if problem:
        parts.missing["dit"] = problem
        return False
    config = read_json(config_path, "DiT config")
    check_config(config, DIT_CONFIG_TYPES, config_path)
    layout = "diffusers" if config.get("_class_name") == "WanTransformer3DModel" else "official"
    parts.dit[role] = Part("DiT", folder, "folder", layout, role=role, config=config)
    return True


# --------------------------------------------------------------------------------------- diffusers
def _scan_diffusers(folder, parts):
    parts.layout = "diffusers"
    index = read_json(os.path.join(folder, "model_index.json"), "model_index.json")

    def component(name):
        spec = index.get(name)
        return spec is not None and isinstance(spec, list) and spec[0] is not None

    parts.boundary_ratio = index.get("boundary_ratio")
    parts.expand_timesteps = bool(index.get("expand_timesteps", False))
    # transformer = high-noise expert when transformer_2 (the low-noise one) exists
    roles = {"transformer": "high", "transformer_2": "low"} if component("transformer_2") else {"transformer": "main"}
    for name, role in roles.items():
        part = _diffusers_component(folder, name, "DiT", DIT_WEIGHTS, parts, "dit", component(name))
        if part is not None:
            part.role = role
            parts.dit[role] = part
    parts.vae = _diffusers_component(folder, "vae", "VAE", DIT_WEIGHTS, parts, "vae", component("vae"))
    if parts.vae is not None:
        parts.vae_mean = parts.vae.config.get("latents_mean")
        parts.vae_std = parts.vae.config.get("latents_std")
    parts.t5 = _diffusers_component(folder, "text_encoder", "T5", "model", parts, "t5", component("text_encoder"))
    tok = os.path.join(folder, "tokenizer")
    problem = _tokenizer_problem(tok) if component("tokenizer") else "model_index.json lists no tokenizer"
    if problem:
        parts.missing["tokenizer"] = problem
    else:
        parts.tokenizer = Part("tokenizer", tok, "folder", "diffusers")
    if component("image_encoder"):
        parts.clip = _diffusers_component(folder, "image_encoder", "CLIP", "model", parts, "clip", True)


def _diffusers_component(folder, name, what, weights_prefix, parts, part_name, listed):
    if not listed:
        parts.missing[part_name] = f"model_index.json lists no {name}"
        return None
    sub = os.path.join(folder, name)
    config_path = os.path.join(sub, "config.json")
    problem = (f"{name}/config.json not found" if not os.path.isfile(config_path)
               else _weights_problem(sub, weights_prefix))
    if problem:
        previous = parts.missing.get(part_name)
        parts.missing[part_name] = f"{previous}; {problem}" if previous else problem
        return None
    return Part(what, sub, "folder", "diffusers", config=read_json(config_path, f"{name} config"))


# --------------------------------------------------------------------------------------- checks
def _weights_problem(folder, prefix):
    """None when `<prefix>.safetensors` or its index and every listed shard exist, else what is missing."""
    single = os.path.join(folder, f"{prefix}.safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return None
    if not os.path.isfile(index):
        return f"{_short(single)} (or its .index.json) not found"
    weight_map = read_json(index, "safetensors index").get("weight_map", {})
    absent = sorted({name for name in weight_map.values() if not os.path.isfile(os.path.join(folder, name))})
    if not weight_map:
        return f"{_short(index)} lists no shards"
    if absent:
        more = f" (+{len(absent) - 1} more)" if len(absent) > 1 else ""
        return f"shard {_short(os.path.join(folder, absent[0]))} not found{more}"
    return None


def _tokenizer_problem(folder):
    if not os.path.isdir(folder):
        return f"tokenizer folder {_short(folder)} not found"
    if not any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        return f"tokenizer folder {_short(folder)} has none of {', '.join(TOKENIZER_FILES)}"
    return None


def _short(path):
    """The last two path components: enough to name a file inside a snapshot."""
    head, tail = os.path.split(os.path.normpath(path))
    return os.path.join(os.path.basename(head), tail)


# --------------------------------------------------------------------------------------- overrides
def _apply_overrides(parts, dit, dit_high, dit_low, vae, t5, clip, tokenizer):
    if dit is not None:
        if parts.has_experts():
            log.info("dit=%s replaces the two experts of %s by one DiT", dit, parts.source)
        parts.dit = {"main": _file_part("DiT", dit, role="main")}
        parts.missing.pop("dit", None)
    for role, path in (("high", dit_high), ("low", dit_low)):
        if path is None:
            continue
        parts.dit.pop("main", None)
        parts.dit[role] = _file_part("DiT", path, role=role)
        _check_role_hint(path, role)
    if dit_high is not None or dit_low is not None:
        parts.missing.pop("dit", None)
        for role in ("high", "low"):
            if role not in parts.dit:
                parts.missing["dit"] = f"the {role}-noise expert was not given (dit_{role})"
    for name, what, path in (("vae", "VAE", vae), ("t5", "T5", t5), ("clip", "CLIP", clip)):
        if path is not None:
            setattr(parts, name, _file_part(what, path))
            parts.missing.pop(name, None)
    if tokenizer is not None:
        problem = _tokenizer_problem(tokenizer)
        if problem:
            raise CheckpointError(problem)
        parts.tokenizer = Part("tokenizer", os.fspath(tokenizer), "folder", "file")
        parts.missing.pop("tokenizer", None)
    _parts_inside_files(parts, given_vae=vae is not None or parts.vae is not None,
                        given_t5=t5 is not None or parts.t5 is not None)


def _file_part(what, path, role=None):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{what} file not found: {path}")
    container = container_of(path)
    config, layout = None, "file"
    if container == "folder":
        config_path = os.path.join(path, "config.json")
        config = read_json(config_path, f"{what} config") if os.path.isfile(config_path) else None
        diffusers = config is not None and "_diffusers_version" in config and config.get("_class_name") != "WanModel"
        layout = "diffusers" if diffusers else "official"
    return Part(what, path, container, layout, role=role, config=config)


def _check_role_hint(path, role):
    """Expert roles cannot be read from the weights: warn when the file name says the other one."""
    name = os.path.basename(os.path.normpath(path)).lower()
    other = "low" if role == "high" else "high"
    if any(hint in name for hint in ROLE_HINTS[other]) and not any(hint in name for hint in ROLE_HINTS[role]):
        log.warning("%s is given as the %s-noise expert but its name says %s-noise", path, role, other)


def role_hint(path):
    """'high', 'low' or None: the expert role a file or folder name suggests."""
    name = os.path.basename(os.path.normpath(os.fspath(path))).lower()
    hits = [role for role, hints in ROLE_HINTS.items() if any(hint in name for hint in hints)]
    return hits[0] if len(hits) == 1 else None


def _safetensors_keys(path):
    try:
        with safe_open(path, framework="pt") as f:
            return set(f.keys())
    except Exception:  # the reader reports unreadable files with the part that needs them
        return set()


def _parts_inside_files(parts, given_vae, given_t5):
    """An all-in-one DiT file also supplies the VAE and T5 when none was given; a ComfyUI T5 file
    carries its tokenizer (`spiece_model`)."""
    main = parts.dit.get("main")
    if main is not None and main.container == "safetensors" and not (given_vae and given_t5):
        keys = _safetensors_keys(main.path)
        for name, marker in AIO_PARTS.items():
            if marker in keys and getattr(parts, name) is None:
                setattr(parts, name, Part({"vae": "VAE", "t5": "T5"}[name], main.path, "safetensors", "all-in-one"))
                parts.missing.pop(name, None)
    if parts.tokenizer is None and parts.t5 is not None and parts.t5.container == "safetensors":
        if any(k.endswith(SPIECE_KEY) for k in _safetensors_keys(parts.t5.path)):
            parts.tokenizer = Part("tokenizer", parts.t5.path, "embedded", "file")
            parts.missing.pop("tokenizer", None)


# --------------------------------------------------------------------------------------- tokenizer
def tokenizer_folder(part, cache_dir=None):
    """A local tokenizer folder for `part`: the folder itself, or one written (once, atomically)
    from the sentencepiece model a ComfyUI text-encoder file embeds."""
    if part.container == "folder":
        return part.path
    with safe_open(part.path, framework="pt") as f:
        key = next((k for k in f.keys() if k.endswith(SPIECE_KEY)), None)
        if key is None:
            raise CheckpointError(f"{part.path} embeds no tokenizer ({SPIECE_KEY})")
        proto = f.get_tensor(key).numpy().tobytes()
    digest = hashlib.sha256(proto).hexdigest()[:16]
    root = cache_dir or os.path.join(tempfile.gettempdir(), "wan-tokenizers")
    target = os.path.join(root, digest)
    if os.path.isdir(target):
        return target
    tokenizer = tokenizer_from_sentencepiece(proto, source=part.path)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(dir=root, prefix=".partial-")
    try:
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isdir(target):  # not a concurrent writer that won the race
            raise
    return target


def tokenizer_from_sentencepiece(proto, source="sentencepiece model"):
    """A T5 tokenizer whose ids are the sentencepiece model's piece ids (as umt5 was trained)."""
    import sentencepiece
    from transformers import T5Tokenizer

    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except Exception as exc:
        raise CheckpointError(f"{source}: the embedded tokenizer is not a sentencepiece model ({exc})") from None
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


__all__ = ["CheckpointParts", "Part", "locate", "resolve_source", "tokenizer_folder", "role_hint"]
