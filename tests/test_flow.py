"""The flow core: conditioning, guidance, expert switching, integration in both directions."""
import pytest
import torch

from wan import flow
from wan.solvers import SAMPLERS
from wan.configs import WAN_CONFIGS
from wan.modules.model import WanModel
from wan.step_cache import enable_step_cache, step_cache_of
from wan.tools.randomize import randomize_


def tiny_dit(model_type="t2v", in_dim=16, out_dim=16, seed=0):
    model = WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, dim=32, ffn_dim=64, text_dim=8,
                     num_heads=2, num_layers=1, text_len=8)
    return randomize_(model, seed).eval().requires_grad_(False)


def contexts():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 8, generator=gen)], [torch.randn(5, 8, generator=gen)]


def record_calls(experts):
    """(t, expert index) of every forward of `experts`, recorded by hooks (nothing in the core)."""
    calls = []
    for index, model in enumerate(experts):
        model.register_forward_pre_hook(lambda module, args, kwargs, index=index: calls.append(
            (float(kwargs["t"].max()), index)), with_kwargs=True)
    return calls


@torch.no_grad()
@pytest.mark.parametrize("task,high_steps,first_low_t", [("t2v-A14B", 26, 865), ("i2v-A14B", 15, 892)])
def test_expert_switch_at_the_boundary(task, high_steps, first_low_t):
    cfg = WAN_CONFIGS[task]
    low, high = tiny_dit(seed=1), tiny_dit(seed=2)
    calls = record_calls((low, high))
    context, context_null = contexts()
    field = flow.GuidedVelocity((low, high), context, context_null, cfg.sample_guide_scale, seq_len=4,
                                boundary=cfg.boundary)
    schedule = flow.make_schedule("unipc", cfg.sample_steps, cfg.sample_shift)
    # Tiny t2v experts for both tasks: the routing by timestep is what is under test.
    flow.sample(field, torch.randn(16, 1, 4, 4), schedule, progress=False)
    experts = [index for _, index in calls]
    assert experts == [1] * high_steps + [0] * (cfg.sample_steps - high_steps)
    assert calls[high_steps][0] == first_low_t


@torch.no_grad()
def test_guide_scales_follow_the_expert():
    low, high = tiny_dit(seed=1), tiny_dit(seed=2)
    context, context_null = contexts()
    x = torch.randn(16, 1, 4, 4)
    field = flow.GuidedVelocity((low, high), context, context_null, (3.0, 4.0), seq_len=4, boundary=0.875)
    for model, t, scale in ((high, 900.0, 4.0), (low, 500.0, 3.0)):
        tt = torch.tensor([t])
        cond = model([x], t=tt, context=context, seq_len=4)[0]
        uncond = model([x], t=tt, context=context_null, seq_len=4)[0]
        assert torch.allclose(field(x, t), uncond + scale * (cond - uncond), atol=1e-5)


@torch.no_grad()
def test_batched_cfg_equals_two_passes():
    model = tiny_dit()
    context, context_null = contexts()
    x = torch.randn(16, 2, 4, 4)
    batched = flow.GuidedVelocity(model, context, context_null, 5.0, seq_len=8, batch_cfg=True)(x, 700)
    serial = flow.GuidedVelocity(model, context, context_null, 5.0, seq_len=8, batch_cfg=False)(x, 700)
    assert torch.allclose(batched, serial, atol=1e-5)


def test_first_frame_condition_layout():
    z = torch.randn(48, 1, 4, 6)
    condition = flow.FirstFrameCondition(z)
    latent = torch.randn(48, 3, 4, 6)
    applied = condition.apply(latent)
    assert torch.equal(applied[:, :1], z) and torch.equal(applied[:, 1:], latent[:, 1:])
    # Same as the reference's (1 - mask) * z + mask * latent with mask 0 on latent frame 0.
    mask = torch.ones_like(latent)
    mask[:, 0] = 0
    assert torch.allclose(applied, (1 - mask) * z + mask * latent)
    t = condition.timesteps(800, seq_len=20)
    tokens_per_frame = 2 * 3
    assert t.shape == (1, 20)
    assert (t[0, :tokens_per_frame] == 0).all() and (t[0, tokens_per_frame:] == 800).all()


@torch.no_grad()
def test_first_frame_stays_fixed_through_sampling():
    model = tiny_dit("ti2v", 48, 48)
    context, context_null = contexts()
    z = torch.randn(48, 1, 4, 4)
    condition = flow.FirstFrameCondition(z)
    field = flow.GuidedVelocity(model, context, context_null, 5.0, seq_len=12, condition=condition)
    out = flow.sample(field, torch.randn(48, 3, 4, 4), flow.make_schedule("unipc", 4, 5.0), condition,
                      progress=False)
    assert torch.equal(out[:, :1], z)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_guided_sampling_on_the_gpu_never_waits_for_it():
    """A whole generation loop (CFG batched, ti2v first frame, UniPC) queues its GPU work without a
    host sync, so the GPU never idles between steps; the first run builds the cached tables."""
    from conftest import no_host_sync

    model = tiny_dit("ti2v", 48, 48).cuda()
    context, context_null = ([c.cuda() for c in cs] for cs in contexts())
    condition = flow.FirstFrameCondition(torch.randn(48, 1, 4, 4, device="cuda"))
    field = flow.GuidedVelocity(model, context, context_null, 5.0, seq_len=12, condition=condition)
    noise = torch.randn(48, 3, 4, 4, device="cuda")
    first = flow.sample(field, noise, flow.make_schedule("unipc", 4, 5.0), condition, progress=False)
    with no_host_sync():
        again = flow.sample(field, noise, flow.make_schedule("unipc", 4, 5.0), condition, progress=False)
    assert torch.equal(again, first)


@torch.no_grad()
def test_sampling_is_deterministic_and_solver_dependent():
    model = tiny_dit()
    context, context_null = contexts()
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    runs = {}
    for solver in flow.SOLVERS:
        field = flow.GuidedVelocity(model, context, context_null, 4.0, seq_len=8)
        runs[solver] = flow.sample(field, noise, flow.make_schedule(solver, 6, 5.0), progress=False)
        again = flow.sample(field, noise, flow.make_schedule(solver, 6, 5.0), progress=False)
        assert torch.equal(runs[solver], again)
        assert torch.isfinite(runs[solver]).all()
    assert not torch.allclose(runs["unipc"], runs["euler"])


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match="solver must be one of"):
        flow.make_schedule("ddim", 10, 5.0)


@pytest.mark.parametrize("solver", flow.SOLVERS)
@pytest.mark.parametrize("steps,shift", [(40, 12.0), (7, 5.0), (3, 1.0)])
def test_schedules_are_the_official_schedulers_grids(solver, steps, shift):
    from wan.utils.fm_solvers import FlowDPMSolverMultistepScheduler, FlowEulerScheduler, get_sampling_sigmas
    from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

    if solver == "unipc":
        official = FlowUniPCMultistepScheduler(shift=1)
        official.set_timesteps(steps, shift=shift)
    elif solver == "dpm++":
        official = FlowDPMSolverMultistepScheduler(shift=1)
        official.set_timesteps(sigmas=get_sampling_sigmas(steps, shift))
    else:
        official = FlowEulerScheduler()
        official.set_timesteps(steps, shift=shift)
    schedule = flow.make_schedule(solver, steps, shift)
    assert torch.equal(schedule.sigmas, official.sigmas)
    assert torch.equal(schedule.timesteps[:-1], official.timesteps.float()) and schedule.timesteps[-1] == 0


@torch.no_grad()
@pytest.mark.parametrize("solver", flow.SOLVERS)
def test_samplers_equal_stepping_the_official_scheduler_classes(solver):
    """One copy of each solver: the flow core's stepper and the official-API class give the same bits."""
    from wan.utils.fm_solvers import FlowDPMSolverMultistepScheduler, FlowEulerScheduler
    from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

    model = tiny_dit()
    context, context_null = contexts()
    field = flow.GuidedVelocity(model, context, context_null, 4.0, seq_len=8)
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(9))
    schedule = flow.make_schedule(solver, 6, 5.0)
    ours = flow.sample(field, noise, schedule, progress=False)
    official = {"unipc": FlowUniPCMultistepScheduler, "dpm++": FlowDPMSolverMultistepScheduler,
                "euler": FlowEulerScheduler}[solver]()
    official.set_timesteps(sigmas=schedule.sigmas[:-1].double().numpy(), shift=1.0)
    official.set_begin_index(0)
    x = noise.clone()
    for i, t in enumerate(official.timesteps):
        x = official.step(field(x, schedule.timesteps[i])[None].float(), t, x[None], return_dict=False)[0][0]
    assert torch.equal(ours, x)


@torch.no_grad()
def test_step_cache_skips_steps_and_stays_close():
    """Opt-in and inexact: with a threshold it skips some block passes and its result stays near
    the exact one; threshold 0 is the exact path."""
    model = tiny_dit("ti2v", 48, 48, seed=3)
    context, context_null = contexts()
    noise = torch.randn(48, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    schedule = lambda: flow.make_schedule("unipc", 30, 5.0)  # noqa: E731
    field = flow.GuidedVelocity(model, context, context_null, 4.0, seq_len=8)
    exact = flow.sample(field, noise, schedule(), progress=False)
    cache = enable_step_cache(model, 0.2)
    cached = flow.sample(field, noise, schedule(), progress=False)
    assert step_cache_of(model) is cache
    assert cache.skipped > 0 and cache.computed + cache.skipped == 30
    error = ((cached - exact).norm() / exact.norm()).item()
    assert 0 < error < 0.2
    enable_step_cache(model, 0)
    assert step_cache_of(model) is None
    assert torch.equal(flow.sample(field, noise, schedule(), progress=False), exact)
    # Inversion walks t upwards: every step starts a new trajectory, so nothing is skipped.
    cache = enable_step_cache(model, 0.2)
    flow.invert(field, exact, schedule(), progress=False)
    assert cache.skipped == 0 and cache.computed == 30


@torch.no_grad()
def test_step_cache_kept_across_prompts_restarts_any_entry_and_stays_bounded():
    """A cache kept over many jobs (the quality bench, a manifest of edits): an inversion restarts the
    entry of a prompt seen before whatever its place in the list (the removal compared entries by value
    and raised on their tensors), and prompts never seen again do not pile up."""
    from wan.step_cache import MAX_ENTRIES

    model = tiny_dit("ti2v", 48, 48, seed=3)
    gen = torch.Generator().manual_seed(1)
    prompts = [[torch.randn(3, 8, generator=gen)] for _ in range(MAX_ENTRIES + 2)]
    noise = torch.randn(48, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    cache = enable_step_cache(model, 0.2)
    fields = [flow.GuidedVelocity(model, context, None, 1.0, seq_len=8) for context in prompts]
    for field in fields:
        latent = flow.sample(field, noise, flow.make_schedule("euler", 6, 5.0), progress=False)
    assert len(cache.entries) == MAX_ENTRIES
    before = list(cache.entries)
    flow.invert(fields[-2], latent, flow.make_schedule("euler", 6, 5.0), progress=False)  # not the last entry
    # The inverted prompt's entry was replaced and is now the most recent; the others are untouched.
    kept = before[:2] + before[3:]
    assert all(now is then for now, then in zip(cache.entries[:-1], kept, strict=True))
    assert not any(cache.entries[-1] is then for then in before)
    enable_step_cache(model, 0)


@torch.no_grad()
def test_a_non_finite_velocity_stops_the_run_naming_step_expert_and_tensor():
    from wan.errors import NonFiniteError

    low, high = tiny_dit(seed=1), tiny_dit(seed=2)
    low.head.head.bias.fill_(float("inf"))  # a broken low-noise expert
    context, context_null = contexts()
    field = flow.GuidedVelocity((low, high), context, context_null, 4.0, seq_len=4, boundary=0.875)
    schedule = flow.make_schedule("euler", 12, 12.0)
    first_low = next(i for i, t in enumerate(schedule.timesteps.tolist()) if t < 875)
    steps = []
    with pytest.raises(NonFiniteError) as caught:
        flow.integrate(field, torch.randn(16, 1, 4, 4), schedule, SAMPLERS["euler"], progress=False,
                       callback=lambda i, x, history: steps.append(i))
    message = str(caught.value)
    assert f"denoising step {first_low + 1} of 12" in message
    assert "the low-noise expert" in message and "velocity is not finite" in message
    assert max(steps) < first_low + 5  # stopped within a few steps, not at the end
