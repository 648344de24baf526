"""toyworld-v1: a procedural video world (shapes bouncing over a static background) with exact
ground truth, edit/continuation benchmark cases and pixel metrics. Spec: docs/TOYWORLD.md."""
from .world import (  # noqa: F401
    SPEC_VERSION,
    Background,
    Scene,
    ToyObject,
    background_image,
    caption,
    centres,
    is_tie_free,
    render,
    render_batch,
    sample_benchmark_scene,
    sample_training_scene,
    velocity_at,
)
