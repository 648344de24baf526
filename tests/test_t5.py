"""umt5 text encoder: official key layout, parity with transformers and with a hand-written
reference on the same weights, text cleaning and trimming, and loading errors."""
import json
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from wan.errors import CheckpointError
from wan.modules.t5 import T5EncoderModel, official_t5_shapes
from wan.modules.tokenizers import clean_text
from wan.tools.tiny_t5 import T5_CHECKPOINT_NAME, T5_TOKENIZER_NAME, write_tiny_t5

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests", "umt5_xxl_encoder.json")
DIMS = dict(dim=32, heads=4, ffn=64, layers=2, buckets=32)
TEXT_LEN = 40
PROMPTS = [
    "A cinematic shot of a red fox running through a snowy forest at sunrise.",
    "Two cats fight.",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("t5"))
    vocab_size = write_tiny_t5(folder, seed=3, **DIMS)
    return folder, vocab_size


def paths(folder):
    return os.path.join(folder, T5_CHECKPOINT_NAME), os.path.join(folder, T5_TOKENIZER_NAME)


def load_encoder(folder, dtype=torch.float32, text_len=TEXT_LEN, **kwargs):
    checkpoint, tokenizer = paths(folder)
    return T5EncoderModel(text_len, dtype=dtype, device="cpu", checkpoint_path=checkpoint,
                          tokenizer_path=tokenizer, **kwargs)


def official_state(folder):
    return torch.load(paths(folder)[0], map_location="cpu", weights_only=True)


def tokenize(folder, texts, text_len=TEXT_LEN):
    tokenizer = AutoTokenizer.from_pretrained(paths(folder)[1])
    enc = tokenizer([clean_text(t) for t in texts], padding="max_length", max_length=text_len, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def rel_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---- independent oracles (own key mapping, own config, own forward) -------------------------------

def hf_state_from_official(state, num_layers):
    """Official -> HF names, written out here independently of the library's table."""
    hf = {"shared.weight": state["token_embedding.weight"],
          "encoder.embed_tokens.weight": state["token_embedding.weight"],
          "encoder.final_layer_norm.weight": state["norm.weight"]}
    for n in range(num_layers):
        src, dst = f"blocks.{n}.", f"encoder.block.{n}.layer."
        hf[dst + "0.layer_norm.weight"] = state[src + "norm1.weight"]
        for proj in "qkvo":
            hf[dst + f"0.SelfAttention.{proj}.weight"] = state[src + f"attn.{proj}.weight"]
        hf[dst + "0.SelfAttention.relative_attention_bias.weight"] = state[src + "pos_embedding.embedding.weight"]
        hf[dst + "1.layer_norm.weight"] = state[src + "norm2.weight"]
        hf[dst + "1.DenseReluDense.wi_0.weight"] = state[src + "ffn.gate.0.weight"]
        hf[dst + "1.DenseReluDense.wi_1.weight"] = state[src + "ffn.fc1.weight"]
        hf[dst + "1.DenseReluDense.wo.weight"] = state[src + "ffn.fc2.weight"]
    return {k: v.float() for k, v in hf.items()}


def transformers_oracle(state):
    vocab_size, dim = state["token_embedding.weight"].shape
    config = UMT5Config(vocab_size=vocab_size, d_model=dim, d_kv=dim // DIMS["heads"], d_ff=DIMS["ffn"],
                        num_layers=DIMS["layers"], num_heads=DIMS["heads"],
                        relative_attention_num_buckets=DIMS["buckets"], relative_attention_max_distance=128,
                        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                        attn_implementation="eager")
    model = UMT5EncoderModel(config).eval()
    model.load_state_dict(hf_state_from_official(state, DIMS["layers"]), strict=True)
    return model


def reference_bucket(rel, num_buckets, max_distance=128):
    """WAN_REFERENCE section 7: half the buckets per side, exact below half of that, log above."""
    half = num_buckets // 2
    exact = half // 2
    dist = rel.abs()
    log_bucket = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (half - exact)).long()
    bucket = torch.where(dist < exact, dist, log_bucket.clamp(max=half - 1))
    return bucket + (rel > 0).long() * half


def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_encoder(state, ids, mask):
    """The official umt5 encoder restated from WAN_REFERENCE section 7, in fp32."""
    s = {k: v.float() for k, v in state.items()}
    heads, layers = DIMS["heads"], DIMS["layers"]
    batch, length = ids.shape
    x = s["token_embedding.weight"][ids]
    positions = torch.arange(length)
    buckets = reference_bucket(positions[None, :] - positions[:, None], DIMS["buckets"])
    for n in range(layers):
        p = f"blocks.{n}."
        h = rms_norm(x, s[p + "norm1.weight"])
        q, k, v = (F.linear(h, s[p + f"attn.{name}.weight"]).view(batch, length, heads, -1) for name in "qkv")
        bias = s[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        bias = bias.expand(batch, -1, -1, -1).masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        attn = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) + bias, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(batch, length, -1)
        x = x + F.linear(out, s[p + "attn.o.weight"])
        h = rms_norm(x, s[p + "norm2.weight"])
        gated = F.linear(h, s[p + "ffn.fc1.weight"]) * F.gelu(F.linear(h, s[p + "ffn.gate.0.weight"]),
                                                              approximate="tanh")
        x = x + F.linear(gated, s[p + "ffn.fc2.weight"])
    return rms_norm(x, s["norm.weight"])


# ---- 1. official layout -----------------------------------------------------------------------------

def test_full_size_key_set_and_shapes_match_manifest():
    with open(MANIFEST) as f:
        manifest = {k: tuple(shape) for k, (shape, _dtype) in json.load(f)["keys"].items()}
    assert official_t5_shapes() == manifest  # built on the meta device: no memory


def test_tiny_checkpoint_has_official_key_names_in_bf16(tmp_path):
    write_tiny_t5(str(tmp_path), dim=8, heads=2, ffn=16, layers=24, buckets=32)
    state = official_state(str(tmp_path))
    with open(MANIFEST) as f:
        assert state.keys() == json.load(f)["keys"].keys()
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path))


def test_tiny_tokenizer_has_umt5_special_ids_and_splits_prompts(tiny_dir):
    folder, vocab_size = tiny_dir
    tokenizer = AutoTokenizer.from_pretrained(paths(folder)[1])
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert 200 <= vocab_size == len(tokenizer) <= 5000
    ids = tokenizer(PROMPTS[0]).input_ids
    assert len(ids) > 8 and ids[-1] == 1 and tokenizer.unk_token_id not in ids
    assert len(tokenizer(PROMPTS[2]).input_ids) > 5  # Chinese tokenizes (no crash)


# ---- 2. parity ----------------------------------------------------------------------------------------

def test_parity_with_transformers_and_hand_written_reference(tiny_dir):
    folder, _ = tiny_dir
    ours = load_encoder(folder)(PROMPTS, torch.device("cpu"))
    state = official_state(folder)
    ids, mask = tokenize(folder, PROMPTS)
    with torch.no_grad():
        oracle = transformers_oracle(state)(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = reference_encoder(state, ids, mask)
    lengths = mask.sum(1).tolist()
    assert [u.shape for u in ours] == [(n, DIMS["dim"]) for n in lengths]
    assert len(set(lengths)) == len(lengths)  # prompts of different lengths exercise the padding mask
    for u, hf, hand, n in zip(ours, oracle, by_hand, lengths):
        assert u.dtype == torch.float32
        assert rel_error(u, hf[:n]) <= 1e-5
        assert rel_error(u, hand[:n]) <= 1e-5


def test_outputs_trimmed_to_tokens_including_eos_and_truncated_to_text_len(tiny_dir):
    folder, _ = tiny_dir
    encoder = load_encoder(folder)
    tokenizer = AutoTokenizer.from_pretrained(paths(folder)[1])
    long_prompt = " ".join([PROMPTS[0]] * 10)
    short, long_ = encoder([PROMPTS[1], long_prompt], torch.device("cpu"))
    assert short.shape[0] == len(tokenizer(PROMPTS[1]).input_ids)  # words + EOS
    assert long_.shape[0] == TEXT_LEN
    # A prompt's encoding does not depend on what it is batched with.
    alone = encoder([PROMPTS[1]], torch.device("cpu"))[0]
    assert rel_error(alone, short) <= 1e-6


def test_text_cleaning():
    assert clean_text("  Two&amp;amp;three \n\t cats &lt;b&gt;  ") == "Two&three cats <b>"
    assert clean_text("Ca\u00c3\u00a9fe") == "Caéfe"  # ftfy repairs mojibake
    assert clean_text("Keep CASE") == "Keep CASE"


def test_messy_prompt_encodes_like_clean_prompt(tiny_dir):
    folder, _ = tiny_dir
    encoder = load_encoder(folder)
    messy, clean = encoder(["  Two   cats &amp;amp; a\n dog ", "Two cats & a dog"], torch.device("cpu"))
    assert messy.shape == clean.shape
    assert torch.equal(messy, clean)


def test_bf16_runs_on_cpu_and_stays_close_to_fp32(tiny_dir):
    folder, _ = tiny_dir
    low = load_encoder(folder, dtype=torch.bfloat16)
    assert low.model.shared.weight.dtype == torch.bfloat16
    assert low.model.shared.weight is low.model.encoder.embed_tokens.weight  # one embedding table, not two
    full = load_encoder(folder, dtype=torch.float32)(PROMPTS, torch.device("cpu"))
    for u, ref in zip(low(PROMPTS, torch.device("cpu")), full):
        assert u.dtype == torch.bfloat16
        assert rel_error(u, ref) < 3e-2


def test_shard_fn_wraps_the_model(tiny_dir):
    folder, _ = tiny_dir
    calls = []

    def shard_fn(model, sync_module_states):
        calls.append(sync_module_states)
        return model

    encoder = load_encoder(folder, shard_fn=shard_fn)
    assert calls == [False] and isinstance(encoder.model, UMT5EncoderModel)


# ---- 3. gate vs fc1 ------------------------------------------------------------------------------------

def test_gelu_branch_is_gate_not_fc1(tiny_dir):
    folder, _ = tiny_dir
    model = load_encoder(folder).model
    state = official_state(folder)
    ffn = model.encoder.block[1].layer[1].DenseReluDense
    assert torch.equal(ffn.wi_0.weight, state["blocks.1.ffn.gate.0.weight"].float())
    assert torch.equal(ffn.wi_1.weight, state["blocks.1.ffn.fc1.weight"].float())
    x = torch.randn(5, DIMS["dim"], generator=torch.Generator().manual_seed(0))
    gate, fc1, fc2 = (state[f"blocks.1.ffn.{k}.weight"].float() for k in ("gate.0", "fc1", "fc2"))
    official = F.linear(F.linear(x, fc1) * F.gelu(F.linear(x, gate), approximate="tanh"), fc2)
    swapped = F.linear(F.linear(x, gate) * F.gelu(F.linear(x, fc1), approximate="tanh"), fc2)
    with torch.no_grad():
        ours = ffn(x)
    assert rel_error(ours, official) <= 1e-6
    assert rel_error(swapped, official) > 1e-2  # the check above would catch a swap


def test_relative_buckets_follow_the_reference():
    model = transformers_oracle(random_official_state())
    rel = torch.arange(-300, 300)
    ours = model.encoder.block[0].layer[0].SelfAttention._relative_position_bucket(rel)
    assert torch.equal(ours, reference_bucket(rel, 32))


def random_official_state():
    """Minimal random official state for building the transformers oracle."""
    shapes = official_t5_shapes(vocab_size=10, dim=DIMS["dim"], dim_ffn=DIMS["ffn"], num_heads=DIMS["heads"],
                                num_layers=DIMS["layers"], num_buckets=DIMS["buckets"])
    return {k: torch.randn(shape) for k, shape in shapes.items()}


# ---- 4. loading errors ---------------------------------------------------------------------------------

def test_wrong_keys_are_all_named(tiny_dir, tmp_path):
    folder, _ = tiny_dir
    state = official_state(folder)
    del state["blocks.1.attn.k.weight"]
    state["blocks.0.attn.extra.weight"] = torch.zeros(2)
    state["blocks.1.norm2.weight"] = torch.zeros(DIMS["dim"] + 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        T5EncoderModel(TEXT_LEN, checkpoint_path=str(bad), tokenizer_path=paths(folder)[1])
    message = str(err.value)
    assert str(bad) in message
    for key in ("blocks.1.attn.k.weight", "blocks.0.attn.extra.weight", "blocks.1.norm2.weight"):
        assert key in message


def test_checkpoint_that_is_not_umt5_is_refused(tiny_dir, tmp_path):
    folder, _ = tiny_dir
    bad = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match=re.escape(str(bad)) + ".*token_embedding.weight"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=str(bad), tokenizer_path=paths(folder)[1])


def test_missing_checkpoint_file_is_named(tiny_dir, tmp_path):
    folder, _ = tiny_dir
    missing = str(tmp_path / T5_CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=re.escape(missing)):
        T5EncoderModel(TEXT_LEN, checkpoint_path=missing, tokenizer_path=paths(folder)[1])


def test_missing_tokenizer_folder_is_named(tiny_dir, tmp_path):
    folder, _ = tiny_dir
    missing = str(tmp_path / "google" / "umt5-xxl")
    with pytest.raises(CheckpointError, match=re.escape(missing)):
        T5EncoderModel(TEXT_LEN, checkpoint_path=paths(folder)[0], tokenizer_path=missing)


def test_empty_tokenizer_folder_is_named(tiny_dir, tmp_path):
    folder, _ = tiny_dir
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        T5EncoderModel(TEXT_LEN, checkpoint_path=paths(folder)[0], tokenizer_path=str(tmp_path))
