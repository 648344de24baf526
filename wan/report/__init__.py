"""Self-contained HTML run reports: videos, images, tables, settings, timings, SVG plots, environment.

See html.py for the builder (`Report`), stages.py for `StageTimer` and docs/REPORTS.md for how the
scripts use them.
"""
from .environment import environment_info
from .html import Report, check_report_path
from .stages import StageTimer, format_bytes
from .svg import line_plot

__all__ = ["Report", "StageTimer", "check_report_path", "environment_info", "format_bytes", "line_plot"]
