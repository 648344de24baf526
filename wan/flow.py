"""The flow core: the one place where a latent is denoised or inverted.

Every task is the same probability-flow ODE dx/dsigma = v(x, t) with x_sigma = (1-sigma) x0 + sigma noise,
integrated with different conditioning:

- a `Condition` says how the latent is conditioned: nothing (t2v), channel-concatenated `y`
  (i2v-A14B), or a fixed first latent frame with per-token timesteps (ti2v-5B);
- `GuidedVelocity` is the velocity field: classifier-free guidance over the conditional and
  unconditional prompts, and the A14B switch between the high- and low-noise experts at the
  boundary timestep;
- `integrate` walks a `Schedule` with a stepper; generation walks sigmas down (noise to data),
  inversion walks the same schedule reversed (data to noise) with the same field.

Steppers are small functions `step(field, x, schedule, i) -> x_next` in the style of k-diffusion's
samplers. Multistep solvers (UniPC, DPM++) keep state, so they are wrapped scheduler objects.
"""
import logging
import math
from dataclasses import dataclass

import torch

from .distributed.env import main_tqdm
from .errors import WanInputError
from .utils.fm_solvers import FlowDPMSolverMultistepScheduler, FlowEulerScheduler, get_sampling_sigmas
from .utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

log = logging.getLogger(__name__)

SOLVERS = ("unipc", "dpm++", "euler")
INVERSION_SCHEMES = ("euler", "midpoint", "heun", "fixed_point")


# ---------------------------------------------------------------------------- conditioning
class Condition:
    """No conditioning beyond the text (t2v): the model sees the latent as it is."""

    y = None

    def apply(self, latent):
        return latent

    def timesteps(self, t, seq_len):
        return torch.as_tensor(t, dtype=torch.float32).reshape(1)


class ConcatCondition(Condition):
    """i2v-A14B: mask + image latent `y` concatenated to the noisy latent on channels."""

    def __init__(self, y):
        self.y = y


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
        self.calls = []  # (t, expert index) per evaluation, for logs and tests

    def expert_index(self, t):
        """1 (high-noise expert) when t >= boundary, else 0; always 0 with a single model."""
        if len(self.experts) == 1:
            return 0
        return 1 if float(t) >= self.boundary_t else 0

    def __call__(self, x, t):
        index = self.expert_index(t)
        model, scale = self.experts[index], self.guide_scales[index]
        self.calls.append((float(t), index))
        if self.prepare is not None:
            self.prepare(model)
        device = next(model.parameters()).device
        x = self.condition.apply(x).to(device)
        t_model = self.condition.timesteps(t, self.seq_len)  # on the CPU: the model reads it without a GPU sync
        y = None if self.condition.y is None else [self.condition.y.to(device)]
        if scale == 1.0 or self.context_null is None:
            # Under CFG parallelism both ranks run this same pass, keeping sharded weights in step.
            return model([x], t=t_model, context=self.context, seq_len=self.seq_len, y=y)[0]
        if self.cfg_parallel is not None:
            context = self.context if self.cfg_parallel.runs_cond else self.context_null
            mine = model([x], t=t_model, context=context, seq_len=self.seq_len, y=y)[0]
            cond, uncond = self.cfg_parallel.exchange(mine)
        elif self.batch_cfg:  # one latent under both prompts: the model shares their common work
            cond, uncond = model([x], t=t_model, context=self.context + self.context_null, seq_len=self.seq_len,
                                 y=y)
        else:
            cond = model([x], t=t_model, context=self.context, seq_len=self.seq_len, y=y)[0]
            uncond = model([x], t=t_model, context=self.context_null, seq_len=self.seq_len, y=y)[0]
        return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------- schedules
@dataclass
class Schedule:
    """Integration grid: sigmas [N+1] and the model timestep at each sigma, in the order walked."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    scheduler: object = None  # the multistep solver that owns this grid, if any

    def __len__(self):
        return len(self.sigmas) - 1

    def reversed(self):
        """The same grid walked from data to noise (no scheduler: multistep solvers only go down)."""
        return Schedule(self.sigmas.flip(0), self.timesteps.flip(0))

    def tail(self, steps):
        """The final `steps` steps of the grid, as a plain grid (no multistep solver)."""
        return Schedule(self.sigmas[-steps - 1:], self.timesteps[-steps - 1:])


def make_scheduler(solver, steps, shift, num_train_timesteps=1000, device="cpu"):
    if solver == "unipc":
        scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=num_train_timesteps, shift=1,
                                                use_dynamic_shifting=False)
        scheduler.set_timesteps(steps, device=device, shift=shift)
    elif solver == "dpm++":
        scheduler = FlowDPMSolverMultistepScheduler(num_train_timesteps=num_train_timesteps, shift=1,
                                                    use_dynamic_shifting=False)
        # The official DPM++ grid starts at sigma 1.0 (t 1000), unlike UniPC's.
        scheduler.set_timesteps(device=device, sigmas=get_sampling_sigmas(steps, shift))
    elif solver == "euler":
        scheduler = FlowEulerScheduler(num_train_timesteps=num_train_timesteps)
        scheduler.set_timesteps(steps, device=device, shift=shift)
    else:
        raise WanInputError(f"--sample_solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    # A fresh run starts at step 0 even when the first integer timestep repeats (long, high-shift
    # schedules), where the official look-up would start at the second match and overrun.
    scheduler.set_begin_index(0)
    return scheduler


def make_schedule(solver, steps, shift, num_train_timesteps=1000):
    """Generation schedule (noise to data) of one of the official solvers. Its timesteps
    list the model timestep at every sigma, including t=0 at sigma 0."""
    if steps < 1:
        raise WanInputError(f"the number of sampling steps must be at least 1, got {steps}")
    scheduler = make_scheduler(solver, steps, shift, num_train_timesteps)
    timesteps = torch.cat([scheduler.timesteps.cpu().float(), torch.zeros(1)])
    return Schedule(scheduler.sigmas.cpu().float(), timesteps, scheduler)


# ---------------------------------------------------------------------------- steppers
def scheduler_step(field, x, schedule, i):
    """One step of the schedule's own multistep solver (UniPC, DPM++, Euler)."""
    t = schedule.scheduler.timesteps[i]
    v = field(x, t)
    return schedule.scheduler.step(v[None].float(), t, x[None], return_dict=False)[0][0]


def euler_step(field, x, schedule, i):
    s, t = schedule.sigmas, schedule.timesteps
    return x + (s[i + 1] - s[i]) * field(x, t[i])


def heun_step(field, x, schedule, i):
    """Trapezoidal predictor-corrector: second order, two evaluations."""
    s, t = schedule.sigmas, schedule.timesteps
    h = s[i + 1] - s[i]
    v0 = field(x, t[i])
    v1 = field(x + h * v0, t[i + 1])
    return x + h * 0.5 * (v0 + v1)


def midpoint_step(field, x, schedule, i):
    """Explicit midpoint: second order, two evaluations."""
    s, t = schedule.sigmas, schedule.timesteps
    h = s[i + 1] - s[i]
    v0 = field(x, t[i])
    return x + h * field(x + 0.5 * h * v0, 0.5 * (t[i] + t[i + 1]))


def fixed_point_step(field, x, schedule, i, iterations=3):
    """Implicit step x' = x + h v(x', t'): the exact inverse of an Euler step taken back from x'.
    Solved by fixed-point iteration from an explicit Euler guess; used for inversion, where it
    makes Euler regeneration retrace the inverted path."""
    s, t = schedule.sigmas, schedule.timesteps
    h = s[i + 1] - s[i]
    guess = x + h * field(x, t[i])
    for _ in range(iterations):
        guess = x + h * field(guess, t[i + 1])
    return guess


STEPPERS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step, "fixed_point": fixed_point_step}
EVALUATIONS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "fixed_point": 4}


# ---------------------------------------------------------------------------- integration
def integrate(field, x, schedule, step=scheduler_step, condition=None, desc="denoising", progress=True,
              callback=None, start=0):
    """Walk `schedule` from index `start` with `step`, re-applying the condition after every step
    (ti2v keeps its first frame fixed). `callback(i, x)` runs after each step (checkpoints)."""
    condition = condition or Condition()
    x = condition.apply(x.float())
    for i in main_tqdm(range(start, len(schedule)), desc=desc, disable=not progress, initial=start,
                       total=len(schedule)):
        x = condition.apply(step(field, x, schedule, i).float())
        if callback is not None:
            callback(i, x)
    return x


def sample(field, noise, schedule, condition=None, progress=True, callback=None, start=0):
    """Noise to data with the schedule's solver (the generation path of every task). `start` > 0
    begins part-way down the grid (a partially inverted latent, or a resumed run)."""
    step = scheduler_step if schedule.scheduler is not None else euler_step
    if schedule.scheduler is not None:
        schedule.scheduler.set_begin_index(start)
    return integrate(field, noise, schedule, step, condition, "denoising", progress, callback, start)


def invert(field, latent, schedule, scheme="euler", condition=None, progress=True):
    """Data to noise: the same field integrated along `schedule` reversed (sigma rising)."""
    if scheme not in STEPPERS:
        raise WanInputError(f"inversion scheme must be one of {', '.join(STEPPERS)}, got {scheme!r}")
    return integrate(field, latent, schedule.reversed(), STEPPERS[scheme], condition, "inverting", progress)


def seq_len_for(latent_shape, patch_size=(1, 2, 2), sp_size=1):
    """Token count of a latent [C, T, H, W], rounded up to a multiple of the sequence-parallel size."""
    _, frames, height, width = latent_shape
    tokens = (frames // patch_size[0]) * (height // patch_size[1]) * (width // patch_size[2])
    return int(math.ceil(tokens / sp_size)) * sp_size
