"""Flow-matching DPM-Solver++ (2M) and Euler schedulers with the official Wan2.2 interface.

The dpm++ path of the official pipelines:
    sigmas = get_sampling_sigmas(steps, shift)
    timesteps, _ = retrieve_timesteps(scheduler, device=device, sigmas=sigmas)
    latent = scheduler.step(velocity, t, latent, return_dict=False, generator=g)[0]
Formulas: WAN_REFERENCE.md section 4, written in terms of x0 predictions m_i = x_i - sigma_i * v_i and
lambda = log((1 - sigma) / sigma).
"""
import inspect
import math

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

    def _reset_solver_state(self):
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _order(self, i):
        # The official lower_order_final rule only lowers order 3 on the second-to-last step, so for
        # order <= 2 just the last step (to sigma 0, where lambda = inf) drops to first order.
        if i == self.num_inference_steps - 1 or self.lower_order_nums < 1:
            return 1
        return self.config.solver_order

    def _update(self, velocity, sample):
        i = self._step_index
        sigma, sigma_next = self._sigma_values[i], self._sigma_values[i + 1]
        lam, lam_next = self._lambdas[i], self._lambdas[i + 1]
        x0_pred = sample - sigma * velocity
        self.model_outputs = self.model_outputs[1:] + [x0_pred]

        h = lam_next - lam
        # (1 - sigma') * (e^{-h} - 1): the weight of the x0 prediction in the exact exponential integrator.
        weight = (1.0 - sigma_next) * math.expm1(-h)
        prev_sample = (sigma_next / sigma) * sample - weight * x0_pred
        if self._order(i) == 2:
            # Midpoint correction with the finite difference D1 = (m_i - m_{i-1}) h / (lambda_i - lambda_{i-1});
            # it is 0 when lambda_{i-1} = -inf (previous step from sigma = 1).
            scale = 0.5 * weight * h / (lam - self._lambdas[i - 1])
            prev_sample = prev_sample - scale * (x0_pred - self.model_outputs[-2])
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        return prev_sample


class FlowEulerScheduler(FlowScheduler):
    """Plain Euler on the flow ODE: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i.

    Its default grid is the dpm++ one (get_sampling_sigmas: first sigma 1.0, timestep 1000).
    """

    def _base_sigmas(self, num_inference_steps):
        return get_sampling_sigmas(num_inference_steps, 1.0)

    def _reset_solver_state(self):
        pass

    def _update(self, velocity, sample):
        i = self._step_index
        return sample + (self._sigma_values[i + 1] - self._sigma_values[i]) * velocity
