"""Data parallelism over independent jobs (manifest lines, prompts): each model group of ranks
takes every N-th job. The share depends only on a job's position, not on what is finished, so a
rerun after an interruption gives every group the same share and each skips its finished jobs."""
import torch.distributed as dist

from .env import current_layout


def shard_jobs(jobs, rank, world):
    """Jobs rank `rank` of `world` runs: positions rank, rank + world, ... (disjoint, together all)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    return list(jobs)[rank::world]


def my_pending_jobs(jobs, is_done, layout=None):
    """This rank's share of `jobs` (by model group under `layout`, default the current one)
    without those `is_done(job)` says are finished. Within a model group (sequence or CFG
    parallel ranks running each job together) rank 0's view of what is done is used, so the
    group's ranks never disagree on which jobs to run."""
    layout = layout or current_layout()
    share = shard_jobs(jobs, layout.data_rank, layout.data_size)
    pending = [index for index, job in enumerate(share) if not is_done(job)]
    if layout.model_group is not None:
        box = [pending]
        dist.broadcast_object_list(box, group=layout.model_group, group_src=0)
        pending = box[0]
    return [share[index] for index in pending]
