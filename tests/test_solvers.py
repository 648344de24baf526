"""Flow solvers: official grids, convergence order on an exact flow, parity with diffusers, state."""
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from wan.utils.fm_common import official_base_sigmas, shift_sigmas
from wan.utils.fm_solvers import (FlowDPMSolverMultistepScheduler, FlowEulerScheduler, get_sampling_sigmas,
                                  retrieve_timesteps)
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler


def official_unipc(steps, shift):
    scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    scheduler.set_timesteps(steps, device="cpu", shift=shift)
    return scheduler


def official_dpm(steps, shift):
    scheduler = FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    retrieve_timesteps(scheduler, device="cpu", sigmas=get_sampling_sigmas(steps, shift))
    return scheduler


def euler(steps, shift):
    scheduler = FlowEulerScheduler()
    scheduler.set_timesteps(steps, shift=shift)
    return scheduler


MAKERS = {"euler": euler, "dpm++": official_dpm, "unipc": official_unipc}


# ----------------------------------------------------------------------------------------------- grids

@pytest.mark.parametrize("shift, first_sigma", [(12.0, 0.99992), (5.0, 0.99980)])
def test_unipc_grid_matches_reference(shift, first_sigma):
    s = official_unipc(40, shift)
    assert s.timesteps.dtype == torch.int64 and len(s.timesteps) == 40
    assert s.sigmas.dtype == torch.float32 and s.sigmas.device.type == "cpu" and len(s.sigmas) == 41
    assert s.sigmas[0].item() == pytest.approx(first_sigma, abs=5e-6) and s.sigmas[0].item() < 1.0
    assert s.timesteps[0].item() == 999 and s.sigmas[-1].item() == 0.0
    # timesteps are truncated from the float64 grid, not rounded
    base = np.linspace(np.float32(0.999).item(), 0.0, 41)[:-1]
    expected = (shift_sigmas(base, shift) * 1000).astype(np.int64)
    assert s.timesteps.tolist() == expected.tolist()


@pytest.mark.parametrize("shift", [12.0, 5.0])
def test_dpm_and_euler_grid_start_at_one(shift):
    dpm, eul = official_dpm(40, shift), euler(40, shift)
    assert dpm.sigmas[0].item() == 1.0 and dpm.timesteps[0].item() == 1000
    assert len(dpm.timesteps) == 40 and len(dpm.sigmas) == 41 and dpm.sigmas[-1].item() == 0.0
    assert torch.equal(eul.sigmas, dpm.sigmas) and torch.equal(eul.timesteps, dpm.timesteps)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
@pytest.mark.parametrize("shift, boundary, n_high, first_low", [(12.0, 875, 26, 865), (5.0, 900, 15, 892)])
def test_a14b_expert_split(solver, shift, boundary, n_high, first_low):
    timesteps = MAKERS[solver](40, shift).timesteps
    high = timesteps >= boundary
    assert int(high.sum()) == n_high and bool(high[:n_high].all())
    assert timesteps[n_high].item() == first_low


def test_constructor_shift_is_applied_twice_like_the_official_code():
    s = FlowUniPCMultistepScheduler(shift=5.0)
    s.set_timesteps(40)
    sigma_max = np.float32(shift_sigmas(0.999, 5.0)).item()
    assert s.sigmas[0].item() == pytest.approx(shift_sigmas(sigma_max, 5.0), abs=1e-7)


def test_dynamic_shift_with_mu_log_s_equals_static_shift():
    dynamic = FlowUniPCMultistepScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        dynamic.set_timesteps(20)
    dynamic.set_timesteps(20, mu=math.log(5.0))
    torch.testing.assert_close(dynamic.sigmas, official_unipc(20, 5.0).sigmas, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ convergence on an exact flow

class GaussianFlow:
    """Data x0 ~ N(mu, diag(s^2)), path x = (1 - sigma) x0 + sigma * noise. The marginal velocity is exact:
    v(x, sigma) = -mu + (sigma - (1 - sigma) s^2) / std^2 * (x - (1 - sigma) mu), std^2 = (1-sigma)^2 s^2 + sigma^2,
    and the ODE solution from noise eps is x(sigma) = (1 - sigma) mu + std(sigma) * eps."""

    def __init__(self, dim=64, batch=8):
        g = torch.Generator().manual_seed(0)
        self.mu = torch.randn(dim, generator=g, dtype=torch.float64)
        self.s = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
        self.eps = torch.randn(batch, dim, generator=g, dtype=torch.float64)

    def std(self, sigma):
        return torch.sqrt((1 - sigma) ** 2 * self.s ** 2 + sigma ** 2)

    def velocity(self, x, sigma):
        return -self.mu + (sigma - (1 - sigma) * self.s ** 2) / self.std(sigma) ** 2 * (x - (1 - sigma) * self.mu)

    def exact(self, sigma):
        return (1 - sigma) * self.mu + self.std(sigma) * self.eps


def rms_error(flow, scheduler):
    """Integrate from the grid's first sigma (exact start state there) to 0, in float64."""
    # Fine high-shift grids repeat their first integer timestep (999, 999, ...); the official lookup would
    # then start at index 1, so pin the start.
    scheduler.set_begin_index(0)
    sigmas = scheduler.sigmas.double()
    x = flow.exact(sigmas[0])
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(flow.velocity(x, sigmas[i]), t, x, return_dict=False)[0]
    return (x - flow.exact(sigmas[-1])).pow(2).mean().sqrt().item()


# Measured (RMS over 8x64 components, N -> 2N): shift 1, N=80: euler 0.99, dpm++ 1.77, unipc 2.18;
# shift 5, N=320: euler 1.00, dpm++ 1.72, unipc 1.97. With shift s only about N/s steps land in the
# low-noise region, so the asymptotic regime starts later; dpm++ approaches 2 slowly (a log N factor
# from the uniform-sigma grid's large log-SNR steps at both ends).
@pytest.mark.parametrize("shift, steps", [(1.0, 80), (5.0, 320)])
def test_convergence_order(shift, steps):
    flow = GaussianFlow()
    errors, orders = {}, {}
    for name, make in MAKERS.items():
        coarse, fine = rms_error(flow, make(steps, shift)), rms_error(flow, make(2 * steps, shift))
        errors[name], orders[name] = coarse, math.log2(coarse / fine)
    assert 0.8 < orders["euler"] < 1.3, orders
    assert 1.6 < orders["dpm++"] < 2.5, orders
    assert 1.8 < orders["unipc"] < 2.5, orders
    assert errors["unipc"] < errors["dpm++"] < errors["euler"], errors


# ------------------------------------------------------------------------------ parity with diffusers

def linear_field(channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, channels, generator=g) * (0.5 / math.sqrt(channels))
    bias = torch.randn(channels, 1, 1, 1, generator=g)

    def velocity(x, sigma):
        return torch.einsum("oc,bcfhw->bofhw", weight, x) + (1 + sigma) * bias
    return velocity


def max_trajectory_difference(ours, theirs, velocity, shape=(1, 16, 2, 4, 4)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    worst = 0.0
    for i, t in enumerate(ours.timesteps):
        sigma = ours.sigmas[i].item()
        x = ours.step(velocity(x, sigma), t, x, return_dict=False)[0]
        y = theirs.step(velocity(y, sigma), t, y, return_dict=False)[0]
        worst = max(worst, ((x - y).abs().max() / y.abs().max()).item())
    return worst


@pytest.mark.parametrize("steps, shift", [(40, 12.0), (40, 5.0), (10, 5.0), (3, 1.0)])
def test_unipc_matches_diffusers_on_the_official_grid(steps, shift):
    ours = official_unipc(steps, shift)
    theirs = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
                                     solver_order=2, solver_type="bh2", predict_x0=True,
                                     lower_order_final=True, final_sigmas_type="zero")
    # diffusers takes custom flow sigmas (flow_shift 1 = identity) and truncates sigma*1000 the same way
    theirs.set_timesteps(sigmas=shift_sigmas(official_base_sigmas(steps, 1000, 1.0, False), shift))
    assert torch.equal(theirs.sigmas, ours.sigmas) and torch.equal(theirs.timesteps, ours.timesteps)
    assert max_trajectory_difference(ours, theirs, linear_field()) < 1e-5  # measured 1.5e-7 .. 3.5e-7


@pytest.mark.parametrize("steps, shift", [(40, 12.0), (10, 5.0), (3, 1.0)])
def test_dpm_matches_diffusers_on_the_official_grid(steps, shift):
    ours = official_dpm(steps, shift)
    theirs = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
                                         algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                         lower_order_final=True, final_sigmas_type="zero")
    # diffusers' DPM set_timesteps takes no custom sigmas: give it the official grid afterwards
    theirs.set_timesteps(steps)
    theirs.sigmas, theirs.timesteps = ours.sigmas.clone(), ours.timesteps.clone()
    assert max_trajectory_difference(ours, theirs, linear_field()) < 1e-5  # measured 0.8e-7 .. 2e-7


def test_first_dpm_step_from_pure_noise_and_last_step_lands_on_the_x0_prediction():
    velocity = linear_field()
    for make in (official_dpm, official_unipc):
        s = make(6, 5.0)
        sigmas = s.sigmas.tolist()
        x = torch.randn(1, 16, 2, 4, 4)
        for i, t in enumerate(s.timesteps):
            v = velocity(x, sigmas[i])
            out = s.step(v, t, x, return_dict=False)[0]
            if make is official_dpm and i == 0:  # sigma 1, lambda = -inf: x1 = sigma1 x + (1 - sigma1)(x - v)
                torch.testing.assert_close(out, sigmas[1] * x + (1 - sigmas[1]) * (x - v))
            if i == len(s.timesteps) - 1:  # to sigma 0: the x0 prediction of the (uncorrected) input
                torch.testing.assert_close(out, x - sigmas[i] * v)
            x = out


# ------------------------------------------------------------------------------------ state and API

def run(scheduler, velocity, x):
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, scheduler.sigmas[i].item()), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("name", list(MAKERS))
def test_set_timesteps_resets_state_for_reuse(name):
    velocity, x = linear_field(), torch.randn(1, 16, 2, 4, 4)
    s = MAKERS[name](8, 5.0)
    first = run(s, velocity, x)
    assert s.step_index == 8
    if name == "euler":
        s.set_timesteps(8, shift=5.0)
    elif name == "dpm++":
        s.set_timesteps(sigmas=get_sampling_sigmas(8, 5.0))
    else:
        s.set_timesteps(8, shift=5.0)
    assert s.step_index is None
    assert s.history.steps_taken == 0 and s.history.x0_preds == [] and s.history.last_sample is None
    torch.testing.assert_close(run(s, velocity, x), first, rtol=0, atol=0)


def test_step_index_lookup_uses_second_match_and_rejects_unknown_timesteps():
    s = FlowUniPCMultistepScheduler()
    s.set_timesteps(sigmas=[0.9995, 0.9991, 0.5, 0.25])  # timesteps 999, 999, 500, 250
    assert s.timesteps.tolist() == [999, 999, 500, 250]
    x = torch.randn(2, 3)
    s.step(x, torch.tensor(999), x)
    assert s.step_index == 2  # started at the second 999
    s.set_timesteps(sigmas=[0.9995, 0.9991, 0.5, 0.25])
    s.step(x, 500, x)
    assert s.step_index == 3
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="not one of"):
        s.step(x, 123, x)
    s.set_begin_index(0)
    s.step(x, 123, x)  # an explicit begin index skips the lookup
    assert s.step_index == 1


def test_stepping_past_the_end_is_a_clear_error():
    # shift 12 with 100 steps repeats timestep 999, so the official lookup starts at index 1 and the
    # 100th step would run off the grid
    s = official_unipc(100, 12.0)
    assert s.timesteps[0] == s.timesteps[1]
    x = torch.randn(2, 3)
    for t in s.timesteps[:-1]:
        x = s.step(torch.zeros_like(x), t, x, return_dict=False)[0]
    with pytest.raises(RuntimeError, match="set_begin_index"):
        s.step(torch.zeros_like(x), s.timesteps[-1], x)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        FlowDPMSolverMultistepScheduler().step(x, 999, x)


@pytest.mark.parametrize("name", list(MAKERS))
def test_return_forms_and_low_precision_update(name):
    velocity = linear_field()
    x = torch.randn(1, 16, 2, 4, 4)
    v = velocity(x, 1.0)
    t = MAKERS[name](4, 5.0).timesteps[0]
    as_tuple = MAKERS[name](4, 5.0).step(v, t, x, return_dict=False)
    as_object = MAKERS[name](4, 5.0).step(v, t, x)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], as_object.prev_sample)
    # a bf16 sample is updated in fp32 and only the result is rounded
    low = MAKERS[name](4, 5.0).step(v, t, x.bfloat16(), return_dict=False)[0]
    assert low.dtype == torch.bfloat16
    reference = MAKERS[name](4, 5.0).step(v, t, x.bfloat16().float(), return_dict=False)[0]
    assert torch.equal(low, reference.bfloat16())


def test_retrieve_timesteps_and_config():
    s = FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    timesteps, n = retrieve_timesteps(s, device="cpu", sigmas=get_sampling_sigmas(50, 5.0))
    assert n == 50 and timesteps is s.timesteps and timesteps[0].item() == 1000
    timesteps, n = retrieve_timesteps(s, 20, device="cpu", shift=5.0)
    assert n == 20 and len(timesteps) == 20 and timesteps[0].item() == 999
    with pytest.raises(ValueError, match="custom timesteps"):
        retrieve_timesteps(s, timesteps=[999, 500])
    assert s.config.num_train_timesteps == 1000 and s.config.shift == 1
