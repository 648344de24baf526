"""Convert Wan checkpoints between layouts, optionally merging LoRAs into the DiT weights.

    python -m wan.tools.convert SOURCE OUT --to official|diffusers|single-file [--dtype bf16]
    python -m wan.tools.convert Wan-AI/Wan2.2-TI2V-5B-Diffusers ./ti2v-official --to official
    python -m wan.tools.convert ./Wan2.2-T2V-A14B ./wan-a14b.safetensors --to single-file \\
        --lora_high lightning_high.safetensors --lora_low lightning_low.safetensors
    python -m wan.tools.convert - ./merged.safetensors --to single-file --dit wan.gguf --lora style.safetensors:0.8

SOURCE is anything wan.loading.locate accepts ('-' for none: parts from --dit/--vae/--t5/...).
Quantised inputs (GGUF, fp8) are dequantised into --dtype. 'official' writes a Wan checkpoint
folder, 'diffusers' a Diffusers pipeline folder, 'single-file' ComfyUI-style DiT safetensors
(official names; A14B experts as <name>_high_noise / <name>_low_noise).
"""
import logging
import os
import shutil

import torch

from ..loading import LoraSpec, apply_loras, build_dit, locate, read_dit, read_t5, read_vae, tokenizer_folder
from ..loading.diffusers import HF_TIED_EMBEDDING, diffusers_vae_config, official_vae_to_diffusers
from ..loading.readers import dequantized
from ..loading.sources import OFFICIAL_EXPERTS, OFFICIAL_T5, OFFICIAL_TOKENIZER
from ..modules.convert import official_config_to_diffusers, official_to_diffusers_keys
from ..modules.t5 import official_to_hf_names, umt5_config
from ..utils.checkpoint import save_sharded_safetensors
from ..errors import WanInputError
from ..cli import ArgumentParser, run_cli, setup_logging
from ..utils.fileio import atomic_path, torch_save_atomic, write_json_atomic

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TARGETS = ("official", "diffusers", "single-file")
SHARD_BYTES = 5 * 2 ** 30
DIFFUSERS_ROLES = {"main": "transformer", "high": "transformer", "low": "transformer_2"}


def load_experts(parts, dtype, lora_specs):
    """{role: WanModel} with the LoRAs merged (fp32 merge, cast once to dtype)."""
    experts = {}
    for role, part in parts.dit.items():
        state, config = read_dit(part)
        experts[role] = build_dit(dequantized(state, dtype), config, dtype=dtype)
    if lora_specs:  # the merged weights are the output: no originals kept
        apply_loras(experts, lora_specs, mode="merge", reversible=False)
    return experts


def write_official(parts, experts, out, dtype):
    os.makedirs(out, exist_ok=True)
    for role, model in experts.items():
        model.save_pretrained(out if role == "main" else os.path.join(out, OFFICIAL_EXPERTS[role]), SHARD_BYTES)
    if parts.vae is not None:
        state, config = read_vae(parts.vae, dtype=torch.float32)  # the official VAE files are fp32
        torch_save_atomic(state, os.path.join(out, f"Wan{config['version']}_VAE.pth"))
    if parts.t5 is not None:
        state, _ = read_t5(parts.t5, dtype=torch.bfloat16)
        torch_save_atomic(state, os.path.join(out, OFFICIAL_T5))
    if parts.tokenizer is not None:
        _copy_folder(tokenizer_folder(parts.tokenizer), os.path.join(out, OFFICIAL_TOKENIZER))


def write_diffusers(parts, experts, out, dtype):
    os.makedirs(out, exist_ok=True)
    index = {"_class_name": "WanPipeline", "_diffusers_version": "0.35.0",
             "scheduler": ["diffusers", "UniPCMultistepScheduler"], "transformer_2": [None, None],
             "boundary_ratio": parts.boundary_ratio, "expand_timesteps": any(m.model_type == "ti2v"
                                                                             for m in experts.values())}
    for role, model in experts.items():
        name = DIFFUSERS_ROLES[role]
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        config = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0",
                  **official_config_to_diffusers(model)}
        config["patch_size"] = list(config["patch_size"])
        write_json_atomic(os.path.join(folder, "config.json"), config)
        save_sharded_safetensors(official_to_diffusers_keys(model.state_dict()), folder, "diffusion_pytorch_model",
                                 SHARD_BYTES)
        index[name] = ["diffusers", "WanTransformer3DModel"]
    if parts.vae is not None:
        state, config = read_vae(parts.vae, dtype=dtype)
        folder = os.path.join(out, "vae")
        os.makedirs(folder, exist_ok=True)
        vae_config = diffusers_vae_config(config["version"], config["dim"], config["z_dim"], config["dec_dim"],
                                          config["mean"], config["std"])
        write_json_atomic(os.path.join(folder, "config.json"), {**vae_config, "_diffusers_version": "0.35.0"})
        save_sharded_safetensors(official_vae_to_diffusers(state, config["version"]), folder,
                                 "diffusion_pytorch_model", SHARD_BYTES)
        index["vae"] = ["diffusers", "AutoencoderKLWan"]
    if parts.t5 is not None:
        state, dims = read_t5(parts.t5, dtype=dtype)
        folder = os.path.join(out, "text_encoder")
        os.makedirs(folder, exist_ok=True)
        config = umt5_config(**dims).to_dict()
        config.update(architectures=["UMT5EncoderModel"], torch_dtype=str(dtype).removeprefix("torch."))
        write_json_atomic(os.path.join(folder, "config.json"), config)
        names = official_to_hf_names(dims["num_layers"])
        # transformers ties encoder.embed_tokens to shared on load; the file holds the table once
        hf_state = {names[k]: v for k, v in state.items() if names[k] != HF_TIED_EMBEDDING}
        save_sharded_safetensors(hf_state, folder, "model", SHARD_BYTES)
        index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
    if parts.tokenizer is not None:
        _copy_folder(tokenizer_folder(parts.tokenizer), os.path.join(out, "tokenizer"))
        index["tokenizer"] = ["transformers", "AutoTokenizer"]
    scheduler = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
                 "use_flow_sigmas": True, "num_train_timesteps": 1000,
                 "flow_shift": 5.0 if index["expand_timesteps"] else 3.0}
    write_json_atomic(os.path.join(out, "scheduler", "scheduler_config.json"), scheduler)
    write_json_atomic(os.path.join(out, "model_index.json"), index)


def write_single_file(experts, out, dtype, prefix=""):
    from safetensors.torch import save_file

    stem, ext = os.path.splitext(out)
    for role, model in experts.items():
        path = out if role == "main" else f"{stem}_{role}_noise{ext or '.safetensors'}"
        state = {prefix + k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        log.info("wrote %s (%d tensors)", path, len(state))


def _copy_folder(source, target):
    if os.path.isdir(target):
        shutil.rmtree(target)
    shutil.copytree(source, target)


def convert(source, out, to, dtype=torch.bfloat16, loras=(), prefix="", **files):
    """Library entry point: see the module docstring. `loras`: LoraSpec list; `files`: dit,
    dit_high, dit_low, vae, t5, clip, tokenizer paths as for wan.loading.locate."""
    if to not in TARGETS:
        raise WanInputError(f"to must be one of {', '.join(TARGETS)}, got {to!r}")
    need = ("dit",) if to == "single-file" else ()
    parts = locate(source, need=need, **files)
    experts = load_experts(parts, dtype, list(loras))
    if to == "official":
        write_official(parts, experts, out, dtype)
    elif to == "diffusers":
        write_diffusers(parts, experts, out, dtype)
    else:
        write_single_file(experts, out, dtype, prefix)
    return out


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder, HF repo id, or '-' for parts given only as files")
    parser.add_argument("out")
    parser.add_argument("--to", choices=TARGETS, required=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--prefix", default="", help="single-file key prefix, e.g. model.diffusion_model.")
    for name in ("dit", "dit_high", "dit_low", "vae", "t5", "clip", "tokenizer"):
        parser.add_argument(f"--{name}", default=None)
    parser.add_argument("--lora", action="append", default=[], help="FILE[:STRENGTH], merged into every DiT")
    parser.add_argument("--lora_high", action="append", default=[], help="FILE[:STRENGTH], high-noise expert only")
    parser.add_argument("--lora_low", action="append", default=[], help="FILE[:STRENGTH], low-noise expert only")
    args = parser.parse_args(argv)
    setup_logging()
    loras = ([LoraSpec.parse(t) for t in args.lora] + [LoraSpec.parse(t, "high") for t in args.lora_high]
             + [LoraSpec.parse(t, "low") for t in args.lora_low])
    files = {name: getattr(args, name) for name in ("dit", "dit_high", "dit_low", "vae", "t5", "clip", "tokenizer")}
    with torch.no_grad():
        convert(None if args.source == "-" else args.source, args.out, args.to, DTYPES[args.dtype], loras,
                args.prefix, **files)
    log.info("wrote %s (%s)", args.out, args.to)


if __name__ == "__main__":
    run_cli(main)
