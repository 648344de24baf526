"""Tiny checkpoints in every non-official format, written by independent means where one exists:
diffusers' own save_pretrained for pipeline folders, the `gguf` package's writer for GGUF files,
and hand-built ComfyUI files (prefixes, fp8 with per-tensor scales, T5 in HF names with an
embedded tokenizer, all-in-one). Tests compare what the loaders read from them with the official
tensors they were made from.
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from ..modules.convert import official_config_to_diffusers, official_to_diffusers_keys
from ..modules.model import WanModel
from ..modules.t5 import official_to_hf_names
from ..utils.fileio import atomic_path
from .randomize import randomize_

# Wide enough for K-quants (rows of 256 elements) and for the head count rule (dim / 128).
TINY_DIT = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, freq_dim=256, text_dim=32)
GGUF_KEEP_FLOAT = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.",
                   "img_emb.", "head.")


def tiny_dit(model_type="ti2v", in_dim=48, out_dim=48, seed=0, **overrides):
    """A random tiny WanModel in fp32."""
    return randomize_(WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, **{**TINY_DIT, **overrides}),
                      seed).eval()


def save_safetensors(state, path, metadata=None):
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return path


def write_comfy_dit(state, path, prefix="", dtype=torch.float16):
    """A ComfyUI-style DiT file: official names under `prefix`, cast to `dtype`."""
    return save_safetensors({prefix + k: v.to(dtype) for k, v in state.items()}, path)


def fp8_scaled(state, marker=True, scale_name="scale_weight"):
    """ComfyUI fp8_scaled tensors: each 2-D weight stored as float8_e4m3fn of weight / s with
    s = amax / 448 and `<module>.<scale_name>` = s; other tensors kept; plus the `scaled_fp8` marker."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.dim() == 2 and key.startswith("blocks."):
            scale = value.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + scale_name] = scale.reshape(())
        else:
            out[key] = value.to(torch.bfloat16)
    if marker:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def write_gguf(state, path, qtype="Q8_0", arch="wan", raw_tensors=None):
    """A GGUF file written by the `gguf` package: block linear weights in `qtype` (quantised by
    gguf itself), the tensors city96's converter keeps in float as F32. `raw_tensors`:
    name -> (uint8 blocks, qtype name, torch shape) written as given (K-quants, which gguf
    cannot quantise)."""
    import gguf

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    kind = gguf.GGMLQuantizationType[qtype]
    for key, value in state.items():
        array = value.float().numpy()
        block = gguf.GGML_QUANT_SIZES[kind][0]
        quantise = (value.dim() == 2 and value.shape[-1] % block == 0 and qtype not in ("F32", "F16")
                    and not any(fragment in key for fragment in GGUF_KEEP_FLOAT + ("attn_rel_b",)))
        if quantise:
            writer.add_tensor(key, gguf.quants.quantize(array, kind), raw_dtype=kind)
        elif qtype == "F16" and value.dim() > 1:
            writer.add_tensor(key, array.astype(np.float16))
        else:
            writer.add_tensor(key, array)
    for key, (blocks, name, _shape) in (raw_tensors or {}).items():
        writer.add_tensor(key, blocks, raw_dtype=gguf.GGMLQuantizationType[name])
    with atomic_path(path) as tmp:
        writer.write_header_to_file(path=str(tmp))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def random_k_blocks(qtype, shape, seed=0):
    """Random, finite blocks of a K-quant type for a tensor of `shape` (rows of 256)."""
    from ..loading.gguf import DEQUANTIZERS

    _, per_block, block_bytes = DEQUANTIZERS[qtype]
    rng = np.random.default_rng(seed)
    rows, cols = shape
    blocks = rng.integers(0, 256, (rows * cols // per_block, block_bytes), dtype=np.uint8)
    scales = (rng.normal(size=(blocks.shape[0], 2)) * 1e-3).astype(np.float16).view(np.uint8)
    fields = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[qtype]
    for i, start in enumerate(fields):  # fp16 scale fields: small finite values
        blocks[:, start:start + 2] = scales[:, 2 * i:2 * i + 2]
    return blocks.reshape(rows, -1)


# ---------------------------------------------------------------------------------------- T5
def hf_t5_state(official_state):
    """Official umt5 names -> HF names (as ComfyUI and diffusers store them)."""
    layers = 1 + max(int(k.split(".")[1]) for k in official_state if k.startswith("blocks."))
    names = official_to_hf_names(layers)
    return {names[k]: v for k, v in official_state.items()}


def gguf_t5_names(hf_state):
    """HF umt5 names -> llama.cpp names (city96's umt5 GGUF files)."""
    from ..loading.gguf import T5_GGUF_NAMES

    out = {}
    for key, value in hf_state.items():
        for gguf_name, hf_name in reversed(T5_GGUF_NAMES):
            key = key.replace(hf_name, gguf_name)
        out[key] = value
    return out


def sentencepiece_bytes(tokenizer_dir):
    """A serialized sentencepiece unigram model with the pieces and scores of a tiny T5 tokenizer
    folder (tokenizer.json), as ComfyUI embeds one in its text-encoder files."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    vocab = read_json(os.path.join(tokenizer_dir, "tokenizer.json"))["model"]["vocab"]
    kinds = model_pb2.ModelProto.SentencePiece
    special = {0: kinds.CONTROL, 1: kinds.CONTROL, 2: kinds.UNKNOWN}  # umt5: pad 0, eos 1, unk 2
    proto = model_pb2.ModelProto()
    for index, (piece, score) in enumerate(vocab):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, special.get(index, kinds.NORMAL)
    spec = proto.trainer_spec
    spec.model_type = model_pb2.TrainerSpec.UNIGRAM
    spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id = 0, 1, 2, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    data = proto.SerializeToString()
    sentencepiece.SentencePieceProcessor(model_proto=data)  # refuses a malformed model
    return data


def spiece_tensor(data):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------- diffusers
def diffusers_transformer(model):
    """WanTransformer3DModel with the weights of an official WanModel."""
    from diffusers import WanTransformer3DModel

    twin = WanTransformer3DModel(**official_config_to_diffusers(model))
    twin.load_state_dict(official_to_diffusers_keys(model.state_dict()), strict=True)
    return twin


def write_diffusers_pipeline(folder, transformers, vae, text_encoder, tokenizer, boundary_ratio=None,
                             expand_timesteps=False):
    """A Diffusers Wan pipeline folder written by diffusers' own save_pretrained."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformers[0], transformer_2=transformers[1] if len(transformers) > 1 else None,
                       boundary_ratio=boundary_ratio, expand_timesteps=expand_timesteps)
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size="300KB")
    return folder


def write_hf_cache_repo(cache_dir, repo_id, files, commit="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache entry for `repo_id` (refs/main, snapshots/<commit>/..., blobs/ with
    relative symlinks), holding `files`: relative path -> source file path to copy."""
    import hashlib
    import shutil

    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for relative, source in files.items():
        with open(source, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        blob = os.path.join(repo, "blobs", digest)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        if not os.path.exists(blob):
            shutil.copyfile(source, blob)
        link = os.path.join(repo, "snapshots", commit, relative)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    return os.path.join(repo, "snapshots", commit)


def folder_files(folder):
    """relative path -> path of every file below `folder`."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = path
    return out


def read_json(path):
    with open(path) as f:
        return json.load(f)

