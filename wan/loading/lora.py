"""LoRA adapters for the Wan DiT: every key variant in circulation, merged or applied at run time.

Key variants (P is a module path, official or diffusers naming, e.g. blocks.3.cross_attn.k or
blocks.3.attn2.to_k):
  prefixes  diffusion_model. / model.diffusion_model. / transformer. / base_model.model. / pipe.dit. /
            lora_unet_ and lycoris_ (dots written as underscores) / none
  low rank  P.lora_down.weight + P.lora_up.weight, or P.lora_A[.default].weight + P.lora_B[.default].weight,
            optional P.alpha (scale alpha / rank; no alpha: scale 1)
  full      P.diff (a delta of P.weight), P.diff_b or P.lora_B.bias (of P.bias), Q.diff_m (of Q.modulation)

Semantics: W' = W + strength * scale * (up @ down), computed in fp32 and cast back once. Merging
costs nothing at run time and is reversible bit for bit (the touched tensors are kept, on the
CPU, until `unload`). Weights stored quantised (GGUF, fp8) are never merged into: their layers get
the low-rank term added to their output in each forward instead (`runtime`), so small deltas are
not lost to the quantisation grid. Keys that fit no layer of the model are returned and logged,
never dropped silently; a file that fits nothing, or whose shapes do not fit, is a one-line error.
"""
import logging
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, WanInputError
from ..modules.convert import diffusers_to_official_keys
from .files import read_tensors

log = logging.getLogger(__name__)

# Longest first, so 'model.diffusion_model.' wins over 'model.'
PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "pipe.dit.")
UNDERSCORE_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_")
# suffix -> (entry field, parameter of the module it changes)
SUFFIXES = (
    (".lora_A.default.weight", "down", "weight"), (".lora_B.default.weight", "up", "weight"),
    (".lora_down.weight", "down", "weight"), (".lora_up.weight", "up", "weight"),
    (".lora_A.weight", "down", "weight"), (".lora_B.weight", "up", "weight"),
    (".lora_B.bias", "diff", "bias"),
    (".alpha", "alpha", "weight"),
    (".diff_b", "diff", "bias"), (".diff_m", "diff", "modulation"), (".diff", "diff", "weight"),
    (".dora_scale", "dora", "weight"),
)
_DIFFUSERS_FRAGMENTS = re.compile(r"(attn[12]\.|ffn\.net\.|condition_embedder\.|proj_out|scale_shift_table|norm2\.)")


@dataclass
class LoraSpec:
    """A LoRA to apply: a file (or a state dict), its strength, and which expert(s) it is for:
    'all' (every DiT), 'high' or 'low' (one A14B expert)."""

    source: object
    strength: float = 1.0
    expert: str = "all"

    @classmethod
    def parse(cls, text, expert="all"):
        """'FILE' or 'FILE:STRENGTH' (the strength is whatever follows the last colon, if a number)."""
        path, sep, tail = str(text).rpartition(":")
        if sep:
            try:
                return cls(path, float(tail), expert)
            except ValueError:
                pass
        return cls(str(text), 1.0, expert)


@dataclass
class _Change:
    """What one LoRA does to one parameter of the model."""

    target: str  # official parameter name, e.g. blocks.0.self_attn.q.weight
    down: torch.Tensor = None
    up: torch.Tensor = None
    alpha: float = None
    diff: torch.Tensor = None
    keys: list = field(default_factory=list)

    @property
    def low_rank(self):
        return self.down is not None or self.up is not None

    @property
    def scale(self):
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]

    def delta(self, shape):
        """The full fp32 change of the parameter (before strength)."""
        total = torch.zeros(shape, dtype=torch.float32)
        if self.diff is not None:
            total += self.diff.float().reshape(shape)
        if self.low_rank:
            total += (self.scale * (self.up.float().flatten(1) @ self.down.float().flatten(1))).reshape(shape)
        return total


def read_lora(source):
    """(tensors, name) of a LoRA file or an in-memory state dict."""
    if isinstance(source, dict):
        return dict(source), "LoRA state dict"
    path = os.fspath(source)
    tensors, _ = read_tensors(path, what="LoRA")
    return tensors, path


def _split_key(key):
    """(module path, field, parameter, underscored) of a LoRA key, or None if it is no LoRA key."""
    underscored = False
    for prefix in UNDERSCORE_PREFIXES:
        if key.startswith(prefix):
            key, underscored = key[len(prefix):], True
            break
    else:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
    for suffix, kind, param in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind, param, underscored
    return None


def _official_module_path(path):
    """Diffusers module paths (attn1.to_q, ffn.net.0.proj, proj_out, ...) -> official ones."""
    if not _DIFFUSERS_FRAGMENTS.search(path):
        return path
    try:
        renamed, = diffusers_to_official_keys({f"{path}.weight": None})
    except CheckpointError:
        return path
    return renamed[: -len(".weight")]


def _collect(tensors, model, name):
    """LoRA tensors -> {target parameter: _Change} and the keys that fit nothing in `model`."""
    modules = dict(model.named_modules())
    underscored_names = {n.replace(".", "_"): n for n in modules if n}
    changes, unmatched = {}, []
    for key, value in tensors.items():
        parsed = _split_key(key)
        if parsed is None:
            unmatched.append(key)
            continue
        path, kind, param, underscored = parsed
        if kind == "dora":
            raise CheckpointError(f"{name}: DoRA keys ({key}) are not supported")
        path = underscored_names.get(path, path) if underscored else _official_module_path(path)
        if param == "modulation":  # diff_m belongs to the block (or head) that owns the table
            target = f"{path}.modulation"
        elif path in modules:
            target = f"{path}.{param}"
        else:
            target = None
        if target is None or _parameter_shape(model, modules, target) is None:
            unmatched.append(key)
            continue
        change = changes.setdefault(target, _Change(target))
        change.keys.append(key)
        if kind == "alpha":
            change.alpha = float(value)
        else:
            setattr(change, kind, value)
    return changes, unmatched


def _parameter_shape(model, modules, target):
    """Shape of `target` in the model, also for weights held quantised; None if absent."""
    path, _, leaf = target.rpartition(".")
    module = modules.get(path)
    if module is None:
        return None
    if leaf == "weight" and _is_quantised_linear(module):
        stored = getattr(module, "weight_fp8", None)  # FP8Linear keeps no in/out sizes
        return stored.shape if stored is not None else torch.Size((module.out_features, module.in_features))
    value = getattr(module, leaf, None)
    return value.shape if isinstance(value, torch.Tensor) else None


def _is_quantised_linear(module):
    """Layers whose weight is not a plain tensor: QuantizedLinear (GGUF, fp8 x scale) and FP8Linear."""
    return hasattr(module, "weight_as") or hasattr(module, "weight_fp8")


def _check(changes, model, name):
    modules = dict(model.named_modules())
    for target, change in changes.items():
        shape = _parameter_shape(model, modules, target)
        if change.diff is not None and change.diff.numel() != shape.numel():
            raise CheckpointError(f"{name}: {change.keys[0]} has shape {list(change.diff.shape)}, "
                                  f"but {target} is {list(shape)} (a LoRA for another model size?)")
        if not change.low_rank:
            if change.alpha is not None:
                raise CheckpointError(f"{name}: {target} has an alpha but no LoRA pair")
            continue
        if change.down is None or change.up is None:
            raise CheckpointError(f"{name}: {target} has only half of its LoRA pair ({', '.join(change.keys)})")
        rank_down, rank_up = change.down.shape[0], change.up.shape[1]
        if rank_down != rank_up:
            raise CheckpointError(f"{name}: rank mismatch at {target}: down has rank {rank_down}, up {rank_up}")
        out_in = (change.up.shape[0], change.down[0].numel())
        if out_in != (shape[0], shape[1:].numel()):
            raise CheckpointError(f"{name}: {target} is {list(shape)}, the LoRA gives {out_in[0]}x{out_in[1]} "
                                  "(a LoRA for another model size?)")


class _RuntimeTerm:
    """What a LoRA adds to a linear layer's output, computed from the layer's input in each
    forward: strength * (diff x + scale * up(down(x))). The factors are converted to the input's
    device and dtype once per device/dtype."""

    def __init__(self, change, strength):
        self.change, self.strength = change, strength
        self.cached_for, self.factors = None, {}

    def _factors(self, x):
        if self.cached_for != (x.device, x.dtype):
            change = self.change
            named = {"diff": change.diff, "down": change.down, "up": change.up}
            self.factors = {k: v.to(x.device, x.dtype) for k, v in named.items() if v is not None}
            self.cached_for = (x.device, x.dtype)
        return self.factors

    def __call__(self, module, inputs, output):
        x = inputs[0]
        factors = self._factors(x)
        term = 0
        if "diff" in factors:
            term = F.linear(x, factors["diff"]) * self.strength
        if "down" in factors:
            term = term + F.linear(F.linear(x, factors["down"]), factors["up"]) * (self.strength * self.change.scale)
        return output + term.to(output.dtype)


class LoraHandle:
    """One applied LoRA: `unload()` removes it (merged tensors restored bit for bit). `unmatched`
    lists the file's keys that fit no layer; `merged` / `runtime` the parameters it changed."""

    def __init__(self, model, name, strength, unmatched, reversible):
        self.model, self.name, self.strength, self.unmatched = model, name, strength, unmatched
        self.reversible = reversible
        self.merged, self.runtime = [], []
        self._originals, self._hooks = {}, []
        self.active = True

    def unload(self):
        if not self.active:
            return
        if self.merged and not self.reversible:
            raise WanInputError(f"LoRA {self.name} was merged with reversible=False; its original weights are gone")
        stacks = self.model.__dict__.setdefault("_lora_merge_stacks", {})
        later = [t for t in self._originals if stacks.get(t, [self])[-1] is not self]
        if later:
            raise WanInputError(f"LoRA {self.name} cannot be unloaded before the LoRAs applied after it "
                                f"(they also changed {later[0]}); unload in the reverse order")
        params = dict(self.model.named_parameters())
        for target, original in self._originals.items():
            params[target].data.copy_(original)
            stacks[target].pop()
        for hook in self._hooks:
            hook.remove()
        self._originals.clear()
        self.active = False
        log.info("LoRA %s unloaded", self.name)

    def __repr__(self):
        return (f"LoraHandle({self.name!r}, strength={self.strength}, merged={len(self.merged)}, "
                f"runtime={len(self.runtime)}, unmatched={len(self.unmatched)})")


def apply_lora(model, source, strength=1.0, mode="auto", reversible=True):
    """Apply a LoRA (file path or state dict) to a WanModel; returns a LoraHandle.

    mode 'auto': merge into plain weights, run-time terms for quantised layers; 'merge': refuse
    quantised layers; 'runtime': run-time terms for every linear weight (biases, norms and
    modulation tables are always merged). reversible=False skips keeping the original tensors
    (less memory; `unload` then refuses)."""
    if mode not in ("auto", "merge", "runtime"):
        raise WanInputError(f"mode must be 'auto', 'merge' or 'runtime', got {mode!r}")
    tensors, name = read_lora(source)
    changes, unmatched = _collect(tensors, model, name)
    if not changes:
        example = next(iter(tensors), "none")
        raise CheckpointError(f"{name} fits no layer of this Wan DiT ({len(tensors)} keys, e.g. {example}): "
                              "a LoRA for another architecture?")
    _check(changes, model, name)
    handle = LoraHandle(model, name, strength, unmatched, reversible)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    stacks = model.__dict__.setdefault("_lora_merge_stacks", {})
    with torch.no_grad():
        for target, change in changes.items():
            path, _, leaf = target.rpartition(".")
            module = modules[path]
            linear_weight = leaf == "weight" and (isinstance(module, nn.Linear) or _is_quantised_linear(module))
            if linear_weight and (_is_quantised_linear(module) or mode == "runtime"):
                if mode == "merge":
                    raise CheckpointError(f"{name}: {path} is stored quantised; it cannot be merged into "
                                          "(use mode='auto' or 'runtime')")
                handle._hooks.append(module.register_forward_hook(_RuntimeTerm(change, strength)))
                handle.runtime.append(target)
                continue
            param = params[target]
            if reversible:
                handle._originals[target] = param.detach().to("cpu", copy=True)
                stacks.setdefault(target, []).append(handle)
            delta = change.delta(param.shape).to(param.device)
            param.copy_((param.float() + strength * delta).to(param.dtype))
            handle.merged.append(target)
    log.info("LoRA %s (strength %g): %d tensors merged, %d layers at run time", name, strength,
             len(handle.merged), len(handle.runtime))
    if unmatched:
        log.warning("LoRA %s: %d keys fit no layer of this model and were not applied, e.g. %s", name,
                    len(unmatched), ", ".join(unmatched[:3]))
    return handle


def apply_loras(experts, specs, mode="auto", reversible=True):
    """Apply LoraSpecs to DiT experts ({'main': model} or {'high': ..., 'low': ...}); returns the
    handles in application order. A spec for one expert on a single-DiT model is an error; a spec
    for every expert whose file name names one expert is applied as asked, with a warning."""
    from .sources import role_hint

    handles = []
    for spec in specs:
        if spec.expert == "all":
            targets = list(experts.values())
            hinted = role_hint(spec.source) if not isinstance(spec.source, dict) else None
            if hinted and len(experts) > 1:
                log.warning("LoRA %s is named for the %s-noise expert but is applied to every expert", spec.source,
                            hinted)
        elif spec.expert in experts:
            targets = [experts[spec.expert]]
        else:
            raise WanInputError(f"LoRA {spec.source} is for the {spec.expert}-noise expert, but the model has "
                                f"{', '.join(experts)} DiT(s)")
        for model in targets:
            handles.append(apply_lora(model, spec.source, spec.strength, mode=mode, reversible=reversible))
    return handles
