"""Block-level weight streaming: a DiT whose transformer blocks wait in pinned host memory and reach
the GPU one block at a time, just ahead of use. For an A14B expert (28.6 GB in bf16) on a 24 GB card.

`stream_blocks(model, device)` puts everything but the blocks' large tensors on `device` and keeps
those (the linear layers' weights: 99.9% of a block) in pinned host memory. Each block gets its
weights from one of `slots` device-resident sets of tensors:

- before block i runs, the copy of block i+1 into the next slot is queued on a side stream, so it
  runs while block i computes (and the last block queues block 0 of the next forward);
- the compute stream waits for block i's copy (an event), then block i runs on its slot;
- a slot is refilled only once the block that used it has finished on the compute stream (an event).

So the device holds `slots` blocks' weights (2 x 0.71 GB for A14B) instead of all 40, and the host
to device copies (~15 ms per A14B block over PCIe) hide behind the blocks' compute (over 70 ms per
block at 480p). The kernels and their inputs are the resident model's: the output is the same bit
for bit. Works with compiled blocks, FP8 linears and the step cache (the small tensors it reads stay
resident). On the CPU (tests) the copies are synchronous.

Attach it after the model's other changes (fp8, compile) and do not move a streamed model with
`.to()`: its blocks' weights live where the streamer put them (`is_streamed`).
"""
import functools
import logging

import torch

log = logging.getLogger(__name__)

# Tensors below this size stay on the device: biases, norms, the modulation table (under 0.1% of
# a block). The step cache reads block 0's modulation outside the block's forward.
STREAMED_MIN_BYTES = 1 << 20


class _Entry:
    """One streamed tensor of a block: where it sits (module, kind, name) and its host copy."""

    def __init__(self, module, kind, name, host):
        self.module, self.kind, self.name, self.host = module, kind, name, host

    def point_to(self, tensor):
        if self.kind == "param":
            self.module._parameters[self.name].data = tensor
        else:
            self.module._buffers[self.name] = tensor


class BlockStreamer:
    """The hooks and buffers that stream `model.blocks` (see the module docstring).

    `events` (when record=True): the schedule as it happened, ("load", block, slot),
    ("run", block, slot) and ("done", block, slot) tuples in issue order, for tests."""

    def __init__(self, model, device, slots=2, min_bytes=STREAMED_MIN_BYTES, record=False):
        if slots < 2:
            raise ValueError(f"slots must be at least 2 (one computing, one loading), got {slots}")
        self.model, self.device, self.slots, self.min_bytes = model, torch.device(device), slots, min_bytes
        self.cuda = self.device.type == "cuda"
        self.events = [] if record else None
        blocks = list(model.blocks)
        for name, child in model.named_children():
            if child is not model.blocks:
                child.to(self.device)
        self.entries = [self._host_entries(block) for block in blocks]
        self._check_blocks_alike()
        self.slot_tensors = [[torch.empty_like(e.host, device=self.device) for e in self.entries[0]]
                             for _ in range(slots)]
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.slot_of = {}  # block index -> slot holding (or receiving) its weights
        self.occupant = [None] * slots  # slot -> block index
        self.ready = {}  # block index -> event: its copy has landed
        self.free = [None] * slots  # slot -> event: its last block has finished
        self.next_slot = 0
        self.hooks = []
        for index, block in enumerate(blocks):
            self.hooks.append(block.register_forward_pre_hook(functools.partial(self._before, index)))
            self.hooks.append(block.register_forward_hook(functools.partial(self._after, index)))
        model._block_streamer = self
        streamed = sum(e.host.numel() * e.host.element_size() for entries in self.entries for e in entries)
        log.info("streaming %d blocks (%.2f GB) from %s memory to %s through %d slots of %.2f GB",
                 len(blocks), streamed / 1e9, "pinned host" if self.cuda else "host", self.device, slots,
                 streamed / len(blocks) / 1e9)

    # -- setup ---------------------------------------------------------------------------------
    def _host_entries(self, block):
        """Move the block's small tensors to the device, its large ones to (pinned) host memory."""
        entries = []
        for module in block.modules():
            for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
                for name, tensor in table.items():
                    if tensor is None:
                        continue
                    if tensor.numel() * tensor.element_size() < self.min_bytes:
                        moved = tensor.data.to(self.device)
                        _Entry(module, kind, name, None).point_to(moved)
                        continue
                    host = tensor.data.to("cpu")
                    if self.cuda:
                        host = host.pin_memory()
                    entry = _Entry(module, kind, name, host)
                    entry.point_to(host)
                    entries.append(entry)
        return entries

    def _check_blocks_alike(self):
        shapes = [[(e.host.shape, e.host.dtype) for e in entries] for entries in self.entries]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("block streaming needs blocks with identical tensors (every WanModel has them)")

    # -- the schedule ----------------------------------------------------------------------------
    def _load(self, index, keep=None):
        """Queue block `index`'s weights into the next slot, round robin, after that slot's last block
        is done; never into the slot of block `keep` (the block about to run: when blocks are called
        out of order, round robin can come back to its slot before it has run)."""
        slot = self.next_slot
        if keep is not None and self.occupant[slot] == keep:
            slot = (slot + 1) % self.slots
        self.next_slot = (slot + 1) % self.slots
        previous = self.occupant[slot]
        if previous is not None:
            self.slot_of.pop(previous, None)
            self.ready.pop(previous, None)
        self.occupant[slot], self.slot_of[index] = index, slot
        self._record("load", index, slot)
        pairs = zip(self.slot_tensors[slot], self.entries[index])
        if not self.cuda:
            for dst, entry in pairs:
                dst.copy_(entry.host)
            return
        with torch.cuda.stream(self.copy_stream):
            if self.free[slot] is not None:
                self.copy_stream.wait_event(self.free[slot])
            for dst, entry in pairs:
                dst.copy_(entry.host, non_blocking=True)
            self.ready[index] = torch.cuda.Event()
            self.ready[index].record(self.copy_stream)

    def _before(self, index, block, args):
        if index not in self.slot_of:  # the first forward, or blocks called out of order
            self._load(index)
        slot = self.slot_of[index]
        landed = self.ready.pop(index, None)  # None: the compute stream already waited for this copy
        if landed is not None:
            torch.cuda.current_stream(self.device).wait_event(landed)
        for tensor, entry in zip(self.slot_tensors[slot], self.entries[index]):
            entry.point_to(tensor)
        following = (index + 1) % len(self.entries)
        if following not in self.slot_of:
            self._load(following, keep=index)
        self._record("run", index, slot)

    def _after(self, index, block, args, output):
        slot = self.slot_of[index]
        if self.cuda:
            self.free[slot] = torch.cuda.Event()
            self.free[slot].record(torch.cuda.current_stream(self.device))
        for entry in self.entries[index]:
            entry.point_to(entry.host)  # the queued kernels keep reading the slot; Python sees the host copy
        self._record("done", index, slot)

    def _record(self, what, index, slot):
        if self.events is not None:
            self.events.append((what, index, slot))

    # -- teardown --------------------------------------------------------------------------------
    def remove(self):
        """Stop streaming: hooks removed, the blocks' large tensors left in host memory (the small ones
        and the other layers stay on the device; `.to()` the model to put it in one place)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        for hook in self.hooks:
            hook.remove()
        for entries in self.entries:
            for entry in entries:
                entry.point_to(entry.host)
        self.slot_tensors = []
        self.model.__dict__.pop("_block_streamer", None)


def stream_blocks(model, device, slots=2, min_bytes=STREAMED_MIN_BYTES, record=False):
    """Stream `model`'s transformer blocks to `device` (see the module docstring); returns the
    BlockStreamer. The model may sit anywhere before (CPU after loading, or on the device). Block
    tensors under `min_bytes` stay on the device."""
    if is_streamed(model):
        raise ValueError("this model's blocks are already streamed")
    return BlockStreamer(model, device, slots, min_bytes, record)


def is_streamed(model):
    """Whether `model`'s blocks are streamed (placement code must then leave the model where it is)."""
    return getattr(model, "_block_streamer", None) is not None
