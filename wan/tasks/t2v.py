"""Text-to-video: t2v-A14B (two experts), Wan2.1 t2v-1.3B / t2v-14B (one); text-to-image: one frame
of t2v-14B."""
from .. import flow
from ..jobs import Job
from ..settings import SettingsError
from .common import check_on_grid, draw_noise, encode_prompts, latent_shape, resolve_seed, tokens


def prepare_t2v(models, generation):
    """Noise of the requested size and the prompt's embeddings."""
    g = generation
    check_on_grid(models.config, g.size)
    width, height = g.size
    seed = resolve_seed(g.seed)
    shape = latent_shape(models, g.frame_num, width, height)
    context, context_null = encode_prompts(models, g.prompt, g.n_prompt, g.sampling.guide_scale)
    return Job(draw_noise(shape, seed, models.device), context, context_null, flow.Condition(), g.sampling,
               tokens(models, shape), record=g.replace(seed=seed).to_dict())


def prepare_t2i(models, generation):
    """Text-to-image (t2i-14B): t2v with exactly one frame."""
    if generation.frame_num != 1:
        raise SettingsError("frame_num", f"must be 1 for {generation.task} (an image), got {generation.frame_num}")
    return prepare_t2v(models, generation)
