"""Run the editor on toy-world cases and score it against ground truth, with the benchmark's controls.

    models = Models.load(WAN_CONFIGS["ti2v-5B"], "assets/toyworld-ti2v", LoadOptions(device="cuda"))
    result = edit_case(models, case, settings)          # the edited frames and their metrics
    result = continuation_case(models, case, settings)  # a continuation through the v2v path
    floor = vae_floor(models, case)                     # what the VAE alone loses

Cases render on the fly (nothing is stored); sources go to the editor as frames, not through an mp4
(whose 4:2:0 chroma would blur every colour edge), and outputs are scored before any file is written.
"""
import math
from dataclasses import dataclass

import numpy as np
import yaml

from PIL import Image

from ..runner import Runner
from ..settings import EditSettings, Generation
from ..tasks.continuation import continuation_prompt, prepare_continuation
from ..tasks.edit import fit_source, prepare_edit_of
from ..tasks.ti2v import prepare_ti2v
from ..utils.video_io import from_model_range
from .cases import SEAM_FRAME
from .metrics import (
    ProceduralCaptioner,
    continuation_metrics,
    continuation_passes,
    edit_metrics,
    edit_passes,
    psnr,
    seed_diversity,
)
from .world import HEIGHT, WIDTH

FPS = 16
AREA = WIDTH * HEIGHT


def preset_settings(path):
    """The EditSettings of a preset file such as configs/edit_toyworld.yaml (its other keys, e.g. load
    options and the comparison switch, are the scripts')."""
    with open(path) as f:
        preset = yaml.safe_load(f)
    return EditSettings.from_dict({k: v for k, v in preset.items() if k in EditSettings().to_dict()})


@dataclass
class CaseResult:
    case_id: str
    edit_type: str
    metrics: dict
    passed: bool


def edit_case(models, case, settings, runner=None, vae_floor_db=None):
    """Edit `case` (source video, edited first frame, both captions) with `settings` (EditSettings);
    returns (uint8 frames [F, H, W, 3], CaseResult)."""
    runner = runner or Runner(models, progress=False)
    source = fit_source(models.config, case.source_video(), FPS, AREA, case.case_id)
    job = prepare_edit_of(models, source, case.edited_first_frame()[None], case.source_caption, case.target_caption,
                          settings)
    video = from_model_range(models.decode(runner.edit(job)))
    metrics = edit_metrics(video, case, vae_floor_db)
    return video, CaseResult(case.case_id, case.edit_type, metrics, edit_passes(metrics, vae_floor_db))


def continuation_case(models, case, settings, seed=0, runner=None, vae_floor_db=None):
    """Continue `case`'s clip the way the v2v-5B task does (its last frame conditions image-to-video,
    the procedural captioner's caption of its end is the prompt), with `settings`' sampling and
    negative prompt; returns (uint8 frames [17, H, W, 3], frame 0 the seam, and a CaseResult)."""
    runner = runner or Runner(models, progress=False)
    clip = case.clip()
    prompt = continuation_prompt(ProceduralCaptioner(), clip, None, case.case_id)
    generation = Generation(task="ti2v-5B", n_prompt=settings.n_prompt, size=(WIDTH, HEIGHT),
                            frame_num=case.scene.frames - SEAM_FRAME, seed=seed, sampling=settings.sampling)
    job = prepare_continuation(models, generation, Image.fromarray(clip[-1].numpy()), prompt, case.case_id)
    video = from_model_range(models.decode(runner.denoise(job)))
    metrics = continuation_metrics(video, case, vae_floor_db)
    return video, CaseResult(case.case_id, case.kind, metrics, continuation_passes(metrics, vae_floor_db))


def vae_floor(models, case):
    """PSNR (dB) of the ground truth through the VAE alone: the best any edit can reach."""
    truth = case.ground_truth()
    decoded = from_model_range(models.decode(models.encode_frames(truth)))
    return psnr(decoded.numpy(), truth.numpy())


def sample_from_first_frame(models, case, settings, seed):
    """Image-to-video from the case's edited first frame and target caption, from fresh noise:
    uint8 frames [F, H, W, 3]."""
    generation = Generation(task="ti2v-5B", prompt=case.target_caption, n_prompt=settings.n_prompt,
                            size=(WIDTH, HEIGHT), frame_num=case.source.frames, seed=seed, sampling=settings.sampling)
    image = Image.fromarray(case.edited_first_frame().numpy())
    latent = Runner(models, progress=False).denoise(prepare_ti2v(models, generation, image=image))
    return from_model_range(models.decode(latent))


def fresh_noise_control(models, case, settings, seed):
    """Control 3: the target's first frame and caption with random noise instead of the inverted
    latent. Its motion must NOT follow the source (TE_rel near chance); otherwise motion does not come
    from the noise and the benchmark is void for this model."""
    return edit_metrics(sample_from_first_frame(models, case, settings, seed), case)


def seed_diversity_of(models, case, settings, seeds):
    """Control 4: circular variance of the motion directions of I2V samples from one first frame and
    a motion-free caption under `seeds` (>= 0.7 expected; uniform ~1)."""
    return seed_diversity([sample_from_first_frame(models, case, settings, seed) for seed in seeds], case.target)


def summarise(results):
    """{edit type: {"cases", "success", mean of each numeric metric}} plus "all"."""
    groups = {"all": results}
    for result in results:
        groups.setdefault(result.edit_type, []).append(result)
    summary = {}
    for name, group in groups.items():
        means = {}
        for key in group[0].metrics:
            values = [r.metrics[key] for r in group if isinstance(r.metrics[key], (int, float))]
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                means[key] = float(np.mean(finite))
        summary[name] = {"cases": len(group), "success": float(np.mean([r.passed for r in group])), **means}
    return summary
