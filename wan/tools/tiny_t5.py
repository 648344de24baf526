"""A tiny umt5 encoder checkpoint in the official layout, with a tokenizer built offline.

`write_tiny_t5(dir)` writes `<dir>/models_t5_umt5-xxl-enc-bf16.pth` (official key names, bf16,
random weights) and `<dir>/google/umt5-xxl/` (a small SentencePiece-unigram T5 tokenizer with the
umt5 special ids: pad 0, eos `</s>` 1, unk 2). Both load through the same code as the real files.
"""
import io
import os

import sentencepiece
import torch
from transformers import T5Tokenizer, UMT5EncoderModel

from ..modules.t5 import official_to_hf_names, umt5_config
from ..modules.tokenizers import clean_text
from ..utils.fileio import torch_save_atomic
from .randomize import randomize_

T5_CHECKPOINT_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_NAME = os.path.join("google", "umt5-xxl")

# Training text for the tokenizer: English prompts so real prompts split into several pieces, every
# ASCII letter and digit so English never maps to <unk>, and the default Chinese negative prompt so
# it tokenizes into distinct pieces rather than a run of <unk>.
_CORPUS = """\
A cinematic shot of a red fox running through a snowy forest at sunrise.
Two cats in boxing gear fight on a brightly lit stage, slow motion, dramatic lighting.
A drone flies over a coastal city at night, with neon lights reflecting on the wet streets.
An astronaut rides a horse across the surface of the moon, photorealistic, high detail.
Close-up of a woman smiling as the wind moves her hair, soft golden light, shallow depth of field.
The camera slowly pans across a quiet mountain lake surrounded by pine trees and morning fog.
A little boy plays with a yellow ball in the garden while his dog jumps around him.
Waves crash against the rocks under a stormy sky; the water sprays high into the air.
An old man walks down a busy market street, carrying a basket of fresh bread and vegetables.
A timelapse of clouds moving over green hills, with the shadows sliding across the fields.
The girl turns her head toward the camera and laughs, then looks back at the burning candles.
A white car drives along a winding road between tall cliffs, filmed from a helicopter.
ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,;:!?'"()[]-_/&%+=*#@
色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走
"""


def build_tiny_tokenizer(vocab_size=400):
    """Train a SentencePiece unigram model in memory and wrap its pieces in a T5Tokenizer.

    The corpus is cleaned as prompts are (ftfy turns full-width commas into ASCII ones), so the
    pieces are those real prompts produce. Pieces are passed as a (piece, score) list:
    transformers 5 ignores a `vocab_file` argument."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=(clean_text(line) for line in _CORPUS.splitlines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus is small; take what it supports
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # umt5's special ids
        character_coverage=1.0,
        normalization_rule_name="identity",  # the wrapped tokenizer applies no normalizer either
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_t5_state(vocab_size, seed=0, dim=32, heads=4, ffn=64, layers=2, buckets=32):
    """Random encoder weights under official key names, in bf16."""
    config = umt5_config(vocab_size=vocab_size, dim=dim, dim_ffn=ffn, num_heads=heads, num_layers=layers,
                         num_buckets=buckets)
    model = randomize_(UMT5EncoderModel(config), seed)
    hf_state = model.state_dict()
    return {official: hf_state[hf].to(torch.bfloat16).clone()
            for official, hf in official_to_hf_names(layers).items()}


def write_tiny_t5(ckpt_dir, seed=0, dim=32, heads=4, ffn=64, layers=2, buckets=32):
    """Write the tiny checkpoint and tokenizer into `ckpt_dir`; return the vocabulary size."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(os.path.join(ckpt_dir, T5_TOKENIZER_NAME))
    vocab_size = len(tokenizer)
    state = tiny_t5_state(vocab_size, seed, dim, heads, ffn, layers, buckets)
    path = os.path.join(ckpt_dir, T5_CHECKPOINT_NAME)
    torch_save_atomic(state, path)
    return vocab_size
