"""The flow core: the one place where a latent is denoised or inverted.

Every task is the same probability-flow ODE dx/dsigma = v(x, t) with x_sigma = (1-sigma) x0 + sigma noise,
integrated with different conditioning:

- a `Condition` says how the latent is conditioned: nothing (t2v), channel-concatenated `y`
  (i2v-A14B), or a fixed first latent frame with per-token timesteps (ti2v-5B);
- `GuidedVelocity` is the velocity field: classifier-free guidance over the conditional and
  unconditional prompts, and the A14B switch between the high- and low-noise experts at the
  boundary timestep;
- `integrate` walks a `Schedule` with a stepper (wan.solvers); generation walks sigmas down (noise
  to data), inversion walks the same schedule reversed (data to noise) with the same field.
"""
import logging
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .distributed.env import main_tqdm
from .errors import NonFiniteError
from .settings import SOLVERS, choice
from .solvers import INVERSION_STEPPERS, SAMPLERS, flow_lambda
from .utils.fm_common import official_base_sigmas, shift_sigmas

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- conditioning
class Condition:
    """No conditioning beyond the text (t2v): the model sees the latent as it is."""

    y = None
    clip_fea = None

    def apply(self, latent):
        return latent

    def timesteps(self, t, seq_len):
        return torch.as_tensor(t, dtype=torch.float32).reshape(1)


class ConcatCondition(Condition):
    """i2v: mask + image latent `y` concatenated to the noisy latent on channels; Wan2.1's i2v / flf2v
    add CLIP tokens of the image(s), `clip_fea`, that the DiT attends to beside the text."""

    def __init__(self, y, clip_fea=None):
        self.y, self.clip_fea = y, clip_fea


class FirstFrameCondition(Condition):
    """ti2v-5B image mode: latent frame 0 is replaced by the image latent, and its tokens get
    timestep 0 while every other token (padding included) gets t."""

    def __init__(self, first_frame, patch_size=(1, 2, 2)):
        self.first_frame = first_frame  # [C, 1, h, w]
        _, _, h, w = first_frame.shape
        self.first_frame_tokens = (h // patch_size[1]) * (w // patch_size[2])

    def apply(self, latent):
        # Equal to (1 - mask) * z + mask * latent with mask 0 on frame 0, without the arithmetic.
        out = latent.clone()
        out[:, :1] = self.first_frame.to(latent.dtype)
        return out

    def timesteps(self, t, seq_len):
        per_token = torch.full((1, seq_len), float(t))
        per_token[:, : self.first_frame_tokens] = 0.0
        return per_token


# ---------------------------------------------------------------------------- velocity field
class GuidedVelocity:
    """v(x, t): the model's velocity with classifier-free guidance and expert selection.

    experts: one model, or (low_noise_model, high_noise_model) with `boundary` in [0, 1];
    guide_scale: a float, or (low, high) for two experts; 1.0 skips the unconditional pass.
    context / context_null: lists with one text embedding [L, dim] each.
    `prepare(model)` is called before an expert is used (placement / offload hook).
    cfg_parallel: a wan.distributed.CfgParallel: this rank runs one branch, its partner the other."""

    def __init__(self, experts, context, context_null, guide_scale, seq_len, condition=None, boundary=None,
                 num_train_timesteps=1000, batch_cfg=True, prepare=None, cfg_parallel=None):
        self.experts = tuple(experts) if isinstance(experts, (list, tuple)) else (experts,)
        if len(self.experts) == 2 and boundary is None:
            raise ValueError("two experts need a boundary")
        scales = guide_scale if isinstance(guide_scale, (list, tuple)) else (guide_scale, guide_scale)
        self.guide_scales = tuple(float(s) for s in scales)
        self.context, self.context_null = context, context_null
        self.seq_len = seq_len
        self.condition = condition or Condition()
        self.boundary_t = None if boundary is None else boundary * num_train_timesteps
        self.batch_cfg = batch_cfg
        self.prepare = prepare
        self.cfg_parallel = cfg_parallel
        self.finite = None  # device flag: every velocity so far was finite (see FiniteGuard)

    def expert_index(self, t):
        """1 (high-noise expert) when t >= boundary, else 0; always 0 with a single model."""
        if len(self.experts) == 1:
            return 0
        return 1 if float(t) >= self.boundary_t else 0

    def expert_name(self, t):
        if len(self.experts) == 1:
            return "the DiT"
        return ("the low-noise expert", "the high-noise expert")[self.expert_index(t)]

    def __call__(self, x, t):
        index = self.expert_index(t)
        model, scale = self.experts[index], self.guide_scales[index]
        if self.prepare is not None:
            self.prepare(model)
        device = next(model.parameters()).device
        x = self.condition.apply(x).to(device)
        # t stays on the CPU: the model reads it without a GPU sync
        inputs = dict(t=self.condition.timesteps(t, self.seq_len), seq_len=self.seq_len)
        if self.condition.y is not None:
            inputs["y"] = [self.condition.y.to(device)]
        if self.condition.clip_fea is not None:  # one row of image tokens serves every context
            inputs["clip_fea"] = self.condition.clip_fea.to(device)
        if scale == 1.0 or self.context_null is None:
            # Under CFG parallelism both ranks run this same pass, keeping sharded weights in step.
            velocity = model([x], context=self.context, **inputs)[0]
        else:
            if self.cfg_parallel is not None:
                context = self.context if self.cfg_parallel.runs_cond else self.context_null
                cond, uncond = self.cfg_parallel.exchange(model([x], context=context, **inputs)[0])
            elif self.batch_cfg:  # one latent under both prompts: the model shares their common work
                cond, uncond = model([x], context=self.context + self.context_null, **inputs)
            else:
                cond = model([x], context=self.context, **inputs)[0]
                uncond = model([x], context=self.context_null, **inputs)[0]
            velocity = uncond + scale * (cond - uncond)
        finite = torch.isfinite(velocity).all()  # for FiniteGuard's report: one small reduction per call
        self.finite = finite if self.finite is None else self.finite & finite
        return velocity


# ---------------------------------------------------------------------------- schedules
@dataclass
class Schedule:
    """Integration grid: sigmas [N+1] (float32) and the model timestep at each sigma, in the order
    walked. `solver` names the sampler generation uses on it (wan.solvers.SAMPLERS)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    solver: str = "euler"

    def __len__(self):
        return len(self.sigmas) - 1

    @cached_property
    def sigma_values(self):
        """The sigmas as python floats: the multistep solvers' per-step coefficients need no tensor."""
        return self.sigmas.tolist()

    @cached_property
    def lambdas(self):
        return [flow_lambda(s) for s in self.sigma_values]

    def reversed(self):
        """The same grid walked from data to noise (multistep solvers only go down: Euler)."""
        return Schedule(self.sigmas.flip(0), self.timesteps.flip(0))

    def tail(self, steps):
        """The final `steps` steps of the grid, as a plain (Euler) grid."""
        return Schedule(self.sigmas[-steps - 1:], self.timesteps[-steps - 1:])

    def first_index_at_or_below(self, sigma):
        """Index of the first step starting at a sigma not above `sigma` (with float tolerance):
        where generation starts from a latent inverted up to `sigma`."""
        for i, s in enumerate(self.sigma_values[:-1]):
            if s <= sigma + 1e-6:
                return i
        return len(self) - 1


def make_schedule(solver, steps, shift, num_train_timesteps=1000, exact_timesteps=False):
    """The generation grid (noise to data) of an official solver: sigmas shifted in float64 and stored
    as float32 with a final 0; model timesteps int64(sigma * T), i.e. truncated (or, with
    exact_timesteps, sigma * T as floats), then t = 0 at sigma 0.

    UniPC starts at sigma_max = 1 - 1/T like the official scheduler; DPM++ and Euler start at 1.0."""
    choice("solver", solver, SOLVERS)
    if solver == "unipc":
        base = official_base_sigmas(steps, num_train_timesteps, 1.0, False)
    else:
        base = np.linspace(1, 0, steps + 1)[:steps]
    sigmas = shift_sigmas(base, shift)
    timesteps = torch.from_numpy(sigmas * num_train_timesteps)
    timesteps = timesteps.float() if exact_timesteps else timesteps.to(torch.int64).float()
    return Schedule(torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32)),
                    torch.cat([timesteps, torch.zeros(1)]), solver)


def sampling_schedule(sampling, num_train_timesteps=1000):
    """The schedule of a wan.settings.Sampling."""
    return make_schedule(sampling.solver, sampling.steps, sampling.shift, num_train_timesteps,
                         sampling.exact_timesteps)


def inversion_schedule(steps, shift, strength=1.0, num_train_timesteps=1000, exact_timesteps=False):
    """The Euler grid an inversion walks up: all of it, or its low-noise fraction `strength`.
    Generation from the result starts at the returned grid's first (highest) sigma."""
    grid = make_schedule("euler", steps, shift, num_train_timesteps, exact_timesteps)
    return grid.tail(max(1, round(strength * steps)))


# ---------------------------------------------------------------------------- integration
class FiniteGuard:
    """Stops an integration whose latent stops being finite (a bad checkpoint, an overflow), naming
    the step, the expert and whether the velocity was already non-finite.

    One reduction per step on the device; on a GPU the flags reach the host by a non-blocking copy
    that is only read once it has landed, so the loop never waits for the GPU; the last flags are
    read when the integration ends."""

    def __init__(self, field, schedule, desc, every=5):
        self.field, self.schedule, self.desc, self.every = field, schedule, desc, every
        self.pending = []  # (step index, device flag)
        self.copies = []  # (step indices, host flags, event)

    def watch(self, i, x):
        self.pending.append((i, torch.isfinite(x).all()))
        if len(self.pending) >= self.every:
            self._ship()
        self._check(wait=False)

    def finish(self):
        self._ship()
        self._check(wait=True)

    def _ship(self):
        if not self.pending:
            return
        steps, flags = zip(*self.pending)
        self.pending = []
        flags = torch.stack(flags)
        if flags.is_cuda:
            host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.copies.append((steps, host, event))
        else:
            self.copies.append((steps, flags, None))

    def _check(self, wait):
        while self.copies and (wait or self.copies[0][2] is None or self.copies[0][2].query()):
            steps, flags, event = self.copies.pop(0)
            if event is not None:
                event.synchronize()
            if not bool(flags.all()):
                self._fail(steps[int((~flags).nonzero()[0])])

    def _fail(self, i):
        t = float(self.schedule.timesteps[i])
        finite = getattr(self.field, "finite", None)
        tensor = "velocity" if finite is not None and not bool(finite) else "latent"
        expert = self.field.expert_name(t) if hasattr(self.field, "expert_name") else "the velocity field"
        raise NonFiniteError(f"{self.desc} step {i + 1} of {len(self.schedule)} (t={t:.0f}, {expert}): the "
                             f"{tensor} is not finite (NaN or inf); the checkpoint, a LoRA or an fp16 overflow is "
                             "the likely cause; nothing was written")


def integrate(field, x, schedule, step, condition=None, start=0, history=None, desc="denoising", progress=True,
              callback=None):
    """Walk `schedule` from index `start` with `step` (wan.solvers), re-applying the condition after
    every step (ti2v keeps its first frame fixed). `history` resumes a multistep solver;
    `callback(i, x, history)` runs after each step (checkpoints). Returns the final latent (fp32)."""
    condition = condition or Condition()
    guard = FiniteGuard(field, schedule, desc)
    x = condition.apply(x.float())
    for i in main_tqdm(range(start, len(schedule)), desc=desc, disable=not progress, initial=start,
                       total=len(schedule)):
        x, history = step(field, x, schedule, i, history)
        x = condition.apply(x.float())
        guard.watch(i, x)
        if callback is not None:
            callback(i, x, history)
    guard.finish()
    return x


def sample(field, noise, schedule, condition=None, start=0, progress=True):
    """Noise to data with the schedule's solver (the generation path of every task). `start` > 0
    begins part-way down the grid (a partially inverted latent)."""
    return integrate(field, noise, schedule, SAMPLERS[schedule.solver], condition, start, None, "denoising",
                     progress)


def invert(field, latent, schedule, scheme="euler", condition=None, progress=True):
    """Data to noise: the same field integrated along `schedule` reversed (sigma rising)."""
    step = INVERSION_STEPPERS[choice("scheme", scheme, tuple(INVERSION_STEPPERS))]
    return integrate(field, latent, schedule.reversed(), step, condition, 0, None, "inverting", progress)


def seq_len_for(latent_shape, patch_size=(1, 2, 2), sp_size=1):
    """Token count of a latent [C, T, H, W], rounded up to a multiple of the sequence-parallel size."""
    _, frames, height, width = latent_shape
    tokens = (frames // patch_size[0]) * (height // patch_size[1]) * (width // patch_size[2])
    return int(math.ceil(tokens / sp_size)) * sp_size
