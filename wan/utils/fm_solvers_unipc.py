"""Flow-matching UniPC (predictor UniP + corrector UniC, B(h) variants) with the official Wan2.2 interface.

The default sampler of the official pipelines:
    scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    scheduler.set_timesteps(steps, device=device, shift=shift)
    latent = scheduler.step(velocity, t, latent, return_dict=False, generator=g)[0]
The update formulas are wan.solvers' (one copy for this class and for generation).
"""
from ..solvers import unipc_update
from .fm_common import FlowScheduler

__all__ = ["FlowUniPCMultistepScheduler"]


class FlowUniPCMultistepScheduler(FlowScheduler):
    """UniPC with data prediction, solver_order 1 or 2.

    Step i: the x0 prediction m_i is taken from the sample as given; if a previous step exists the
    corrector (of the previous step's order) replaces x_i using m_i, then the predictor of order
    min(solver_order, N - i, steps_done + 1) moves the corrected x_i to sigma_{i+1}.
    `disable_corrector` lists step indices whose following correction is skipped (diffusers convention).
    """

    def __init__(self, num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, solver_order=2,
                 solver_type="bh2", lower_order_final=True, disable_corrector=()):
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
        super().__init__(num_train_timesteps, shift, use_dynamic_shifting, solver_order=solver_order,
                         solver_type=solver_type, lower_order_final=lower_order_final,
                         disable_corrector=list(disable_corrector), prediction_type="flow_prediction",
                         predict_x0=True, final_sigmas_type="zero")

    def _update(self, velocity, sample):
        i, c = self._step_index, self.config
        prev_sample, self.history = unipc_update(
            velocity, sample, self._sigma_values, self._lambdas, i, self.history, c.solver_order, c.solver_type,
            c.lower_order_final, corrector=i - 1 not in c.disable_corrector)
        return prev_sample
