"""toyworld-v1: a procedural video world (flat shapes bouncing over a static background) with exact
ground truth, edit and continuation benchmark cases, and pixel metrics. Spec: docs/TOYWORLD.md.

- world: scene specs, render / render_batch, captions, samplers
- cases: edit and continuation cases, their JSON files
- metrics: segmentation, per-case metrics and pass rules, seed diversity, procedural captioner
"""
from .cases import (  # noqa: F401
    ContinuationCase,
    EditCase,
    load_cases,
    make_continuation_cases,
    make_edit_cases,
    save_cases,
)
from .metrics import (  # noqa: F401
    ProceduralCaptioner,
    circular_variance,
    continuation_metrics,
    continuation_passes,
    edit_metrics,
    edit_passes,
    procedural_caption,
    seed_diversity,
    segment,
)
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
