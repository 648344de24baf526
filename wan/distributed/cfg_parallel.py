"""CFG parallelism: the conditional and unconditional passes of classifier-free guidance run at
the same time on the two halves of the ranks, then each rank receives the other's velocity.

Rank 0 of a CFG pair runs the prompt, rank 1 the negative prompt; both end with the same
(cond, uncond) pair and apply guidance identically, so their latents stay equal."""
import torch
import torch.distributed as dist


class CfgParallel:
    def __init__(self, group):
        self.group = group
        if dist.get_world_size(group) != 2:
            raise ValueError(f"a CFG-parallel group has 2 ranks, got {dist.get_world_size(group)}")
        self.runs_cond = dist.get_rank(group) == 0

    def exchange(self, velocity):
        """This rank's branch in, (cond, uncond) out, on every rank of the pair."""
        both = [torch.empty_like(velocity) for _ in range(2)]
        dist.all_gather(both, velocity.contiguous(), group=self.group)
        return both[0], both[1]
