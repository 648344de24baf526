"""Every stepper and sampler of the flow core on an analytic, time-dependent velocity field with a known
exact solution: each converges at its order in both directions, the fixed-point step exactly inverts
Euler, and a stepper that reads the velocity at a wrong time, with a wrong sign or on a wrong grid fails.

The field is the exact probability-flow velocity of Gaussian data (it changes strongly with sigma), and
the schedules carry exact model timesteps t = 1000 sigma, so nothing but the stepper's own arithmetic
stands between the result and the exact solution."""
import math

import pytest
import torch

from wan import flow
from wan.solvers import INVERSION_STEPPERS, SAMPLERS, fixed_point_step


class GaussianFlow:
    """x0 ~ N(mu, diag(s^2)); x_sigma = (1 - sigma) x0 + sigma eps; the ODE solution through noise eps is
    x(sigma) = (1 - sigma) mu + std(sigma) eps with std^2 = (1 - sigma)^2 s^2 + sigma^2."""

    def __init__(self, dim=32, batch=4):
        g = torch.Generator().manual_seed(0)
        self.mu = torch.randn(dim, generator=g, dtype=torch.float64)
        self.s = torch.linspace(0.3, 2.5, dim, dtype=torch.float64)
        self.eps = torch.randn(batch, dim, generator=g, dtype=torch.float64)
        self.calls = []

    def std(self, sigma):
        return torch.sqrt((1 - sigma) ** 2 * self.s ** 2 + sigma ** 2)

    def exact(self, sigma):
        return (1 - sigma) * self.mu + self.std(sigma) * self.eps

    def __call__(self, x, t):
        """The velocity at model timestep t (= 1000 sigma)."""
        sigma = float(t) / 1000
        self.calls.append(sigma)
        return -self.mu + (sigma - (1 - sigma) * self.s ** 2) / self.std(sigma) ** 2 * (x - (1 - sigma) * self.mu)


def grid(steps, start=0.95, end=0.05, solver="euler"):
    """Sigmas from `start` to `end` (a downward grid), with exact timesteps, in float64."""
    sigmas = torch.linspace(start, end, steps + 1, dtype=torch.float64)
    return flow.Schedule(sigmas, sigmas * 1000, solver)


def error(field, stepper, schedule):
    x = field.exact(schedule.sigmas[0])
    history = None
    for i in range(len(schedule)):
        x, history = stepper(field, x, schedule, i, history)
    return (x - field.exact(schedule.sigmas[-1])).pow(2).mean().sqrt().item()


def order(stepper, coarse, fine):
    field = GaussianFlow()
    return math.log2(error(field, stepper, coarse) / error(field, stepper, fine))


# Measured orders (16 -> 32 steps): euler 0.98, heun 1.97, midpoint 2.99 (this linear-in-x field cancels
# its leading error term), fixed_point 1.03. A wrong evaluation time drops a second-order scheme to 1.
@pytest.mark.parametrize("name,low,high", [("euler", 0.8, 1.2), ("heun", 1.8, 2.2), ("midpoint", 1.8, 3.2),
                                           ("fixed_point", 0.8, 1.2)])
def test_inversion_steppers_converge_at_their_order_going_up(name, low, high):
    """Inversion walks sigma upwards: the same steppers on the reversed grid."""
    measured = order(INVERSION_STEPPERS[name], grid(16).reversed(), grid(32).reversed())
    assert low < measured < high, measured


# Measured (8 -> 16 steps; the multistep samplers take the velocity in float32, as the official
# schedulers do, so finer grids reach float32 rounding): euler 0.98, unipc 2.68, dpm++ 1.83.
@pytest.mark.parametrize("name,low,high", [("euler", 0.8, 1.2), ("unipc", 1.8, 3.2), ("dpm++", 1.6, 2.4)])
def test_samplers_converge_at_their_order_going_down(name, low, high):
    measured = order(SAMPLERS[name], grid(8, solver=name), grid(16, solver=name))
    assert low < measured < high, measured


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "fixed_point"])
def test_inversion_steppers_evaluate_the_field_at_the_right_times(name):
    field = GaussianFlow()
    schedule = grid(4).reversed()
    INVERSION_STEPPERS[name](field, field.exact(schedule.sigmas[1]), schedule, 1, None)
    s0, s1 = schedule.sigma_values[1], schedule.sigma_values[2]
    expected = {"euler": [s0], "heun": [s0, s1], "midpoint": [s0, 0.5 * (s0 + s1)],
                "fixed_point": [s0, s1, s1, s1]}[name]
    assert field.calls == pytest.approx(expected, abs=1e-12)


def test_fixed_point_inversion_is_the_exact_inverse_of_euler_regeneration():
    """Invert with the implicit step, regenerate with Euler on the same grid: the start comes back
    to the fixed-point iteration's precision, far below either scheme's own error."""
    field = GaussianFlow()
    down = grid(8)
    start = field.exact(down.sigmas[-1])
    x = start
    up = down.reversed()
    for i in range(len(up)):
        x, _ = fixed_point_step(field, x, up, i, iterations=12)
    for i in range(len(down)):
        x, _ = SAMPLERS["euler"](field, x, down, i, None)
    round_trip = (x - start).abs().max().item()
    euler_error = error(GaussianFlow(), SAMPLERS["euler"], down)
    assert round_trip < 1e-6 * euler_error * 1e3 and round_trip < 1e-6, (round_trip, euler_error)


def test_a_stepper_on_the_wrong_time_or_sign_is_caught():
    """The tests above catch the planted bugs a stepper can have: shown here on hand-broken copies."""
    def midpoint_at_start_time(field, x, schedule, i, history=None):
        s, t = schedule.sigmas, schedule.timesteps
        h = s[i + 1] - s[i]
        return x + h * field(x + 0.5 * h * field(x, t[i]), t[i]), None

    def euler_wrong_sign(field, x, schedule, i, history=None):
        s, t = schedule.sigmas, schedule.timesteps
        return x - (s[i + 1] - s[i]) * field(x, t[i]), None

    assert order(midpoint_at_start_time, grid(16).reversed(), grid(32).reversed()) < 1.5
    field = GaussianFlow()
    assert error(field, euler_wrong_sign, grid(32)) > 10 * error(GaussianFlow(), SAMPLERS["euler"], grid(32))


def test_integrate_and_invert_walk_the_schedule_both_ways():
    """flow.invert is the same loop on the reversed grid (in fp32, as latents are): up then down with
    Heun lands on the exact solution at both ends."""
    field = GaussianFlow()
    schedule = grid(32)
    start = field.exact(schedule.sigmas[-1])
    noise = flow.invert(field, start, schedule, "heun", progress=False)
    assert (noise.double() - field.exact(schedule.sigmas[0])).abs().max() < 2e-3
    back = flow.integrate(field, noise, schedule, INVERSION_STEPPERS["heun"], progress=False)
    assert (back.double() - start).abs().max() < 5e-3
