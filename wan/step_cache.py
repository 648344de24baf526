"""Opt-in, inexact speed option: reuse the DiT blocks' residual across sampling steps (TeaCache-style).

`enable_step_cache(model, threshold)` wraps the model's block-running seam (`WanModel.run_blocks`).
Each pass measures how much the first block's modulated input changed since the last computed pass
(relative L1). While the accumulated change stays under `threshold`, the blocks are skipped and the
last residual (blocks' output minus input) is added instead. A new trajectory (t going up, as in
every step of an inversion, or other shapes or text contexts) starts afresh. One entry per batch
signature, so serial conditional / unconditional passes keep separate residuals; the least recently
used entries go beyond MAX_ENTRIES, so a cache kept across many prompts holds a bounded memory.
"""
import torch

from .errors import WanInputError

# An edit with guidance needs three (source, target and negative prompt); one more for headroom.
MAX_ENTRIES = 4


class StepCache:
    """The wrapper installed as `model.run_blocks`; `computed` / `skipped` count block passes."""

    def __init__(self, model, threshold):
        self.model = model
        self.run_blocks = type(model).run_blocks.__get__(model)  # the unwrapped seam
        self.threshold = threshold
        self.entries = []
        self.computed = self.skipped = 0

    def __call__(self, hidden, e0, seq_lens, rope, context, t):
        first = self.model.blocks[0]
        probe = first.modulated_input(hidden, e0, torch.float32)
        entry, residual = self._lookup(probe, float(torch.as_tensor(t).max()), context)
        if residual is not None:
            return hidden + residual
        start = hidden.clone()
        hidden = self.run_blocks(hidden, e0, seq_lens, rope, context, t)
        entry["residual"] = hidden - start
        return hidden

    def _entry_for(self, probe, context):
        """The entry of this batch signature, moved to the end of the list (most recently used)."""
        for index, entry in enumerate(self.entries):
            if entry["probe"].shape == probe.shape and entry["context"].shape == context.shape \
                    and torch.equal(entry["context"], context):
                self.entries.append(self.entries.pop(index))
                return entry
        return None

    def _lookup(self, probe, t, context):
        """(entry, residual to reuse or None). The text embeddings are compared by value: equal prompts
        give equal embeddings, whatever tensors they arrive in."""
        entry = self._entry_for(probe, context)
        if entry is None or t > entry["t"]:
            if entry is not None:
                self.entries.pop()  # it is the last one: _entry_for moved it there
            entry = {"probe": probe, "t": t, "context": context, "residual": None, "change": 0.0}
            self.entries = self.entries[-(MAX_ENTRIES - 1):] + [entry]
        else:
            change = ((probe - entry["probe"]).abs().mean() / entry["probe"].abs().mean().clamp_min(1e-12)).item()
            entry["change"] += change
            entry["probe"], entry["t"] = probe, t
            if entry["residual"] is not None and entry["change"] < self.threshold:
                self.skipped += 1
                return entry, entry["residual"]
        entry["change"] = 0.0
        self.computed += 1
        return entry, None


def enable_step_cache(model, threshold):
    """Wrap `model`'s blocks with a StepCache (returned), or remove the wrapper with threshold 0/None."""
    model.__dict__.pop("run_blocks", None)
    if not threshold:
        return None
    if model.sequence_parallel is not None:
        raise WanInputError("step_cache decides per rank; it cannot run with sequence parallelism")
    cache = StepCache(model, threshold)
    model.run_blocks = cache
    return cache


def step_cache_of(model):
    """The StepCache installed on `model`, or None."""
    cache = model.__dict__.get("run_blocks")
    return cache if isinstance(cache, StepCache) else None
