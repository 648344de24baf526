"""Multi-GPU runs on one host under torchrun: FSDP2 weight sharding (DiT and T5), Ulysses sequence
parallelism, CFG parallelism, and data parallelism over independent jobs.

    env = init_distributed()                        # no-op without torchrun
    layout = make_layout(ulysses_size=2, cfg_parallel=True)   # validated against the world size
    task = WanTI2V(config, ckpt, device=env.device, use_sp=True, cfg_parallel=True, dit_fsdp=True)
    ... only is_main_process() writes outputs ...
"""
from .cfg_parallel import CfgParallel
from .env import (DistEnv, Layout, barrier, check_parallel_flags, current_layout, from_main_process, get_rank,
                  get_world_size, init_distributed, is_distributed, is_main_process, launched_with_torchrun, main_tqdm,
                  make_layout, shared_seed)
from .fsdp import is_sharded, shard_dit, shard_t5
from .jobs import my_pending_jobs, shard_jobs
from .ulysses import UlyssesParallel, enable_sequence_parallel

__all__ = ["CfgParallel", "DistEnv", "Layout", "UlyssesParallel", "barrier", "check_parallel_flags",
           "current_layout", "enable_sequence_parallel", "from_main_process", "get_rank", "get_world_size",
           "init_distributed", "is_distributed", "is_main_process", "is_sharded", "launched_with_torchrun", "main_tqdm",
           "make_layout", "my_pending_jobs", "shard_dit", "shard_jobs", "shard_t5", "shared_seed"]
