"""The shipped checkpoint: the official TI2V-5B folder layout, read back by the same classes that
load the real TI2V-5B, plus a model card and a provenance file; and packing a run folder for a
transport that takes few, small files.

    config.json, diffusion_pytorch_model.safetensors   WanModel (EMA weights, bf16, one file)
    Wan2.2_VAE.pth                                     Wan2_2_VAE (bf16 state dict)
    models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/  T5EncoderModel
    README.md, provenance.json                         model card; seeds, versions, steps, sha256
"""
import hashlib
import json
import os
import shutil
import tarfile

import torch

from ...errors import WanInputError
from ...modules.model import WanModel
from ...modules.vae2_2 import Wan2_2_VAE
from ...tools.tiny_t5 import T5_CHECKPOINT_NAME, T5_TOKENIZER_NAME
from ...utils.fileio import atomic_path, write_json_atomic
from ..world import HEIGHT, SPEC_VERSION, WIDTH
from .common import DIT_WEIGHTS, MODEL_CARD_FILE, PROVENANCE_FILE, VAE_FILE, log
from .text import load_text_encoder

MAX_FILE_BYTES = 16 * 2 ** 20
MAX_TOTAL_BYTES = 32 * 10 ** 6
REQUIRED = ("config.json", f"{DIT_WEIGHTS}.safetensors", VAE_FILE, T5_CHECKPOINT_NAME,
            os.path.join(T5_TOKENIZER_NAME, "tokenizer_config.json"))
SMALL_FILES_ARCHIVE = "small_files.tar"


def files_under(folder):
    """Relative paths of every file under `folder`, sorted."""
    found = []
    for root, _, names in os.walk(folder):
        found.extend(os.path.relpath(os.path.join(root, name), folder) for name in names)
    return sorted(found)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_complete(folder):
    missing = [name for name in REQUIRED if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise WanInputError(f"checkpoint folder {folder} is incomplete (missing {', '.join(missing)}); "
                            "the vae and dit stages write these files")


def check_sizes(folder):
    """Every file under MAX_FILE_BYTES, all together under MAX_TOTAL_BYTES; returns the sizes."""
    sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in files_under(folder)}
    too_big = [f"{name} ({size / 2 ** 20:.1f} MiB)" for name, size in sizes.items() if size >= MAX_FILE_BYTES]
    if too_big:
        raise WanInputError(f"checkpoint files over 16 MiB: {', '.join(too_big)}")
    if sum(sizes.values()) > MAX_TOTAL_BYTES:
        raise WanInputError(f"checkpoint folder {folder} holds {sum(sizes.values()) / 1e6:.1f} MB; the budget is "
                            f"{MAX_TOTAL_BYTES / 1e6:.0f} MB")
    return sizes


@torch.no_grad()
def verify_loads(folder):
    """Load every part with the inference classes, exactly as the TI2V-5B pipeline does, on the
    CPU; returns a few facts for the model card."""
    dit = WanModel.from_pretrained(folder)
    vae = Wan2_2_VAE(vae_pth=os.path.join(folder, VAE_FILE), device="cpu")
    encoder = load_text_encoder(folder, "cpu")
    context = encoder(["a red circle on a black background."], torch.device("cpu"))[0]
    if context.shape[1] != dit.text_dim:
        raise WanInputError(f"{folder}: the text encoder gives {context.shape[1]} features, the DiT expects "
                            f"{dit.text_dim}")
    return {
        "dit_parameters": sum(p.numel() for p in dit.parameters()),
        "dit_config": dit.config,
        "vae_parameters": sum(p.numel() for p in vae.model.parameters()),
        "vae_widths": [vae.model.encoder.conv1.weight.shape[0], vae.model.decoder.head[2].weight.shape[1]],
        "text_encoder_parameters": sum(p.numel() for p in encoder.model.parameters()),
        "tokenizer_pieces": len(encoder.tokenizer.tokenizer),
    }


def finish_export(folder, state):
    """Check the folder, load it back, then write README.md and provenance.json (sha256 of
    every other file). Returns the provenance."""
    check_complete(folder)
    facts = verify_loads(folder)
    with atomic_path(os.path.join(folder, MODEL_CARD_FILE)) as tmp:
        tmp.write_text(model_card(state, facts))
    sizes = check_sizes(folder)
    provenance = {
        "spec_version": SPEC_VERSION,
        "seeds": {"base": state["seed"], "text_encoder": state["seed"], "vae_init": state["seed"] + 1,
                  "dit_init": state["seed"] + 2},
        "torch_version": torch.__version__,
        "trained_sizes": [f"{WIDTH}*{HEIGHT}"],  # generate.py warns only for sizes outside these
        "architecture": facts,
        "final_losses": final_losses(state),
        "training": state,
        "files": {name: {"bytes": size, "sha256": sha256_of(os.path.join(folder, name))}
                  for name, size in sizes.items() if name != PROVENANCE_FILE},
    }
    write_json_atomic(os.path.join(folder, PROVENANCE_FILE), provenance)
    total = sum(os.path.getsize(os.path.join(folder, name)) for name in files_under(folder))
    log.info("export: %s, %d files, %.1f MB, largest %.1f MiB; loads through WanModel, Wan2_2_VAE, "
             "T5EncoderModel", folder, len(sizes) + (PROVENANCE_FILE not in sizes), total / 1e6,
             max(sizes.values()) / 2 ** 20)
    return provenance


def final_losses(state):
    """The last logged training losses of both stages and the DiT's held-out losses by sigma."""
    def last(curve):
        return curve[-1][2] if curve else None

    vae, dit = state.get("vae", {}), state.get("dit", {})
    return {"vae_train": last(vae.get("loss_curve")), "dit_train": last(dit.get("loss_curve")),
            "dit_held_out_ema": dit.get("held_out_loss_ema"), "vae_held_out_psnr_db": vae.get("gates", {}).get(
                "psnr_mean_db")}


def model_card(state, facts):
    vae, dit = state.get("vae", {}), state.get("dit", {})
    gates = vae.get("gates", {})
    config = facts["dit_config"]
    head_dim = config["dim"] // config["num_heads"]
    encoder_width, decoder_width = facts["vae_widths"]
    image_share = dit.get("recipe", {}).get("image_share", float("nan"))
    parts = [
        (f"DiT (`diffusion_pytorch_model.safetensors`, {dit.get('shipped', 'ema').upper()} weights)",
         f"ti2v, dim {config['dim']}, ffn {config['ffn_dim']}, {config['num_heads']} heads of {head_dim}, "
         f"{config['num_layers']} layers", f"{facts['dit_parameters'] / 1e6:.2f} M"),
        ("VAE (`Wan2.2_VAE.pth`)", f"Wan2.2 structure, encoder width {encoder_width}, decoder width "
         f"{decoder_width}, 48 latent channels", f"{facts['vae_parameters'] / 1e6:.2f} M"),
        ("text encoder (`models_t5_umt5-xxl-enc-bf16.pth`)", "umT5 layout, dim 64, 2 layers, frozen random weights",
         f"{facts['text_encoder_parameters'] / 1e6:.2f} M"),
        ("tokenizer (`google/umt5-xxl/`)", "SentencePiece, every caption word one piece, umT5 special ids",
         f"{facts['tokenizer_pieces']} pieces"),
    ]
    table = "\n".join(f"| {name} | {what} | {size} |" for name, what, size in parts)
    return f"""# Toy Wan2.2 TI2V ({SPEC_VERSION})

A miniature text+image-to-video model with the file layout and key names of Wan2.2 TI2V-5B,
trained from scratch on the procedural world {SPEC_VERSION} (flat-coloured shapes bouncing over
a static background, 256x256, 17 or 33 frames). It loads through the same classes as the real
TI2V-5B (`WanModel.from_pretrained`, `Wan2_2_VAE`, `T5EncoderModel`), so every pipeline, editor
and speed option of this toolkit runs on a model that really learned its world, with exact
ground truth to score against. It is not a general video model.

## Parts

| part | configuration | parameters |
|---|---|---|
{table}

All weights are stored in bf16. The VAE's latent statistics are folded into its first and last
1x1x1 convolutions, so the official MEAN/STD constants of the Wan2.2 VAE give unit latents.

## Training

- VAE: {vae.get('steps', 0)} steps, {vae.get('seconds', 0):.0f} s; held-out 17-frame PSNR
  {gates.get('psnr_mean_db', float('nan')):.2f} dB (min {gates.get('psnr_min_db', float('nan')):.2f} dB).
- DiT: {dit.get('steps', 0)} steps, {dit.get('seconds', 0):.0f} s, {dit.get('clips_seen', 0)} clip samples;
  flow matching (x_sigma = (1 - sigma) x0 + sigma eps, target eps - x0), {image_share:.0%} image-conditioned
  samples; the recipe's settings are in `provenance.json`.
- Held-out loss by sigma (image-conditioned), shipped {dit.get('shipped', 'ema').upper()} weights:
  {dit.get('held_out_loss_' + dit.get('shipped', 'ema'), {})}

Recipe, retraining and the two traps (fused RMS-norm gains, latent statistics):
`docs/TRAINING.md` in the toolkit. Seeds, versions, step counts and file hashes:
`provenance.json`.

## Captions

`<a|an> <colour> <shape>[ moving <slowly|quickly> <direction>| standing still][ and ...] on
<a|an> <background> background.`; the default negative prompt was the caption-dropout target,
so classifier-free guidance with it has a trained unconditional branch.

## Limits

Trained at 256x256 with 17 and 33 frames only. About 7 M DiT parameters: use it to rank speed
options and catch breakage, not to predict the quality of the 5B model.
"""


def pack_for_transport(root, pack_dir, big_bytes=2 ** 20, max_files=8):
    """Copy a run folder into `pack_dir` as few files: each file of `big_bytes` or more as itself
    (same relative path), all smaller ones in one tar archive. Unpack with
    `tar -xf small_files.tar` inside the copied folder."""
    files = files_under(root)
    big = [name for name in files if os.path.getsize(os.path.join(root, name)) >= big_bytes]
    small = [name for name in files if name not in big]
    for name in big:
        target = os.path.join(pack_dir, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(root, name), target)
    if small:
        with atomic_path(os.path.join(pack_dir, SMALL_FILES_ARCHIVE)) as tmp:
            with tarfile.open(tmp, "w") as archive:
                for name in small:
                    archive.add(os.path.join(root, name), arcname=name)
    packed = files_under(pack_dir)
    sizes = {name: os.path.getsize(os.path.join(pack_dir, name)) for name in packed}
    log.info("pack: %d files, %.1f MB in %s: %s", len(packed), sum(sizes.values()) / 1e6, pack_dir,
             json.dumps({name: round(size / 2 ** 20, 2) for name, size in sizes.items()}))
    if len(packed) > max_files or max(sizes.values(), default=0) > MAX_FILE_BYTES:
        log.warning("pack: more than %d files or a file over 16 MiB; a device call will not bring all back",
                    max_files)
    return sizes
