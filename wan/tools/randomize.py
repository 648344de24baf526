"""Deterministic, non-trivial random weights for tiny test checkpoints.

Default initialisations leave norms at 1 and biases at 0, which hides bugs (a swapped bias or a
norm weight applied twice still matches). Every floating tensor gets a random value instead.
"""
import torch


@torch.no_grad()
def randomize_(module, seed, std=0.5):
    """Fill every parameter and float buffer of `module` in place, deterministically from `seed`.

    Matrices get N(0, std^2 / fan_in) so activations keep a sane scale through deep stacks;
    vectors (norm weights, biases, modulation tables) get 1 + N(0, 0.1^2) for names that
    look like norm/scale weights and N(0, 0.1^2) otherwise."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
        if not tensor.is_floating_point():
            continue
        if tensor.dim() >= 2 and not _is_vector_like(name, tensor):
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=gen) * (std / fan_in ** 0.5)
        elif _is_norm_weight(name):
            value = 1.0 + 0.1 * torch.randn(tensor.shape, generator=gen)
        else:
            value = 0.1 * torch.randn(tensor.shape, generator=gen)
        tensor.data.copy_(value.to(tensor.dtype))
    return module


def _is_norm_weight(name):
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("gamma", "scale") or ("norm" in name and leaf == "weight")


def _is_vector_like(name, tensor):
    # RMS_norm gammas are stored as [C, 1, 1(, 1)]; modulation tables as [1, k, dim].
    return _is_norm_weight(name) or "modulation" in name or tensor.numel() == max(tensor.shape)
