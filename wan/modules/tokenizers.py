"""Text cleaning and the Hugging Face tokenizer wrapper used by the T5 text encoder.

Mirrors the official `wan.modules.tokenizers.HuggingfaceTokenizer` call convention: a list of
prompts in, padded id tensors (and optionally the attention mask) out.
"""
import html
import os
import re

import ftfy
from transformers import AutoTokenizer

from ..errors import CheckpointError

CLEAN_MODES = (None, "whitespace")
VOCABULARY_FILES = ("tokenizer.json", "spiece.model")
_WHITESPACE_RUN = re.compile(r"\s+")


def basic_clean(text):
    """Repair mojibake and HTML entities. Unescaped twice because prompts scraped from the web are
    often escaped twice ("&amp;amp;")."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    """Collapse every whitespace run (tabs, newlines, repeated spaces) into one space."""
    return _WHITESPACE_RUN.sub(" ", text).strip()


def clean_text(text, mode="whitespace"):
    """Apply the official prompt cleaning; `mode` None leaves the text untouched."""
    if mode is None:
        return text
    if mode == "whitespace":
        return whitespace_clean(basic_clean(text))
    raise ValueError(f"unknown text cleaning mode {mode!r}; expected one of {CLEAN_MODES}")


def load_tokenizer(path, **kwargs):
    """AutoTokenizer from a local folder only: a missing folder is a checkpoint error, never a hub
    lookup (a hub retry loop would stall for a minute before failing).

    The folder must hold a vocabulary (tokenizer.json or spiece.model) and the tokenizer must know
    its padding token: without the vocabulary transformers builds an empty tokenizer that maps
    every prompt to unknown tokens, and without tokenizer_config.json it has no padding token;
    both would run and produce garbage instead of failing."""
    if not os.path.isdir(path):
        raise CheckpointError(f"T5 tokenizer folder not found: {path}")
    if not any(os.path.isfile(os.path.join(path, name)) for name in VOCABULARY_FILES):
        raise CheckpointError(f"T5 tokenizer folder {path} holds no vocabulary: expected "
                              f"{' or '.join(VOCABULARY_FILES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as exc:  # unreadable or incomplete tokenizer files
        message = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"T5 tokenizer folder {path} could not be loaded: {exc.__class__.__name__}: "
                              f"{message}") from None
    if tokenizer.pad_token is None:
        raise CheckpointError(f"T5 tokenizer folder {path} defines no padding token: expected "
                              "tokenizer_config.json (or special_tokens_map.json) naming pad_token")
    return tokenizer


class HuggingfaceTokenizer:
    """Tokenize prompts to fixed-length id tensors.

    name: local tokenizer folder. seq_len: pad/truncate every prompt to this many tokens (None:
    pad to the longest). clean: text cleaning mode applied before tokenizing."""

    def __init__(self, name, seq_len=None, clean=None, **kwargs):
        if clean not in CLEAN_MODES:
            raise ValueError(f"unknown text cleaning mode {clean!r}; expected one of {CLEAN_MODES}")
        self.name = name
        self.seq_len = seq_len
        self.clean = clean
        self.tokenizer = load_tokenizer(name, **kwargs)
        self.vocab_size = self.tokenizer.vocab_size

    def __call__(self, sequence, return_mask=False, **kwargs):
        """Return input ids [B, seq_len] (and the attention mask when return_mask)."""
        if isinstance(sequence, str):
            sequence = [sequence]
        sequence = [clean_text(text, self.clean) for text in sequence]
        options = {"return_tensors": "pt", "padding": True}
        if self.seq_len is not None:
            options.update(padding="max_length", truncation=True, max_length=self.seq_len)
        options.update(kwargs)
        encoded = self.tokenizer(sequence, **options)
        if return_mask:
            return encoded.input_ids, encoded.attention_mask
        return encoded.input_ids
