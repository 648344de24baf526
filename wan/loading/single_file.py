"""Single-file checkpoints as ComfyUI users hold them: key prefixes, all-in-one files, and fp8
weights with ComfyUI's per-tensor scales.

Prefixes: stand-alone DiT files are bare or carry `model.diffusion_model.` (or `diffusion_model.`,
`model.`); an all-in-one checkpoint holds the DiT under `model.diffusion_model.`, the VAE under
`vae.` and the text encoder under `text_encoders.umt5xxl.transformer.`. Each component is found by
a marker key under one of its known prefixes and cut out of the file with that prefix removed.

fp8 ("fp8_scaled"): a float8 `<module>.weight` comes with a scalar `<module>.scale_weight` (older
files, marked by a `scaled_fp8` tensor) or `<module>.weight_scale` (newer files, with per-layer
`comfy_quant` tensors or `_quantization_metadata`); the true weight is the fp8 value times the
scale. Such weights become ScaledFP8Weight objects, so nothing can use them without the scale. A
plain fp8 cast (no marker, no scales) is the same with scale 1.
"""
import logging

from ..errors import CheckpointError
from .quantized import FP8_FORMATS, ScaledFP8Weight

log = logging.getLogger(__name__)

# component -> (marker key in official or diffusers naming, prefixes to try)
COMPONENT_MARKERS = {
    "dit": (("head.modulation", "scale_shift_table"),
            ("", "model.diffusion_model.", "diffusion_model.", "model.", "transformer.")),
    "vae": (("decoder.conv1.weight", "decoder.conv_in.weight"), ("", "vae.", "model.", "first_stage_model.")),
    "t5": (("token_embedding.weight", "shared.weight", "encoder.final_layer_norm.weight", "token_embd.weight"),
           ("", "text_encoders.umt5xxl.transformer.", "text_encoders.umt5xxl.", "text_encoder.")),
}
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")  # only used by fp8 input quantisation
QUANT_MARKERS = ("scaled_fp8",)
QUANT_INFO_SUFFIX = ".comfy_quant"


def component_subset(state, component, source):
    """(keys of `component` with their prefix removed, prefix) from a file that may hold several
    components; a one-line error when the file holds no such component."""
    markers, prefixes = COMPONENT_MARKERS[component]
    for prefix in prefixes:
        if any(prefix + marker in state for marker in markers):
            if not prefix:
                return dict(state), prefix
            subset = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            others = len(state) - len(subset)
            if others:
                log.info("%s: using the %d tensors under %r (%d others belong to other parts)",
                         source, len(subset), prefix, others)
            return subset, prefix
    names = {"dit": "Wan DiT", "vae": "Wan VAE", "t5": "umt5 text encoder"}
    raise CheckpointError(f"{source} holds no {names[component]} (looked for {markers[0]!r} "
                          f"under the prefixes {', '.join(repr(p) for p in prefixes)})")


def is_scaled_fp8(state, metadata):
    """Whether the file declares ComfyUI fp8 scaling (then every fp8 weight needs its scale)."""
    return (any(k in state for k in QUANT_MARKERS) or "_quantization_metadata" in (metadata or {})
            or any(k.endswith(QUANT_INFO_SUFFIX) for k in state))


def resolve_fp8(state, metadata, source):
    """Replace fp8 weights (and their scales) by ScaledFP8Weight objects; drop the markers.

    A scaled file whose fp8 weight has no scale, or a scale without an fp8 weight, is an error: a
    wrong guess would give weights off by the scale factor and no error at all."""
    scaled = is_scaled_fp8(state, metadata)
    out, scales = {}, {}
    for key, value in state.items():
        if key in QUANT_MARKERS or key.endswith(QUANT_INFO_SUFFIX) or key.endswith(INPUT_SCALE_SUFFIXES):
            continue
        suffix = next((s for s in SCALE_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            scales[key[: -len(suffix)] + ".weight"] = value
        else:
            out[key] = value
    for key, value in list(out.items()):
        if getattr(value, "dtype", None) not in FP8_FORMATS:
            continue
        scale = scales.pop(key, None)
        if scale is None:
            if scaled:
                raise CheckpointError(f"{source} is an fp8-scaled file but {key} has no scale_weight/weight_scale")
            scale = 1.0
        out[key] = ScaledFP8Weight(value, scale)
    if scales:
        raise CheckpointError(f"{source} has scales for tensors that are not fp8: {', '.join(sorted(scales)[:4])}")
    return out


def describe_storage(state):
    """'bf16', 'fp8 x scale + bf16', 'Q4_K + F32', ...: the stored types of a state dict, most common first."""
    counts = {}
    for value in state.values():
        kind = getattr(value, "kind", None) or str(value.dtype).removeprefix("torch.")
        counts[kind] = counts.get(kind, 0) + 1
    return " + ".join(kind for kind, _ in sorted(counts.items(), key=lambda item: -item[1]))
