"""Qwen-Image-Edit-2509 frame-by-frame video editor with test-time loss guidance (TTLG).

Not a Wan model: it runs diffusers' QwenImageEditPlusPipeline components in its own denoising
loop (pipeline.py), with edge / Gram / temporal losses (losses.py), the extract / edit /
assemble workflow behind qwen_video_edit.py (workflow.py, frames.py) and its run report
(reporting.py).
"""
from .losses import PerceptualMetric
from .pipeline import GuidanceSettings, LossTargets, QwenFrameEditor
from .workflow import EditJob, assemble, edit_frames, extract

__all__ = ["EditJob", "GuidanceSettings", "LossTargets", "PerceptualMetric", "QwenFrameEditor", "assemble",
           "edit_frames", "extract"]
