"""ODE steppers for the flow x_sigma = (1 - sigma) x0 + sigma noise, in the style of k-diffusion's samplers.

A stepper is a small function over a velocity field:

    x_next, history = step(field, x, schedule, i, history)

It moves `x` from schedule.sigmas[i] to sigmas[i + 1], evaluating `field(x, t)` at the model
timesteps it needs. One-step schemes (Euler, Heun, midpoint, the implicit fixed-point step) keep no
history (None in, None out). The multistep solvers of the official pipelines (UniPC, DPM-Solver++)
remember earlier data predictions in a `History`, an explicit value the caller owns: a checkpoint
saves it and a resumed run hands it back. Their update formulas are also what the official-API
scheduler classes in wan.utils.fm_solvers* run, so generation and those classes share one copy.

The multistep updates are written on data predictions m_i = x_i - sigma_i v_i and the half log-SNR
lambda = log((1 - sigma) / sigma), with python-float coefficients from the float32 grid and the
tensor arithmetic in (at least) float32, exactly like the official schedulers.
"""
import math
from dataclasses import dataclass, field

import torch


def flow_lambda(sigma):
    """Half log-SNR log(alpha / sigma) with alpha = 1 - sigma: -inf at pure noise, +inf at clean data.

    The infinities are kept on purpose: the update formulas reach their correct limits with them
    (exp(-inf) = 0, finite / inf = 0); that is how the first DPM++ step from sigma = 1 and the last
    step to sigma = 0 work in the official code."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


@dataclass
class History:
    """A multistep solver's memory after the steps taken so far.

    x0_preds: data predictions of the last steps, newest last (at most the solver order).
    last_sample: UniPC only: the sample its last predictor started from (the corrector redoes that step).
    last_order: UniPC only: the order of the last predictor, which its corrector repeats.
    steps_taken: steps taken so far, capped at the solver order (the multistep warm-up)."""

    x0_preds: list = field(default_factory=list)
    last_sample: torch.Tensor = None
    last_order: int = 0
    steps_taken: int = 0

    def to_tensors(self):
        """(tensors, plain values) for a checkpoint file; `from_tensors` restores it."""
        tensors = {f"x0_pred.{i}": x for i, x in enumerate(self.x0_preds)}
        if self.last_sample is not None:
            tensors["last_sample"] = self.last_sample
        return tensors, {"x0_preds": len(self.x0_preds), "last_order": self.last_order,
                         "steps_taken": self.steps_taken}

    @classmethod
    def from_tensors(cls, tensors, values):
        return cls([tensors[f"x0_pred.{i}"] for i in range(values["x0_preds"])], tensors.get("last_sample"),
                   values["last_order"], values["steps_taken"])


# ---------------------------------------------------------------------------- one-step schemes
def euler_step(field, x, schedule, i, history=None):
    s, t = schedule.sigmas, schedule.timesteps
    return euler_update(field(x, t[i]), x, s[i], s[i + 1]), None


def euler_update(velocity, x, sigma, sigma_next):
    return x + (sigma_next - sigma) * velocity


def heun_step(field, x, schedule, i, history=None):
    """Trapezoidal predictor-corrector: second order, two evaluations."""
    s, t = schedule.sigmas, schedule.timesteps
    h = s[i + 1] - s[i]
    v0 = field(x, t[i])
    v1 = field(x + h * v0, t[i + 1])
    return x + h * 0.5 * (v0 + v1), None


def midpoint_step(field, x, schedule, i, history=None):
    """Explicit midpoint: second order, two evaluations."""
    s, t = schedule.sigmas, schedule.timesteps
    h = s[i + 1] - s[i]
    v0 = field(x, t[i])
    return x + h * field(x + 0.5 * h * v0, 0.5 * (t[i] + t[i + 1])), None


def fixed_point_step(field, x, schedule, i, history=None, iterations=3):
    """Implicit step x' = x + h v(x', t'): the exact inverse of an Euler step taken back from x'.
    Solved by fixed-point iteration from an explicit Euler guess; used for inversion, where it
    makes Euler regeneration retrace the inverted path."""
    s, t = schedule.sigmas, schedule.timesteps
    h = s[i + 1] - s[i]
    guess = x + h * field(x, t[i])
    for _ in range(iterations):
        guess = x + h * field(guess, t[i + 1])
    return guess, None


# ---------------------------------------------------------------------------- multistep solvers
def dpm_step(field, x, schedule, i, history):
    """DPM-Solver++(2M), the official `dpm++` sampler."""
    velocity = field(x, schedule.timesteps[i]).float()
    return dpm_update(velocity, x, schedule.sigma_values, schedule.lambdas, i, history)


def unipc_step(field, x, schedule, i, history):
    """UniPC (bh2, predictor + corrector, order 2), the official default sampler."""
    velocity = field(x, schedule.timesteps[i]).float()
    return unipc_update(velocity, x, schedule.sigma_values, schedule.lambdas, i, history)


def dpm_update(velocity, x, sigmas, lambdas, i, history, order=2):
    """Multistep DPM-Solver++ (data prediction, midpoint) from sigmas[i] to sigmas[i+1].

    Step i is first order when it is the first step taken or the last step (the final sigma is 0);
    otherwise second order. From sigma = 1 (lambda = -inf) the second step's correction vanishes."""
    history = history or History()
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    lam, lam_next = lambdas[i], lambdas[i + 1]
    x0_pred = x - sigma * velocity
    h = lam_next - lam
    # (1 - sigma') * (e^{-h} - 1): the weight of the x0 prediction in the exact exponential integrator.
    weight = (1.0 - sigma_next) * math.expm1(-h)
    x_next = (sigma_next / sigma) * x - weight * x0_pred
    # The official lower_order_final rule only lowers order 3 on the second-to-last step, so for
    # order <= 2 just the last step (to sigma 0, where lambda = inf) drops to first order.
    if order == 2 and i != len(sigmas) - 2 and history.steps_taken >= 1:
        # Midpoint correction with D1 = (m_i - m_{i-1}) h / (lambda_i - lambda_{i-1}); 0 when the
        # previous step started at sigma = 1 (lambda_{i-1} = -inf).
        scale = 0.5 * weight * h / (lam - lambdas[i - 1])
        x_next = x_next - scale * (x0_pred - history.x0_preds[-1])
    return x_next, History((history.x0_preds + [x0_pred])[-order:], None, 0, min(history.steps_taken + 1, order))


def unipc_update(velocity, x, sigmas, lambdas, i, history, order=2, variant="bh2", lower_order_final=True,
                 corrector=True):
    """UniPC with data prediction: the corrector UniC redoes the previous step with the new data
    prediction m_i, then the predictor UniP of order min(order, steps left, steps taken + 1) moves
    the corrected x_i to sigmas[i+1]. `corrector=False` skips the correction of this step's input."""
    history = history or History()
    x0_pred = x - sigmas[i] * velocity
    if corrector and i > 0 and history.last_sample is not None:
        x = _unipc_correct(history, x0_pred, sigmas, lambdas, i, variant)
    this_order = min(order, len(sigmas) - 1 - i) if lower_order_final else order
    this_order = min(this_order, history.steps_taken + 1)
    preds = (history.x0_preds + [x0_pred])[-order:]
    x_next = _unipc_predict(x, preds, sigmas, lambdas, i, this_order, variant)
    return x_next, History(preds, x, this_order, min(history.steps_taken + 1, order))


def _exponential_terms(h, variant):
    """(phi1, B(h)) for a step of log-SNR length h; both are -1 when h = inf (a step to sigma 0)."""
    phi1 = math.expm1(-h)
    return phi1, (phi1 if variant == "bh2" else -h)


def _unipc_predict(x, preds, sigmas, lambdas, i, order, variant):
    """UniP from the (corrected) x_i to sigmas[i+1]; preds ends with m_i."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    lam, lam_next = lambdas[i], lambdas[i + 1]
    m_cur = preds[-1]
    h = lam_next - lam
    phi1, b_h = _exponential_terms(h, variant)
    alpha_next = 1.0 - sigma_next
    x_next = (sigma_next / sigma) * x - (alpha_next * phi1) * m_cur
    if order == 2:
        # D1 = (m_{i-1} - m_i) / r with r = (lambda_{i-1} - lambda_i) / h, weighted by rho = 1/2.
        inv_r = h / (lambdas[i - 1] - lam)
        x_next = x_next - (alpha_next * b_h * 0.5 * inv_r) * (preds[-2] - m_cur)
    return x_next


def _unipc_correct(history, x0_pred, sigmas, lambdas, i, variant):
    """UniC: recompute x_i from x_{i-1} with the new m_i; history.x0_preds ends with m_{i-1}."""
    sigma_prev, sigma = sigmas[i - 1], sigmas[i]
    lam_prev, lam = lambdas[i - 1], lambdas[i]
    m_prev = history.x0_preds[-1]
    h = lam - lam_prev
    hh = -h
    phi1, b_h = _exponential_terms(h, variant)
    alpha = 1.0 - sigma
    base = (sigma / sigma_prev) * history.last_sample - (alpha * phi1) * m_prev
    if history.last_order == 1:
        return base - (alpha * b_h * 0.5) * (x0_pred - m_prev)
    # Order 2: solve [[1, 1], [rk, 1]] rho = b in closed form. rk = -inf (lambda_{i-2} at sigma = 1)
    # gives rho_0 = 0 and a vanishing D term, the limit of the formula.
    rk = (lambdas[i - 2] - lam_prev) / h
    b1 = (phi1 / hh - 1.0) / b_h
    b2 = 2.0 * ((phi1 / hh - 1.0) / hh - 0.5) / b_h
    rho0 = (b1 - b2) / (1.0 - rk)
    rho1 = b1 - rho0
    correction = (rho0 / rk) * (history.x0_preds[-2] - m_prev) + rho1 * (x0_pred - m_prev)
    return base - (alpha * b_h) * correction


SAMPLERS = {"unipc": unipc_step, "dpm++": dpm_step, "euler": euler_step}
INVERSION_STEPPERS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step,
                      "fixed_point": fixed_point_step}
EVALUATIONS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "fixed_point": 4}
