"""Checkpoint loading for every layout practitioners hold, and LoRA adapters.

    from wan.loading import locate, read_dit, build_dit, apply_lora
    parts = locate("Wan-AI/Wan2.2-TI2V-5B-Diffusers")          # or a folder, or single files
    state, config = read_dit(parts.experts()[0])               # official key names + detected config
    model = build_dit(state, config, dtype=torch.bfloat16)
    handle = apply_lora(model, "lightning.safetensors", strength=1.0)
    ...
    handle.unload()                                            # the original weights, bit for bit

See docs/FORMATS.md for what loads and how it is detected.
"""
from .build import build_dit, build_t5, build_vae
from .lora import LoraHandle, LoraSpec, apply_lora, apply_loras, read_lora
from .readers import check_dit_for_task, read_clip, read_dit, read_t5, read_vae
from .sources import CheckpointParts, Part, locate, role_hint, tokenizer_folder

__all__ = [
    "CheckpointParts", "Part", "locate", "role_hint", "tokenizer_folder",
    "read_dit", "read_vae", "read_t5", "read_clip", "check_dit_for_task",
    "build_dit", "build_vae", "build_t5",
    "LoraHandle", "LoraSpec", "apply_lora", "apply_loras", "read_lora",
]
