"""Flow-matching UniPC (predictor UniP + corrector UniC, B(h) variants) with the official Wan2.2 interface.

The default sampler of the official pipelines:
    scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    scheduler.set_timesteps(steps, device=device, shift=shift)
    latent = scheduler.step(velocity, t, latent, return_dict=False, generator=g)[0]
Formulas: WAN_REFERENCE.md section 4, in terms of x0 predictions m_i = x_i - sigma_i * v_i and
lambda = log((1 - sigma) / sigma), with hh = -h, phi1 = expm1(hh) and B(h) = expm1(hh) (bh2) or hh (bh1).
"""
import math

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

    def _reset_solver_state(self):
        self.model_outputs = [None] * self.config.solver_order
        self.last_sample = None
        self.lower_order_nums = 0
        self.this_order = None

    def _exponential_terms(self, h):
        """(phi1, B(h)) for a step of log-SNR length h; both are -1 when h = inf (a step to sigma 0)."""
        hh = -h
        phi1 = math.expm1(hh)
        return phi1, (phi1 if self.config.solver_type == "bh2" else hh)

    def _update(self, velocity, sample):
        i = self._step_index
        x0_pred = sample - self._sigma_values[i] * velocity
        use_corrector = (i > 0 and self.last_sample is not None
                         and i - 1 not in self.config.disable_corrector)
        if use_corrector:
            sample = self._correct(sample_prev=self.last_sample, x0_pred=x0_pred, i=i)
        self.model_outputs = self.model_outputs[1:] + [x0_pred]

        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, self.num_inference_steps - i)
        self.this_order = min(order, self.lower_order_nums + 1)  # multistep warm-up
        self.last_sample = sample
        prev_sample = self._predict(sample, i, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        return prev_sample

    def _predict(self, sample, i, order):
        """UniP from the (corrected) x_i to sigma_{i+1}; model_outputs ends with m_i."""
        sigma, sigma_next = self._sigma_values[i], self._sigma_values[i + 1]
        lam, lam_next = self._lambdas[i], self._lambdas[i + 1]
        m_cur = self.model_outputs[-1]
        h = lam_next - lam
        phi1, b_h = self._exponential_terms(h)
        alpha_next = 1.0 - sigma_next
        prev_sample = (sigma_next / sigma) * sample - (alpha_next * phi1) * m_cur
        if order == 2:
            # D1 = (m_{i-1} - m_i) / r with r = (lambda_{i-1} - lambda_i) / h, weighted by rho = 1/2.
            inv_r = h / (self._lambdas[i - 1] - lam)
            prev_sample = prev_sample - (alpha_next * b_h * 0.5 * inv_r) * (self.model_outputs[-2] - m_cur)
        return prev_sample

    def _correct(self, sample_prev, x0_pred, i):
        """UniC: recompute x_i from x_{i-1} with the new m_i; model_outputs still ends with m_{i-1}."""
        order = self.this_order
        sigma_prev, sigma = self._sigma_values[i - 1], self._sigma_values[i]
        lam_prev, lam = self._lambdas[i - 1], self._lambdas[i]
        m_prev = self.model_outputs[-1]
        h = lam - lam_prev
        hh = -h
        phi1, b_h = self._exponential_terms(h)
        alpha = 1.0 - sigma
        base = (sigma / sigma_prev) * sample_prev - (alpha * phi1) * m_prev
        if order == 1:
            return base - (alpha * b_h * 0.5) * (x0_pred - m_prev)

        # Order 2: solve [[1, 1], [rk, 1]] rho = b in closed form. rk = -inf (lambda_{i-2} at sigma = 1)
        # gives rho_0 = 0 and a vanishing D term, the limit of the formula.
        rk = (self._lambdas[i - 2] - lam_prev) / h
        b1 = (phi1 / hh - 1.0) / b_h
        b2 = 2.0 * ((phi1 / hh - 1.0) / hh - 0.5) / b_h
        rho0 = (b1 - b2) / (1.0 - rk)
        rho1 = b1 - rho0
        correction = (rho0 / rk) * (self.model_outputs[-2] - m_prev) + rho1 * (x0_pred - m_prev)
        return base - (alpha * b_h) * correction
