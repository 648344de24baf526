"""Wan2.2 video diffusion toolkit: generation, continuation and editing with Wan2.2 checkpoints.

The official pipeline classes (wan.compat) are imported lazily so `import wan.configs` stays cheap."""
_COMPAT = ("WanT2V", "WanI2V", "WanTI2V", "WanV2V", "WanV2V5B", "TI2VInversionEditor")


def __getattr__(name):
    if name in _COMPAT:
        from . import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'wan' has no attribute {name!r}")
