"""TI2V-5B: text-to-video, or text+image-to-video with the image as a fixed first latent frame."""
from .. import flow
from ..jobs import Job
from ..utils.utils import best_output_size
from ..utils.video_io import image_to_frames, load_image, resize_center_crop
from .common import check_on_grid, draw_noise, encode_prompts, grid_of, latent_shape, resolve_seed, tokens


def image_size(config, image, max_area):
    """(width, height) the reference gives an input image: its aspect ratio within max_area, on the grid."""
    step = grid_of(config)
    return best_output_size(image.width, image.height, step, step, max_area)


def fit_image(image, size):
    """A PIL image -> uint8 frames [1, H, W, 3] on the (W, H) grid: resized to cover, centre-cropped."""
    return image_to_frames(resize_center_crop(image.convert("RGB"), *size))


def prepare_ti2v(models, generation, image=None):
    """Without an image: text-to-video of generation.size. With one (a PIL image, or
    generation.image as a path): the video starts from it, within generation.max_area (default: the
    area of generation.size) with the image's aspect ratio."""
    g = generation
    if image is None and g.image:
        image = load_image(g.image)
    seed = resolve_seed(g.seed)
    size = g.size if image is None else image_size(models.config, image, g.max_area or g.size[0] * g.size[1])
    check_on_grid(models.config, size)
    width, height = size
    condition = flow.Condition()
    if image is not None:
        condition = flow.FirstFrameCondition(models.encode_frames(fit_image(image, size)), models.config.patch_size)
    shape = latent_shape(models, g.frame_num, width, height)
    context, context_null = encode_prompts(models, g.prompt, g.n_prompt, g.sampling.guide_scale)
    record = dict(g.replace(seed=seed).to_dict(), output_size=[width, height])
    return Job(draw_noise(shape, seed, models.device), context, context_null, condition, g.sampling,
               tokens(models, shape), record=record)
