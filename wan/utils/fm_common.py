"""What the flow-matching schedulers share: sigma grids, log-SNR, step-index lookup, state reset.

The path is x_sigma = (1 - sigma) * x0 + sigma * noise, so alpha = 1 - sigma and the model predicts the
velocity v = noise - x0. Grids follow the official Wan2.2 schedulers (wan/utils/fm_solvers*.py there) exactly:
sigmas are float64 while shifted, stored as float32 on the CPU with a final 0 appended, and timesteps are
int64(sigma * 1000), i.e. truncated, on the requested device.
"""
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ..solvers import History, flow_lambda


def shift_sigmas(sigmas, shift):
    """The resolution shift sigma' = s*sigma / (1 + (s-1)*sigma); s > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(mu, sigmas):
    """The dynamic (exponential) shift used when use_dynamic_shifting is on: e^mu / (e^mu + 1/sigma - 1)."""
    with np.errstate(divide="ignore"):  # sigma = 0 maps to 0 through 1/0 = inf
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def get_sampling_sigmas(sampling_steps, shift):
    """The dpm++ grid of the official pipelines: linspace(1, 0, N+1)[:N], shifted (first sigma exactly 1.0)."""
    base = np.linspace(1, 0, sampling_steps + 1)[:sampling_steps]
    return shift_sigmas(base, shift)


def official_base_sigmas(num_inference_steps, num_train_timesteps, shift, use_dynamic_shifting):
    """The unshifted default grid of the official UniPC and DPM schedulers: linspace(sigma_max, 0, N+1)[:-1].

    sigma_max is the first training sigma 1 - 1/T as float32 (0.9990000128746033), shifted by the
    constructor's shift as the official constructor does (so shift != 1 there shifts twice; the official
    pipelines construct with shift=1 and pass the real shift to set_timesteps).
    """
    sigma_max = np.float32(1.0 - 1.0 / num_train_timesteps)
    if not use_dynamic_shifting:
        sigma_max = np.float32(shift_sigmas(sigma_max, shift))  # float32 arithmetic, as the official tensor
    sigma_max = float(sigma_max)
    return np.linspace(sigma_max, 0.0, num_inference_steps + 1)[:-1]


def _as_float64(sigmas):
    if isinstance(sigmas, torch.Tensor):
        return sigmas.detach().to("cpu", torch.float64).numpy()
    return np.asarray(sigmas, dtype=np.float64)


@dataclass
class FlowSchedulerOutput:
    prev_sample: torch.Tensor


class FlowScheduler:
    """Grid, step counter and call convention shared by the flow schedulers.

    Subclasses define `_update(velocity, sample)` (one step from sigmas[i] to sigmas[i+1], tensors
    already in the compute dtype; the update formulas are wan.solvers', the multistep memory is
    `self.history`), and may override `_base_sigmas(n)` (the unshifted grid). `config` mirrors the
    diffusers attribute style (`scheduler.config.num_train_timesteps`).
    """

    def __init__(self, num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, **solver_config):
        self.config = SimpleNamespace(num_train_timesteps=num_train_timesteps, shift=shift,
                                      use_dynamic_shifting=use_dynamic_shifting, **solver_config)
        self.num_inference_steps = None
        self.sigmas = None
        self.timesteps = None
        self._begin_index = None
        self._reset_state()

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, shift=None):
        """Build the grid and reset all state. Custom `sigmas` (N values, without the final 0) are shifted
        like the default grid (by `shift`, else config.shift; the official dpm++ path passes pre-shifted
        sigmas with shift 1, the identity)."""
        if sigmas is None:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or sigmas")
            sigmas = self._base_sigmas(int(num_inference_steps))
        else:
            sigmas = _as_float64(sigmas)
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting=True needs set_timesteps(..., mu=)")
            sigmas = time_shift(mu, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, self.config.shift if shift is None else shift)

        self.timesteps = torch.from_numpy(sigmas * self.config.num_train_timesteps).to(
            device=device, dtype=torch.int64)  # truncation, as in the official code
        self.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
        self.num_inference_steps = len(sigmas)
        # Per-step coefficients are Python floats from the float32 sigmas: no device round trips per step.
        self._sigma_values = self.sigmas.tolist()
        self._lambdas = [flow_lambda(s) for s in self._sigma_values]
        self._begin_index = None
        self._reset_state()

    def _base_sigmas(self, num_inference_steps):
        """The unshifted grid; the official UniPC / DPM++ one unless a subclass says otherwise."""
        c = self.config
        return official_base_sigmas(num_inference_steps, c.num_train_timesteps, c.shift, c.use_dynamic_shifting)

    def _reset_state(self):
        self._step_index = None
        self.history = History()

    @property
    def step_index(self):
        """Index of the next step into `timesteps`; None until the first step() call."""
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index=0):
        """Start at this index instead of looking the first timestep up (diffusers convention)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep):
        """Position of `timestep` in `timesteps`; the second match when it occurs twice, so that a run
        started part-way through a schedule with a repeated value does not skip a sigma."""
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        matches = (self.timesteps == timestep).nonzero().flatten().tolist()
        if not matches:
            raise ValueError(f"timestep {timestep} is not one of this scheduler's timesteps "
                             f"({self.timesteps[0].item()} ... {self.timesteps[-1].item()})")
        return matches[1] if len(matches) > 1 else matches[0]

    def scale_model_input(self, sample, *args, **kwargs):
        """Flow models take the sample unscaled; kept for diffusers-style callers."""
        return sample

    def step(self, model_output, timestep, sample, *, return_dict=True, generator=None):
        """Advance `sample` from sigmas[i] to sigmas[i+1] given the velocity `model_output`.

        The update runs in at least float32 and the result is cast back to the sample dtype. `generator`
        is accepted for the official call convention; these ODE solvers draw no noise.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        if self._step_index is None:
            self._step_index = (self._begin_index if self._begin_index is not None
                                else self.index_for_timestep(timestep))
        if self._step_index >= self.num_inference_steps:
            raise RuntimeError(f"all {self.num_inference_steps} steps are done; call set_timesteps() to start "
                               "again (a run whose first timestep is repeated starts at its second occurrence; "
                               "set_begin_index(0) avoids that)")
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        prev_sample = self._update(model_output.to(compute_dtype), sample.to(compute_dtype))
        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        return FlowSchedulerOutput(prev_sample) if return_dict else (prev_sample,)
