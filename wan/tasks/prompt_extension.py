"""Prompt extension: a local language model rewrites the prompt before a generation (the official
--use_prompt_extend), seeing the input image(s) when the task has them."""
import logging

from .. import distributed
from ..modules.prompt_extend import make_prompt_extender
from ..utils.video_io import load_image

log = logging.getLogger(__name__)


def extend_prompt(generation, method="local_qwen", model=None, target_lang="zh", device=None):
    """`generation` with its prompt rewritten. Rank 0 runs the model (then frees it, before any video
    model loads) and every rank gets its answer; an empty or bad answer keeps the original prompt."""
    paths = [path for path in (generation.image or generation.first_frame, generation.last_frame) if path]
    extended = None
    if distributed.is_main_process():
        images = [load_image(path) for path in paths]
        extender = make_prompt_extender(method, model, with_images=bool(images), device=device or "cpu")
        try:
            extended = extender(generation.prompt, target_lang, images or None, seed=max(generation.seed, 0))
        finally:
            extender.unload()
    extended = distributed.from_main_process(extended)
    log.info("prompt extended from %r to %r", generation.prompt, extended)
    return generation.replace(prompt=extended)
