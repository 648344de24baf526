"""Wan2.2 video diffusion toolkit: generation, continuation and editing with Wan2.2 checkpoints.

The task classes are imported lazily so `import wan.configs` stays cheap."""
_TASKS = {
    "WanT2V": ".text2video",
    "WanI2V": ".image2video",
    "WanTI2V": ".textimage2video",
    "WanV2V": ".video2video",
    "WanV2V5B": ".video2video",
}


def __getattr__(name):
    if name in _TASKS:
        import importlib

        return getattr(importlib.import_module(_TASKS[name], __name__), name)
    raise AttributeError(f"module 'wan' has no attribute {name!r}")
