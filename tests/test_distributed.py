"""Multi-process tests of wan.distributed on the CPU: torch.multiprocessing starts 2 (or 4) gloo
processes with the environment torchrun would give them. Each parallel result is compared with
the single-process result of the same weights computed in the same process."""
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wan.distributed import check_parallel_flags, init_distributed, shard_jobs
from wan.errors import WanInputError

TOLERANCE = dict(atol=2e-5, rtol=1e-4)  # fp32; only the order of reductions differs


# ---------------------------------------------------------------------------- launching
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, check, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    env = init_distributed()
    assert (env.rank, env.world_size, env.device) == (rank, world, torch.device("cpu"))
    try:
        check(env, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(check, *args, world=2):
    """Run check(env, *args) on `world` gloo processes; a failed assertion on any rank fails the test."""
    mp.spawn(_entry, args=(world, _free_port(), check, args), nprocs=world, join=True)


def tiny_dit(model_type="ti2v", channels=8, num_heads=2, dim=32, seed=0):
    from wan.modules.model import WanModel
    from wan.tools.randomize import randomize_

    model = WanModel(model_type=model_type, in_dim=channels, out_dim=channels, dim=dim, ffn_dim=64, freq_dim=64,
                     text_dim=24, num_heads=num_heads, num_layers=2, text_len=16)
    return randomize_(model, seed).eval()


def assert_all_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **TOLERANCE)


# ---------------------------------------------------------------------------- Ulysses
@torch.no_grad()
def _check_ulysses(env):
    from wan.distributed import enable_sequence_parallel

    model = tiny_dit()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 6, 10, generator=gen)  # 3 x 3 x 5 = 45 tokens: odd, so the shards need padding
    ctx = [torch.randn(5, 24, generator=gen), torch.randn(7, 24, generator=gen)]
    per_token = torch.full((2, 45), 800.0)
    per_token[:, :15] = 0.0  # first latent frame at t=0, as in ti2v image mode
    cases = [
        dict(x=[x, x], t=per_token, context=ctx, seq_len=45),  # a CFG batch with per-token timesteps
        dict(x=[x, torch.randn(8, 2, 6, 10, generator=gen)], t=torch.tensor([900.0, 300.0]), context=ctx,
             seq_len=47),  # unequal lengths (45 and 30 tokens) and the model's own padding
        dict(x=[x[:, :2, :4, :8]], t=torch.tensor([500.0]), context=ctx[:1], seq_len=16),  # no padding at all
    ]
    expected = [model(**case) for case in cases]

    enable_sequence_parallel(model, None)
    seen = []
    model.blocks[0].self_attn.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    for case, reference in zip(cases, expected):
        assert_all_close(model(**case), reference)
    assert seen == [23, 24, 8]  # each rank ran its half of the padded sequence (46, 48, 16)

    model.set_sequence_parallel(None)  # back to one process: the same results again
    assert_all_close(model(**cases[0]), expected[0])

    with pytest.raises(WanInputError, match="ulysses_size 2 must divide the DiT's 3 attention heads"):
        enable_sequence_parallel(tiny_dit(num_heads=3, dim=24), None)


def test_sequence_parallel_equals_single_process():
    run_ranks(_check_ulysses)


# ---------------------------------------------------------------------------- FSDP
@torch.no_grad()
def _check_fsdp(env, ckpt_dir):
    from functools import partial

    from torch.distributed.tensor import DTensor

    from wan.configs import WAN_CONFIGS
    from wan.distributed import is_sharded, shard_dit, shard_t5
    from wan.modules.t5 import T5EncoderModel

    model = tiny_dit("t2v")
    gen = torch.Generator().manual_seed(2)
    x = [torch.randn(8, 2, 4, 6, generator=gen)]
    ctx = [torch.randn(6, 24, generator=gen)]
    expected = model(x, t=torch.tensor([700.0]), context=ctx, seq_len=12)
    full = model.blocks[0].ffn[0].weight.numel()
    shard_dit(model, env.device)
    weight = model.blocks[0].ffn[0].weight
    assert is_sharded(model) and is_sharded(model.blocks[1]) and isinstance(weight, DTensor)
    assert weight.to_local().numel() == full // 2  # each rank holds half of every weight
    assert_all_close(model(x, t=torch.tensor([700.0]), context=ctx, seq_len=12), expected)

    config = WAN_CONFIGS["ti2v-5B"]
    paths = dict(checkpoint_path=os.path.join(ckpt_dir, config.t5_checkpoint),
                 tokenizer_path=os.path.join(ckpt_dir, config.t5_tokenizer))
    prompts = ["a red fox in the snow", "a much longer prompt about a quiet pine forest at sunrise"]
    expected = T5EncoderModel(config.text_len, torch.float32, **paths)(prompts, torch.device("cpu"))
    sharded = T5EncoderModel(config.text_len, torch.float32, shard_fn=partial(shard_t5, device=env.device), **paths)
    assert is_sharded(sharded.model) and is_sharded(sharded.model.encoder.block[0])
    assert_all_close(sharded(prompts, torch.device("cpu")), expected)


def test_fsdp_equals_unsharded(tiny_checkpoint):
    run_ranks(_check_fsdp, tiny_checkpoint("ti2v-5B"))


# ---------------------------------------------------------------------------- CFG parallel
def _euler_sample(field, noise, steps=3):
    from wan import flow

    return flow.sample(field, noise, flow.make_schedule("euler", steps, 5.0), progress=False)


@torch.no_grad()
def _check_cfg_parallel(env):
    from wan import flow
    from wan.distributed import CfgParallel, make_layout

    layout = make_layout(cfg_parallel=True)
    assert (layout.cfg_size, layout.cfg_rank, layout.ulysses_size) == (2, env.rank, 1)
    model = tiny_dit("t2v")
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(8, 2, 4, 6, generator=gen)
    ctx, ctx_null = [torch.randn(6, 24, generator=gen)], [torch.randn(9, 24, generator=gen)]
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    serial = flow.GuidedVelocity(model, ctx, ctx_null, 4.0, seq_len=12, batch_cfg=False)
    expected = _euler_sample(serial, noise)
    assert calls == [1] * 6  # serial: two passes per step
    calls.clear()
    parallel = flow.GuidedVelocity(model, ctx, ctx_null, 4.0, seq_len=12, cfg_parallel=CfgParallel(layout.cfg_group))
    torch.testing.assert_close(_euler_sample(parallel, noise), expected, **TOLERANCE)
    assert calls == [1] * 3  # one pass per step on each rank: the other branch ran on the partner


def test_cfg_parallel_equals_serial():
    run_ranks(_check_cfg_parallel)


# ---------------------------------------------------------------------------- a whole task
@torch.no_grad()
def _check_task(env, ckpt_dir):
    from PIL import Image

    from wan import tasks
    from wan.configs import WAN_CONFIGS
    from wan.distributed import is_sharded, shared_seed
    from wan.models import Models
    from wan.runner import Runner
    from wan.settings import Generation, LoadOptions

    seeds = [None, None]
    dist.all_gather_object(seeds, shared_seed(-1))
    assert seeds[0] == seeds[1]

    image = Image.fromarray((torch.rand(96, 160, 3, generator=torch.Generator().manual_seed(4)) * 255)
                            .to(torch.uint8).numpy())
    # 3 x 3 x 5 = 45 tokens per frame stack: odd, padded for 2 ranks
    generation = Generation(task="ti2v-5B", prompt="a red fox", size=(160, 96), frame_num=9, seed=seeds[0],
                            sampling=dict(steps=3, guide_scale=5.0))
    config = WAN_CONFIGS["ti2v-5B"]
    single = Models.load(config, ckpt_dir, LoadOptions(device="cpu"))
    expected = Runner(single, progress=False).denoise(tasks.prepare_ti2v(single, generation, image))
    models = Models.load(config, ckpt_dir, LoadOptions(device="cpu", ulysses_size=2, dit_fsdp=True, t5_fsdp=True))
    assert models.layout.ulysses_size == 2 and is_sharded(models.experts[0])
    assert is_sharded(models.text_encoder.model)
    latent = Runner(models, progress=False).denoise(tasks.prepare_ti2v(models, generation, image))
    torch.testing.assert_close(latent, expected, atol=1e-4, rtol=1e-3)


def test_task_with_ulysses_and_fsdp_equals_single_process(tiny_checkpoint):
    run_ranks(_check_task, tiny_checkpoint("ti2v-5B"))


# ---------------------------------------------------------------------------- 4 ranks: all at once
@torch.no_grad()
def _check_combined(env):
    from wan import flow
    from wan.distributed import CfgParallel, enable_sequence_parallel, make_layout, my_pending_jobs, shard_dit

    layout = make_layout(ulysses_size=2, cfg_parallel=True)
    assert (layout.ulysses_rank, layout.cfg_rank, layout.data_size) == (env.rank % 2, env.rank // 2, 1)
    assert layout.writes_outputs == (env.rank == 0)
    model = tiny_dit()
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(8, 3, 6, 10, generator=gen)  # 45 tokens
    condition = flow.FirstFrameCondition(torch.randn(8, 1, 6, 10, generator=gen))
    ctx, ctx_null = [torch.randn(6, 24, generator=gen)], [torch.randn(9, 24, generator=gen)]

    def field(m, **options):
        return flow.GuidedVelocity(m, ctx, ctx_null, 4.0, seq_len=45, condition=condition, **options)

    expected = flow.sample(field(copy.deepcopy(model)), noise, flow.make_schedule("euler", 3, 5.0), condition,
                           progress=False)
    shard_dit(model, env.device, layout.model_group)
    enable_sequence_parallel(model, layout.ulysses_group)
    latent = flow.sample(field(model, cfg_parallel=CfgParallel(layout.cfg_group)), noise,
                         flow.make_schedule("euler", 3, 5.0), condition, progress=False)
    torch.testing.assert_close(latent, expected, **TOLERANCE)

    # Data parallel: 2 groups of 2 sequence-parallel ranks share 7 jobs; a group follows its rank 0's
    # view of what is done even where its other rank disagrees.
    layout = make_layout(ulysses_size=2, data_parallel=True)
    done = {0} if env.rank % 2 == 0 else {0, 1, 2, 3}
    mine = my_pending_jobs(list(range(7)), done.__contains__, layout)
    everyone = [None] * 4
    dist.all_gather_object(everyone, mine)
    assert everyone == [[2, 4, 6], [2, 4, 6], [1, 3, 5], [1, 3, 5]]


def test_ulysses_cfg_fsdp_and_data_parallel_on_four_ranks():
    run_ranks(_check_combined, world=4)


# ---------------------------------------------------------------------------- single process
def test_without_torchrun_nothing_is_initialised(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = init_distributed()
    assert (env.rank, env.world_size, env.device, env.is_main) == (0, 1, None, True)
    assert not dist.is_initialized()


@pytest.mark.parametrize("world,flags,message", [
    (1, dict(ulysses_size=2), "ulysses_size 2 needs 2 processes: launch with torchrun \\(nproc_per_node=2\\)"),
    (1, dict(cfg_parallel=True), "cfg_parallel 1 with cfg_parallel \\(x2\\) needs 2 processes"),
    (4, dict(ulysses_size=2), "ulysses_size 2 uses 2 processes but torchrun started 4"),
    (2, dict(ulysses_size=2, cfg_parallel=True), "uses 4"),
    (6, dict(ulysses_size=4, data_parallel=True), "does not divide the 6 processes"),
    (2, dict(ulysses_size=0), "at least 1"),
])
def test_parallel_flags_are_checked_against_the_world_size(world, flags, message):
    with pytest.raises(WanInputError, match=message):
        check_parallel_flags(world, **flags)


def test_task_flags_without_torchrun_fail_with_one_line(tmp_path):
    from wan.configs import WAN_CONFIGS
    from wan.models import Models
    from wan.settings import LoadOptions

    for flags, message in ((dict(ulysses_size=2), "ulysses_size 2 needs 2 processes"),
                           (dict(dit_fsdp=True), "dit_fsdp shards weights over the GPUs that run one job"),
                           (dict(t5_fsdp=True, t5_cpu=True), "t5_fsdp shards T5 .* cannot be combined with t5_cpu")):
        with pytest.raises(WanInputError, match=message):
            Models.load(WAN_CONFIGS["ti2v-5B"], str(tmp_path), LoadOptions(device="cpu", **flags), parts=())


def test_parallel_flags_are_named_on_the_command_line(tiny_checkpoint, tmp_path):
    from conftest import run_script

    result = run_script("generate.py", "--task", "ti2v-5B", "--ckpt_dir", tiny_checkpoint("ti2v-5B"),
                        "--ulysses_size", "2", "--save_file", str(tmp_path / "x.mp4"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --ulysses_size 2 needs 2 processes")


def test_job_shares_are_disjoint_and_cover_every_job():
    jobs = [f"edit{i}" for i in range(11)]
    shares = [shard_jobs(jobs, rank, 3) for rank in range(3)]
    assert sorted(job for share in shares for job in share) == sorted(jobs)
    assert [len(s) for s in shares] == [4, 4, 3]
    with pytest.raises(ValueError):
        shard_jobs(jobs, 3, 3)


def test_generate_script_under_torchrun_matches_one_process(tiny_checkpoint, tmp_path):
    """The scripts' multi-GPU wiring end to end, on 2 CPU processes (gloo): Ulysses over 2 ranks
    writes one video (rank 0 only), equal to the single-process one up to reduction order."""
    import subprocess
    import sys

    from conftest import REPO, run_script
    from wan.utils.video_io import read_video

    flags = ["--task", "ti2v-5B", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--size", "64*64", "--frame_num", "5",
             "--sample_steps", "2", "--base_seed", "3"]
    single = run_script("generate.py", *flags, "--save_file", str(tmp_path / "one.mp4"))
    assert single.returncode == 0, single.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    both = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                           "generate.py", *flags, "--ulysses_size", "2", "--save_file", str(tmp_path / "two.mp4")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert both.returncode == 0, both.stderr[-3000:]
    one, two = read_video(tmp_path / "one.mp4")[0].float(), read_video(tmp_path / "two.mp4")[0].float()
    psnr = 10 * torch.log10(255.0 ** 2 / ((one - two) ** 2).mean().clamp_min(1e-10))
    assert psnr > 30, f"PSNR {psnr:.1f} dB"
