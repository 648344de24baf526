"""The frozen text encoder: a seeded random tiny umT5 in the official layout, read back through
`T5EncoderModel` (the class inference uses), and caption embeddings for the DiT stage.

Random features are enough: captions of the closed grammar map to distinct token sequences, and
the DiT's text embedding and cross-attention learn what they mean.
"""
import os
import shutil
import tempfile

import torch

from ...configs import WAN_CONFIGS
from ...errors import WanInputError
from ...modules.t5 import T5EncoderModel
from ...tools.tiny_t5 import T5_CHECKPOINT_NAME, T5_TOKENIZER_NAME, tiny_t5_state
from ..tokenizer import appearance_captions, build_caption_tokenizer
from .common import log, save_pth

TEXT_ENCODER = dict(dim=64, heads=4, ffn=128, layers=2, buckets=32)
TEXT_LEN = WAN_CONFIGS["ti2v-5B"].text_len  # 512: the DiT pads every prompt to this many tokens
TEXT_DTYPE = WAN_CONFIGS["ti2v-5B"].t5_dtype
NEGATIVE_PROMPT = WAN_CONFIGS["ti2v-5B"].sample_neg_prompt


def write_text_encoder(checkpoint_dir, seed):
    """Write the tokenizer (google/umt5-xxl/) and the random encoder .pth into `checkpoint_dir`."""
    tokenizer = build_caption_tokenizer()
    target = os.path.join(checkpoint_dir, T5_TOKENIZER_NAME)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tokenizer.", dir=os.path.dirname(target))
    try:  # a whole folder at once, so a reader never sees half a tokenizer
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = tiny_t5_state(len(tokenizer), seed, **TEXT_ENCODER)
    save_pth(state, os.path.join(checkpoint_dir, T5_CHECKPOINT_NAME))


def has_text_encoder(checkpoint_dir):
    return (os.path.isfile(os.path.join(checkpoint_dir, T5_CHECKPOINT_NAME))
            and os.path.isdir(os.path.join(checkpoint_dir, T5_TOKENIZER_NAME)))


def load_text_encoder(checkpoint_dir, device):
    """The encoder exactly as the pipelines load it (bf16, prompts padded to 512 tokens)."""
    return T5EncoderModel(text_len=TEXT_LEN, dtype=TEXT_DTYPE, device=device,
                          checkpoint_path=os.path.join(checkpoint_dir, T5_CHECKPOINT_NAME),
                          tokenizer_path=os.path.join(checkpoint_dir, T5_TOKENIZER_NAME))


@torch.no_grad()
def embed_captions(encoder, captions, device, length=None, batch=1024):
    """Captions -> [N, length, dim] in the encoder's dtype: each caption's rows as T5EncoderModel
    returns them (EOS included), then zero rows, which is how the DiT pads prompts itself.
    `length` defaults to the longest caption."""
    rows = []
    for start in range(0, len(captions), batch):
        rows.extend(encoder(captions[start:start + batch], device))
    longest = max(r.shape[0] for r in rows)
    length = longest if length is None else length
    if longest > length:
        raise WanInputError(f"a caption of {longest} tokens does not fit in {length}")
    return torch.stack([torch.nn.functional.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])


@torch.no_grad()
def check_distinct_captions(encoder, device):
    """Every single-object appearance caption must get its own pooled embedding, with no <unk>
    token; returns the smallest distance between two pooled embeddings."""
    captions = appearance_captions()
    ids, mask = encoder.tokenizer(captions, return_mask=True)
    unknown = encoder.tokenizer.tokenizer.unk_token_id
    if bool((ids[mask.bool()] == unknown).any()):
        raise WanInputError("the caption tokenizer maps a word of the caption grammar to <unk>")
    contexts = encoder(captions, device)
    pooled = torch.stack([c.float().mean(dim=0) for c in contexts])
    distances = torch.cdist(pooled, pooled)
    distances.fill_diagonal_(float("inf"))
    smallest = float(distances.min())
    if not smallest > 0:
        raise WanInputError("two different captions got the same text embedding")
    log.info("text encoder: %d appearance captions, distinct pooled embeddings (closest pair %.3g apart)",
             len(captions), smallest)
    return smallest
