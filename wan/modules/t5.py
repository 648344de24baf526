"""The umt5-xxl text encoder: the official Wan `.pth` loaded into transformers' `UMT5EncoderModel`.

The official encoder (wan/modules/t5.py upstream) and HF's UMT5 encoder are the same network:
per-layer relative position bias (no shared table), T5 RMSNorm, unscaled attention, gated tanh-GELU
feed-forward, untied embedding without scaling. Only the parameter names differ; the table below
renames official keys to HF keys on load. The architecture is read from the checkpoint's tensor
shapes, so a tiny checkpoint in the official layout loads through the same path as the real one.
"""
import re

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..errors import CheckpointError
from ..utils.checkpoint import check_state_dict, load_into, load_pth
from .tokenizers import HuggingfaceTokenizer

# Fixed by the umt5 architecture rather than stored in the checkpoint.
RELATIVE_MAX_DISTANCE = 128
NORM_EPS = 1e-6
DROPOUT = 0.1  # inactive: the encoder always runs in eval mode

# Official names outside the blocks -> HF names.
_GLOBAL_NAMES = {
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
}
# Official names inside `blocks.N.` -> HF names inside `encoder.block.N.`.
_BLOCK_NAMES = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    # The official FFN is fc2(fc1(x) * gelu(gate(x))); HF's is wo(gelu(wi_0(x)) * wi_1(x)).
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
# HF keeps the encoder's embedding as a second name for `shared.weight`.
_TIED_EMBEDDING = "encoder.embed_tokens.weight"
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
# Keys whose shapes define the architecture.
_SHAPE_KEYS = (
    "token_embedding.weight",
    "blocks.0.attn.q.weight",
    "blocks.0.ffn.fc1.weight",
    "blocks.0.pos_embedding.embedding.weight",
)


def official_to_hf_names(num_layers):
    """Official key -> HF `UMT5EncoderModel` key, for an encoder with `num_layers` blocks."""
    names = dict(_GLOBAL_NAMES)
    for n in range(num_layers):
        for official, hf in _BLOCK_NAMES.items():
            names[f"blocks.{n}.{official}"] = f"encoder.block.{n}.{hf}"
    return names


def umt5_config(vocab_size=256384, dim=4096, dim_attn=None, dim_ffn=10240, num_heads=64, num_layers=24,
                num_buckets=32):
    """UMT5Config of an encoder-only umt5 (defaults: umt5-xxl as used by Wan)."""
    dim_attn = dim if dim_attn is None else dim_attn
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=dim,
        d_kv=dim_attn // num_heads,
        d_ff=dim_ffn,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=RELATIVE_MAX_DISTANCE,
        layer_norm_epsilon=NORM_EPS,
        feed_forward_proj="gated-gelu",  # gelu_new, i.e. tanh GELU, as the official GELU(approximate='tanh')
        dropout_rate=DROPOUT,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        # SDPA replaces masked positions' bias with the dtype minimum, as the official encoder does.
        attn_implementation="sdpa",
    )


def meta_umt5_encoder(config):
    """UMT5EncoderModel with every tensor on the meta device: no memory, weights assigned later."""
    with torch.device("meta"):
        return UMT5EncoderModel(config)


def official_t5_shapes(**dims):
    """Official key -> shape for an encoder of the given size (keyword args of `umt5_config`), read
    from a meta-device HF model through the name table, so it checks the table as well."""
    config = umt5_config(**dims)
    hf_shapes = {k: tuple(v.shape) for k, v in meta_umt5_encoder(config).state_dict().items()}
    names = official_to_hf_names(config.num_layers)
    unmapped = hf_shapes.keys() - set(names.values()) - {_TIED_EMBEDDING}
    unknown = set(names.values()) - hf_shapes.keys()
    if unmapped or unknown:  # a transformers release renamed UMT5 parameters
        raise RuntimeError(f"UMT5EncoderModel layout changed: unmapped {sorted(unmapped)}, unknown {sorted(unknown)}")
    return {official: hf_shapes[hf] for official, hf in names.items()}


def infer_t5_dims(state, source):
    """Encoder size from the official checkpoint's tensor shapes (head count from the relative
    bias table [buckets, heads])."""
    missing = [k for k in _SHAPE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{source} is not a umt5 encoder checkpoint; missing keys: {', '.join(missing)}")
    not_matrix = [k for k in _SHAPE_KEYS if state[k].dim() != 2]
    if not_matrix:
        raise CheckpointError(f"{source}: expected 2-d tensors for {', '.join(not_matrix)}")
    vocab_size, dim = state["token_embedding.weight"].shape
    dim_attn = state["blocks.0.attn.q.weight"].shape[0]
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    if dim_attn % num_heads:
        raise CheckpointError(f"{source}: attention width {dim_attn} is not a multiple of {num_heads} heads")
    blocks = {int(m.group(1)) for m in map(_BLOCK_INDEX.match, state) if m}
    return dict(
        vocab_size=vocab_size,
        dim=dim,
        dim_attn=dim_attn,
        dim_ffn=state["blocks.0.ffn.fc1.weight"].shape[0],
        num_heads=num_heads,
        num_layers=max(blocks) + 1,
        num_buckets=num_buckets,
    )


def load_umt5_encoder(checkpoint_path, dtype=torch.bfloat16):
    """The official encoder `.pth` as an eval-mode HF UMT5EncoderModel on CPU, in `dtype`.

    Built on the meta device and filled by assignment, so the (mmapped) checkpoint tensors become the
    parameters and the 5.7B-parameter encoder is never held twice."""
    return umt5_encoder_from_state(load_pth(checkpoint_path, "T5 checkpoint"), checkpoint_path, dtype)


def umt5_encoder_from_state(state, source, dtype=torch.bfloat16):
    """An official-key encoder state dict already in memory as an eval-mode HF UMT5EncoderModel."""
    dims = infer_t5_dims(state, source)
    check_state_dict(official_t5_shapes(**dims), state, source)
    names = official_to_hf_names(dims["num_layers"])
    hf_state = {names[k]: v for k, v in state.items()}
    hf_state[_TIED_EMBEDDING] = hf_state["shared.weight"]
    model = meta_umt5_encoder(umt5_config(**dims))
    load_into(model, hf_state, source, dtype=dtype)
    # Assignment gave the two embedding names separate Parameters; share one module again so that
    # moving the model to a device copies the 2 GB table once.
    model.set_input_embeddings(model.shared)
    return model.eval().requires_grad_(False)


class T5EncoderModel:
    """Prompts -> umt5 hidden states, as the official `wan.modules.t5.T5EncoderModel`.

    text_len: tokens per prompt (padding and truncation). dtype: parameter dtype. device: where the
    model is placed (the default is the CPU; nothing here touches CUDA at import time).
    checkpoint_path: official `models_t5_umt5-xxl-enc-bf16.pth`. tokenizer_path: the
    `google/umt5-xxl` tokenizer folder. shard_fn: optional wrapper (e.g. FSDP) applied to the model
    instead of moving it to `device`."""

    def __init__(self, text_len, dtype=torch.bfloat16, device="cpu", checkpoint_path=None, tokenizer_path=None,
                 shard_fn=None):
        if checkpoint_path is None or tokenizer_path is None:
            raise CheckpointError("T5EncoderModel needs checkpoint_path (the umt5 .pth) and tokenizer_path "
                                  "(the google/umt5-xxl folder)")
        self._setup(text_len, dtype, device, checkpoint_path, tokenizer_path, shard_fn,
                    lambda: load_umt5_encoder(checkpoint_path, dtype))

    @classmethod
    def from_state_dict(cls, state, tokenizer_path, text_len=512, dtype=torch.bfloat16, device="cpu", shard_fn=None,
                        source="T5 state dict"):
        """The encoder from an official-key state dict already in memory (e.g. wan.loading.read_t5)."""
        encoder = cls.__new__(cls)
        encoder._setup(text_len, dtype, device, source, tokenizer_path, shard_fn,
                       lambda: umt5_encoder_from_state(state, source, dtype))
        return encoder

    def _setup(self, text_len, dtype, device, checkpoint_path, tokenizer_path, shard_fn, build):
        self.text_len = text_len
        self.dtype = dtype
        self.device = torch.device(device)
        self.checkpoint_path = checkpoint_path
        self.tokenizer_path = tokenizer_path
        # Tokenizer first: a missing folder fails before gigabytes of weights are read.
        self.tokenizer = HuggingfaceTokenizer(name=tokenizer_path, seq_len=text_len, clean="whitespace")
        model = build()
        if shard_fn is not None:
            self.model = shard_fn(model, sync_module_states=False)
        else:
            self.model = model.to(self.device)

    @torch.no_grad()
    def __call__(self, texts, device):
        """Encode prompts; returns one [L_i, dim] tensor per prompt on `device`, where L_i counts the
        prompt's tokens including EOS (padding rows dropped)."""
        ids, mask = self.tokenizer(texts, return_mask=True, add_special_tokens=True)
        seq_lens = mask.sum(dim=1)
        # Padding is on the right and masked out of every attention, so positions past the longest
        # prompt cannot change the kept rows: run only up to it instead of all text_len positions.
        longest = int(seq_lens.max())
        model_device = next(self.model.parameters()).device
        ids = ids[:, :longest].to(model_device)
        mask = mask[:, :longest].to(model_device)
        context = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return [u[:n].to(device) for u, n in zip(context, seq_lens.tolist())]
