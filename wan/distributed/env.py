"""The process's place in a torchrun launch, and the process groups of a parallel run.

Not launched with torchrun (no WORLD_SIZE, or WORLD_SIZE=1), everything here answers as for a single
process and nothing is initialised, so single-process behaviour is unchanged.

Ranks are laid out as [data, cfg, ulysses] (ulysses fastest): the ranks of one sequence-parallel
group are neighbours, the two ranks of a CFG pair hold the same sequence shard, and each
data-parallel group (a "model group" of cfg x ulysses ranks) runs its own share of the jobs.
"""
import logging
import os
import random
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..settings import SettingsError

log = logging.getLogger(__name__)

# NVLink SHARP / multicast stays off (the lent H200 hosts do not support it reliably).
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device = None  # None when not distributed: the caller's device setting applies

    @property
    def is_main(self):
        return self.rank == 0


def launched_with_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend=None):
    """Join the torchrun process group (NCCL on CUDA, gloo on the CPU) and bind this process to
    GPU LOCAL_RANK. Returns a DistEnv; a no-op returning rank 0 of 1 when not under torchrun."""
    if not launched_with_torchrun():
        return DistEnv(0, 1, 0, None)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        for name, value in NO_MULTICAST_ENV.items():
            os.environ.setdefault(name, value)
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"),
                                device_id=device if device.type == "cuda" else None)
    env = DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)
    log.info("rank %d of %d on %s", env.rank, env.world_size, device)
    return env


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """True on global rank 0, and in a single process: the rank that logs, shows progress and writes."""
    return get_rank() == 0


def main_tqdm(iterable=None, **kwargs):
    """tqdm shown on rank 0 only (every rank still iterates)."""
    kwargs["disable"] = kwargs.get("disable", False) or not is_main_process()
    return tqdm(iterable, **kwargs)


def from_main_process(value):
    """Rank 0's `value` (any picklable object) on every rank, e.g. a VLM caption that must not
    differ between ranks. Every rank must call it; a no-op in a single process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shared_seed(seed):
    """Resolve a random seed (None or < 0) once and give every rank rank 0's value, so all ranks
    draw the same noise. Every rank must call it."""
    return from_main_process(random.randint(0, sys.maxsize) if seed is None or seed < 0 else int(seed))


def barrier():
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------------------- process groups
@dataclass
class Layout:
    """Who does what in a parallel run. *_group are process groups (None for a size of 1, where
    no communication is needed); *_rank are this process's index within them."""

    ulysses_size: int = 1
    cfg_size: int = 1
    data_size: int = 1
    ulysses_rank: int = 0
    cfg_rank: int = 0
    data_rank: int = 0
    ulysses_group: object = None
    cfg_group: object = None
    model_group: object = None  # the cfg x ulysses ranks that run one job together (FSDP shards here)

    @property
    def model_size(self):
        return self.ulysses_size * self.cfg_size

    @property
    def writes_outputs(self):
        """The first rank of each model group writes its job's outputs (rank 0 without data parallelism)."""
        return self.ulysses_rank == 0 and self.cfg_rank == 0


_layout = None


def current_layout():
    """The layout made by `make_layout`, or the single-process one."""
    return _layout or Layout()


def check_parallel_flags(world_size, ulysses_size=1, cfg_parallel=False, data_parallel=False):
    """Setting errors for parallel settings this world size cannot run."""
    if ulysses_size < 1:
        raise SettingsError("ulysses_size", f"must be at least 1, got {ulysses_size}")
    model_size = ulysses_size * (2 if cfg_parallel else 1)
    name = "ulysses_size" if ulysses_size > 1 or not cfg_parallel else "cfg_parallel"
    described = f"{ulysses_size}" + (" with cfg_parallel (x2)" if cfg_parallel else "")
    if model_size > 1 and world_size == 1:
        raise SettingsError(name, f"{described} needs {model_size} processes: launch with torchrun "
                                  f"(nproc_per_node={model_size})")
    if data_parallel:
        if world_size % model_size:
            raise SettingsError(name, f"{described} uses {model_size} processes per job, which does not divide the "
                                      f"{world_size} processes torchrun started")
    elif world_size != model_size:
        raise SettingsError(name, f"{described} uses {model_size} processes but torchrun started {world_size}; set "
                                  "ulysses_size (x2 with cfg_parallel) to the number of processes")


def make_layout(ulysses_size=1, cfg_parallel=False, data_parallel=False):
    """Validate the flags against the world size, create the process groups (every rank must
    call this, in the same order) and remember the layout for `current_layout`."""
    global _layout
    world, rank = get_world_size(), get_rank()
    check_parallel_flags(world, ulysses_size, cfg_parallel, data_parallel)
    cfg_size = 2 if cfg_parallel else 1
    model_size = ulysses_size * cfg_size
    layout = Layout(ulysses_size, cfg_size, world // model_size, ulysses_rank=rank % ulysses_size,
                    cfg_rank=(rank // ulysses_size) % cfg_size, data_rank=rank // model_size)
    if world > 1:
        ranks = torch.arange(world).view(world // model_size, cfg_size, ulysses_size)
        layout.ulysses_group = _own_group(ranks.flatten(0, 1), rank) if ulysses_size > 1 else None
        layout.cfg_group = _own_group(ranks.transpose(1, 2).flatten(0, 1), rank) if cfg_size > 1 else None
        layout.model_group = _own_group(ranks.flatten(1), rank) if model_size > 1 else None
    _layout = layout
    log.info("parallel layout: %d data x %d cfg x %d ulysses", layout.data_size, cfg_size, ulysses_size)
    return layout


def _own_group(rows, rank):
    """Create one process group per row of ranks (collectively, on every rank) and keep ours."""
    own = None
    for row in rows.tolist():
        group = dist.new_group(row)
        if rank in row:
            own = group
    return own
