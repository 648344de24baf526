"""Write a random-weight TI2V-5B checkpoint in the official layout, quickly, at full size or scaled.

    python bench/checkpoint_writer.py /tmp/ckpt-ti2v-5B                 # full size: ~34 GB, about a minute
    python bench/checkpoint_writer.py --scale 0.25 /tmp/ckpt-small      # widths x0.25: CPU-sized

What a user downloads, file for file: `config.json` and `diffusion_pytorch_model-0000N-of-00003
.safetensors` with their index (fp32 by default, as the official DiT shards; --dit_dtype bf16 for a
converted copy), `Wan2.2_VAE.pth` (fp32), `models_t5_umt5-xxl-enc-bf16.pth` (bf16) and the
`google/umt5-xxl` tokenizer folder (wan.tools' small tokenizer: its ids index the full embedding
table). Every script loads it through the same code as the real checkpoint.

Values: N(0, 1/fan_in) for matrices and kernels, 1 +- 0.1 for norm gains, 0 +- 0.1 for the rest,
tiled from a few pre-drawn blocks (finite, deterministic; random weights time the same as real ones,
and tiling writes at disk speed instead of drawing 10 billion numbers). The safetensors shards are
written tensor by tensor without holding the model in memory; the .pth files go through torch.save.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wan.configs import WAN_CONFIGS  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from wan.modules.t5 import official_t5_shapes  # noqa: E402
from wan.modules.vae2_2 import WanVAE_  # noqa: E402
from wan.tools.tiny_t5 import T5_CHECKPOINT_NAME, T5_TOKENIZER_NAME, build_tiny_tokenizer  # noqa: E402
from wan.utils.fileio import atomic_path, torch_save_atomic, write_json_atomic  # noqa: E402

TI2V_5B = dict(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
               text_len=512, freq_dim=256, text_dim=4096)
UMT5_XXL = dict(vocab_size=256384, dim=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32)
DIT_SHARDS = 3
BLOCK = (1 << 22) + 7  # values per pre-drawn block; odd, so tiled rows do not line up exactly
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


class Filler:
    """Deterministic random tensors made by tiling pre-drawn blocks, one block per (scale, mean, dtype)."""

    def __init__(self, seed=0):
        self.base = torch.randn(BLOCK, generator=torch.Generator().manual_seed(seed))
        self.blocks = {}

    def block(self, name, shape, dtype):
        if len(shape) >= 2:
            mean, std = 0.0, math.prod(shape[1:]) ** -0.5
        else:
            mean, std = (1.0 if "norm" in name or "gamma" in name else 0.0), 0.1
        key = (mean, round(std, 9), dtype)
        if key not in self.blocks:
            self.blocks[key] = (self.base * std + mean).to(dtype)
        return self.blocks[key]

    def tensor(self, name, shape, dtype):
        out = torch.empty(shape, dtype=dtype)
        flat, block = out.view(-1), self.block(name, shape, dtype)
        for start in range(0, flat.numel(), BLOCK):
            n = min(BLOCK, flat.numel() - start)
            flat[start:start + n] = block[:n]
        return out

    def write_bytes(self, f, name, shape, dtype):
        """Write the tensor's raw little-endian bytes to f, block by block."""
        block, total = self.block(name, shape, dtype), math.prod(shape)
        raw = block.view(torch.uint8).numpy()
        size = block.element_size()
        for start in range(0, total, BLOCK):
            n = min(BLOCK, total - start)
            f.write(memoryview(raw[: n * size]))


def scaled(value, scale, multiple):
    return max(multiple, int(round(value * scale / multiple)) * multiple)


def t5_dims(scale):
    dims = dict(UMT5_XXL)
    if scale != 1.0:
        dims.update(vocab_size=scaled(dims["vocab_size"], scale, 256), dim=scaled(dims["dim"], scale, 64),
                    dim_ffn=scaled(dims["dim_ffn"], scale, 64))
    return dims


def dit_config(scale):
    config = dict(TI2V_5B, text_dim=t5_dims(scale)["dim"])  # the DiT reads the text encoder's width
    if scale != 1.0:
        config["dim"] = scaled(config["dim"], scale, 128)
        config["ffn_dim"] = scaled(config["ffn_dim"], scale, 128)
        config["num_heads"] = config["dim"] // 128
    return config


def write_safetensors(path, shapes, dtype, filler):
    """One safetensors file of `shapes` (name -> shape), written without building the tensors."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    itemsize = torch.tensor([], dtype=dtype).element_size()
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape in shapes.items():
            filler.write_bytes(f, name, shape, dtype)
    return offset


def write_dit(folder, scale, dtype, filler):
    config = dit_config(scale)
    with torch.device("meta"):
        model = WanModel(**config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    write_json_atomic(os.path.join(folder, "config.json"), {"_class_name": "WanModel", "_diffusers_version": "0.33.0",
                                                            **model.config})
    total = sum(math.prod(s) for s in shapes.values())
    names, shards, current, size = list(shapes), [], [], 0
    per_shard = math.ceil(total / DIT_SHARDS)
    for name in names:
        current.append(name)
        size += math.prod(shapes[name])
        if size >= per_shard:
            shards.append(current)
            current, size = [], 0
    if current:
        shards.append(current)
    weight_map, nbytes = {}, 0
    for i, shard in enumerate(shards):
        file_name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        nbytes += write_safetensors(os.path.join(folder, file_name), {k: shapes[k] for k in shard}, dtype, filler)
        weight_map.update({k: file_name for k in shard})
    write_json_atomic(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"),
                      {"metadata": {"total_size": nbytes}, "weight_map": weight_map})
    return nbytes


def write_t5(folder, scale, filler):
    shapes = official_t5_shapes(**t5_dims(scale))
    state = {name: filler.tensor(name, shape, torch.bfloat16) for name, shape in shapes.items()}
    torch_save_atomic(state, os.path.join(folder, T5_CHECKPOINT_NAME))
    build_tiny_tokenizer().save_pretrained(os.path.join(folder, T5_TOKENIZER_NAME))
    return sum(t.numel() * 2 for t in state.values())


def write_vae(folder, scale, filler):
    with torch.device("meta"):
        vae = WanVAE_(dim=scaled(160, scale, 8), dec_dim=scaled(256, scale, 8), z_dim=48)
    state = {k: filler.tensor(k, tuple(v.shape), torch.float32) for k, v in vae.state_dict().items()}
    torch_save_atomic(state, os.path.join(folder, WAN_CONFIGS["ti2v-5B"].vae_checkpoint))
    return sum(t.numel() * 4 for t in state.values())


def write_checkpoint(folder, scale=1.0, dit_dtype=torch.float32, seed=0):
    """Write every file; returns {part: (bytes, seconds)}."""
    os.makedirs(folder, exist_ok=True)
    filler, written = Filler(seed), {}
    for part, write in (("DiT", lambda: write_dit(folder, scale, dit_dtype, filler)),
                        ("T5", lambda: write_t5(folder, scale, filler)),
                        ("VAE", lambda: write_vae(folder, scale, filler))):
        start = time.perf_counter()
        nbytes = write()
        written[part] = (nbytes, time.perf_counter() - start)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--scale", type=float, default=1.0, help="width factor (1.0: the real sizes)")
    parser.add_argument("--dit_dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    dtype = torch.float32 if args.dit_dtype == "fp32" else torch.bfloat16
    for part, (nbytes, seconds) in write_checkpoint(args.folder, args.scale, dtype).items():
        print(f"{part}: {nbytes / 1e9:.2f} GB in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
