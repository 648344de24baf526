"""FSDP2 (`fully_shard`) for inference: each rank keeps 1/N of the weights, and every transformer
block's full weights exist on a GPU only while that block runs (all-gathered before its forward,
freed after). Blocks are sharded one at a time from the CPU, so the full model is never on one GPU.

All ranks of the sharding group must run the same forwards in the same order (they do: the same
job, the same steps, the same expert switch); their inputs may differ (sequence shards, CFG branches).
"""
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard


def _mesh(group, device):
    return DeviceMesh.from_group(group or dist.group.WORLD, device.type)


def _shard(model, blocks, device, group):
    """fully_shard each block, then the root (embeddings, head and anything left)."""
    mesh = _mesh(group, device)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def shard_dit(model, device, group=None):
    """Shard a WanModel's transformer blocks (one FSDP unit each) and its root over `group`
    (default: all ranks). Weights move from wherever they are to `device`, shard by shard."""
    return _shard(model, model.blocks, device, group)


def shard_t5(model, device, group=None, sync_module_states=False):
    """Shard the umt5 encoder's blocks and root; the signature fits T5EncoderModel's shard_fn
    (use functools.partial to bind device and group). sync_module_states is accepted for
    compatibility: every rank loads the same checkpoint, so there is nothing to broadcast."""
    del sync_module_states
    return _shard(model, model.encoder.block, device, group)


def is_sharded(model):
    """True for a module wrapped by fully_shard, whose weights must not be moved with .to()."""
    return isinstance(model, FSDPModule)
