"""The flow core: conditioning, guidance, expert switching, integration in both directions."""
import pytest
import torch

from wan import flow
from wan.configs import WAN_CONFIGS
from wan.modules.model import WanModel
from wan.step_cache import enable_step_cache
from wan.tools.randomize import randomize_


def tiny_dit(model_type="t2v", in_dim=16, out_dim=16, seed=0):
    model = WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, dim=32, ffn_dim=64, text_dim=8,
                     num_heads=2, num_layers=1, text_len=8)
    return randomize_(model, seed).eval().requires_grad_(False)


def contexts():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 8, generator=gen)], [torch.randn(5, 8, generator=gen)]


@torch.no_grad()
@pytest.mark.parametrize("task,high_steps,first_low_t", [("t2v-A14B", 26, 865), ("i2v-A14B", 15, 892)])
def test_expert_switch_at_the_boundary(task, high_steps, first_low_t):
    cfg = WAN_CONFIGS[task]
    low, high = tiny_dit(seed=1), tiny_dit(seed=2)
    context, context_null = contexts()
    field = flow.GuidedVelocity((low, high), context, context_null, cfg.sample_guide_scale, seq_len=4,
                                boundary=cfg.boundary)
    schedule = flow.make_schedule("unipc", cfg.sample_steps, cfg.sample_shift)
    # Tiny t2v experts for both tasks: the routing by timestep is what is under test.
    flow.sample(field, torch.randn(16, 1, 4, 4), schedule, progress=False)
    experts = [index for _, index in field.calls]
    assert experts == [1] * high_steps + [0] * (cfg.sample_steps - high_steps)
    assert field.calls[high_steps][0] == first_low_t


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
    with pytest.raises(ValueError, match="sample_solver"):
        flow.make_schedule("ddim", 10, 5.0)


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
    assert cache.skipped > 0 and cache.computed + cache.skipped == 30
    error = ((cached - exact).norm() / exact.norm()).item()
    assert 0 < error < 0.2
    enable_step_cache(model, 0)
    assert torch.equal(flow.sample(field, noise, schedule(), progress=False), exact)
