"""Ulysses sequence parallelism for the DiT (DeepSpeed-Ulysses, arXiv:2309.14509).

Each of the P ranks of a group keeps 1/P of the tokens through the whole network: patch embedding,
modulation, cross-attention, feed-forward and the output head are per-token work and run on the
local shard, with the RoPE table and the per-token timestep index sliced to match. Only
self-attention needs every token: one all-to-all turns q, k, v from [tokens/P, all heads] into
[all tokens, heads/P], attention runs on whole sequences for a subset of heads, and a second
all-to-all turns the result back. The shards are gathered after the head.

The sequence is padded to a multiple of P; padded keys are masked like the model's own padding and
padded outputs are dropped, so the result equals the single-process one up to reduction order.
"""
import math

import torch
import torch.distributed as dist

from ..settings import SettingsError
from ..modules.attention import attention


class UlyssesParallel:
    """The sequence-parallel plan a WanModel follows when `model.set_sequence_parallel(plan)`."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def check_heads(self, num_heads):
        if num_heads % self.size:
            divisors = ", ".join(str(d) for d in range(1, num_heads + 1) if num_heads % d == 0)
            raise SettingsError("ulysses_size", f"{self.size} must divide the DiT's {num_heads} attention heads "
                                                f"(divisors: {divisors})")

    def padded_length(self, seq_len):
        return math.ceil(seq_len / self.size) * self.size

    def shard(self, x, dim=1):
        """This rank's contiguous slice of a padded sequence (a view, no copy)."""
        return x.chunk(self.size, dim=dim)[self.rank]

    def gather(self, x, dim=1):
        """The local shards of all ranks, concatenated back along `dim`."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def attention(self, q, k, v, k_lens=None):
        """Self-attention over the whole sequence from local shards q, k, v [B, L/P, H, D]; k_lens are
        true lengths in the full (padded) sequence. Returns the local shard [B, L/P, H, D]."""
        q, k, v = self._sequence_to_heads(torch.stack((q, k, v.to(q.dtype))))
        out = attention(q, k, v, k_lens=k_lens)
        return self._heads_to_sequence(out)

    def _sequence_to_heads(self, qkv):
        """[3, B, L/P, H, D] local tokens, all heads -> three [B, L, H/P, D] all tokens, local heads."""
        n, b, shard, heads, d = qkv.shape
        p = self.size
        send = qkv.view(n, b, shard, p, heads // p, d).permute(3, 0, 1, 2, 4, 5).contiguous()
        received = torch.empty_like(send)  # [P (source rank = sequence shard), 3, B, L/P, H/P, D]
        dist.all_to_all_single(received, send, group=self.group)
        full = received.permute(1, 2, 0, 3, 4, 5).reshape(n, b, p * shard, heads // p, d)
        return full.unbind(0)

    def _heads_to_sequence(self, out):
        """[B, L, H/P, D] all tokens, local heads -> [B, L/P, H, D] local tokens, all heads."""
        b, length, local_heads, d = out.shape
        p = self.size
        send = out.view(b, p, length // p, local_heads, d).transpose(0, 1).contiguous()
        received = torch.empty_like(send)  # [P (source rank = head group), B, L/P, H/P, D]
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 2, 0, 3, 4).reshape(b, length // p, p * local_heads, d)


def enable_sequence_parallel(model, group):
    """Make `model` (a WanModel) run sequence-parallel over `group`; checks the head count first."""
    plan = UlyssesParallel(group)
    plan.check_heads(model.num_heads)
    model.set_sequence_parallel(plan)
    return plan
