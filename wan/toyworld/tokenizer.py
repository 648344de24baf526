"""A SentencePiece tokenizer for toy-world captions, in the umT5 layout (pad 0, eos 1, unk 2).

Every word of the caption grammar is one piece (a SentencePiece user-defined symbol with its
word-boundary mark), so two captions that differ in one word differ in one token. The default
negative prompt (wan.configs SAMPLE_NEG_PROMPT) is in the training text too, so the unconditional
branch of classifier-free guidance reads real pieces rather than a run of <unk>. The result loads
through `T5EncoderModel` like the real google/umt5-xxl tokenizer.
"""
import io
import math

import sentencepiece
from transformers import T5Tokenizer

from ..configs import SAMPLE_NEG_PROMPT
from ..modules.tokenizers import clean_text
from .world import (BACKGROUND_COLORS, BACKGROUND_PAIRS, DIRECTIONS, OBJECT_COLORS, SHAPES, SLOW_SPEED, Background,
                    caption_text, object_phrase)

WORD_BOUNDARY = "\u2581"  # SentencePiece's mark for "a space before this piece"


def all_backgrounds():
    """Every background the sampler can draw: 6 solid, then the split and gradient pairs."""
    solids = [Background("solid", (name,)) for name in BACKGROUND_COLORS]
    return solids + [Background(kind, pair) for kind in ("split", "gradient") for pair in BACKGROUND_PAIRS]


def motion_examples():
    """One velocity per caption motion phrase: each direction bin's centre, slow and quick, and
    standing still."""
    velocities = [(0.0, 0.0)]
    for index in range(len(DIRECTIONS)):
        angle = math.radians(45 * index)
        for speed in (SLOW_SPEED / 2, SLOW_SPEED * 1.5):
            velocities.append((speed * math.cos(angle), -speed * math.sin(angle)))
    return velocities


def appearance_captions():
    """Every single-object caption without a motion phrase (colours x shapes x backgrounds)."""
    return [caption_text([object_phrase(shape, color)], background)
            for background in all_backgrounds() for color in OBJECT_COLORS for shape in SHAPES]


def grammar_captions():
    """Captions that use every word of the grammar: all appearance captions, every motion phrase,
    and two-object captions."""
    captions = appearance_captions()
    colors, solid = list(OBJECT_COLORS), all_backgrounds()[0]
    for velocity in motion_examples():
        for shape in SHAPES:
            captions.append(caption_text([object_phrase(shape, colors[0], velocity)], solid))
    for first, second in zip(colors, colors[1:] + colors[:1]):
        captions.append(caption_text([object_phrase(SHAPES[0], first), object_phrase(SHAPES[1], second)], solid))
    return captions


def grammar_words():
    """The distinct words of the caption grammar (the final period is a piece of its own)."""
    return sorted({word.rstrip(".") for text in grammar_captions() for word in text.split()})


def build_caption_tokenizer(vocab_size=256):
    """Train the tokenizer in memory (single-threaded, so the same pieces every time) and wrap it
    as a T5Tokenizer. The text is cleaned as prompts are before tokenizing."""
    corpus = [clean_text(text) for text in grammar_captions() + [SAMPLE_NEG_PROMPT]]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus: take the pieces it supports
        user_defined_symbols=[WORD_BOUNDARY + word for word in grammar_words()],
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # umt5's special ids
        character_coverage=1.0,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=pieces, extra_ids=0)
