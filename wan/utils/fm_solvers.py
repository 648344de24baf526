"""Flow-matching DPM-Solver++ (2M) and Euler schedulers with the official Wan2.2 interface.

The dpm++ path of the official pipelines:
    sigmas = get_sampling_sigmas(steps, shift)
    timesteps, _ = retrieve_timesteps(scheduler, device=device, sigmas=sigmas)
    latent = scheduler.step(velocity, t, latent, return_dict=False, generator=g)[0]
The update formulas are wan.solvers' (one copy for these classes and for generation).
"""
import inspect

from ..solvers import dpm_update, euler_update
from .fm_common import FlowScheduler, get_sampling_sigmas

__all__ = ["FlowDPMSolverMultistepScheduler", "FlowEulerScheduler", "get_sampling_sigmas",
           "retrieve_timesteps"]


def retrieve_timesteps(scheduler, num_inference_steps=None, device=None, timesteps=None, sigmas=None,
                       **kwargs):
    """Call `scheduler.set_timesteps` with steps, custom timesteps or custom sigmas and return
    (timesteps, num_inference_steps), as the official helper does."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass custom timesteps or custom sigmas, not both")
    for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
        if value is None:
            continue
        if name not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not accept custom {name}")
        scheduler.set_timesteps(device=device, **{name: value}, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


class FlowDPMSolverMultistepScheduler(FlowScheduler):
    """Multistep DPM-Solver++ (data prediction, midpoint) for flow matching; solver_order 1 or 2.

    Step i is first order when it is the first step taken or the last step (the final sigma is 0);
    otherwise second order. Starting from sigma = 1 (lambda = -inf) the second step's correction term
    vanishes, as in the official scheduler.
    """

    def __init__(self, num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, solver_order=2):
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
        super().__init__(num_train_timesteps, shift, use_dynamic_shifting, solver_order=solver_order,
                         prediction_type="flow_prediction", algorithm_type="dpmsolver++",
                         solver_type="midpoint", final_sigmas_type="zero")

    def _update(self, velocity, sample):
        prev_sample, self.history = dpm_update(velocity, sample, self._sigma_values, self._lambdas,
                                               self._step_index, self.history, self.config.solver_order)
        return prev_sample


class FlowEulerScheduler(FlowScheduler):
    """Plain Euler on the flow ODE: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i.

    Its default grid is the dpm++ one (get_sampling_sigmas: first sigma 1.0, timestep 1000).
    """

    def _base_sigmas(self, num_inference_steps):
        return get_sampling_sigmas(num_inference_steps, 1.0)

    def _update(self, velocity, sample):
        i = self._step_index
        return euler_update(velocity, sample, self._sigma_values[i], self._sigma_values[i + 1])
