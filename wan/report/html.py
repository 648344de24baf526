"""The Report builder: one self-contained HTML page per run.

    report = Report("qwen_video_edit video")
    report.section("Result")
    report.video("out/edited.mp4", "edited")           # small files inline, large ones linked
    report.image("out/init_frame.png", "init frame")
    report.plot({"edge": edge_losses}, "TTLG losses", "frame", "loss")
    report.section("Run")
    report.settings({"prompt": ..., "model": {...}})   # nested dicts show as dotted keys
    report.timings(timer)                               # a StageTimer
    report.environment()
    report.write("out/report.html")                     # atomic

The page has no JavaScript and loads nothing from a network: CSS is inline, images are data:
PNGs, plots are inline SVG, and a video is either a data: URI (files up to `embed_limit` bytes)
or a path relative to the report (the mp4 must then stay beside it). A Content-Security-Policy
in the page forbids everything else, so a mistake shows as a blocked request, not a leak. All
text is HTML-escaped. Videos should be H.264 mp4 (what wan.utils.video_io.write_video writes),
which every browser plays.
"""
import base64
import dataclasses
import datetime
import io
import json
import math
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image

from ..errors import WanInputError
from ..utils.fileio import atomic_path
from ..utils.video_io import load_image, probe_video
from .environment import environment_info
from .stages import StageTimer
from .svg import line_plot

EMBED_LIMIT = 4 * 2**20  # videos up to this many bytes go inline
IMAGE_MAX_SIDE = 768  # larger images are shrunk (a report is for looking, not for pixel data)
MIN_DISPLAY_WIDTH = 256  # tiny frames (test models) are shown enlarged by a whole factor, pixels kept sharp
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/mp4"}
# 'self' and file: cover a relative video whether the page is opened from disk or served over HTTP.
CONTENT_POLICY = ("default-src 'none'; img-src data:; media-src data: file: 'self'; style-src 'unsafe-inline'; "
                  "base-uri 'none'; form-action 'none'")
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; color: #222; background: #fff; }
h1 { margin-bottom: 0.2em; } .written { color: #666; margin-top: 0; }
nav a { margin-right: 1em; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
figure { display: inline-block; vertical-align: top; margin: 0.5em 1em 0.5em 0; }
figcaption { color: #444; font-size: 0.9em; max-width: 640px; }
video, img { max-width: 100%; height: auto; background: #000; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
td code { white-space: pre-wrap; word-break: break-all; }
pre.prompt { white-space: pre-wrap; background: #f7f7f7; padding: 0.6em; border-left: 3px solid #aaa; }
svg.plot { display: inline-block; margin: 0.5em 1em 0.5em 0; }
"""


class Report:
    """Collects sections of a run report; `write` renders one HTML file."""

    def __init__(self, title, embed_limit=EMBED_LIMIT):
        self.title = title
        self.embed_limit = embed_limit
        self._sections = []  # [title or None, [items]]; an item is HTML text or a _Video

    def section(self, title):
        """Start a new section; what is added next goes into it."""
        self._sections.append([title, []])
        return self

    def text(self, text, title=None):
        """Paragraphs (split at blank lines)."""
        paragraphs = [p.strip() for p in str(text).split("\n\n") if p.strip()]
        return self._add(_heading(title) + "".join(f"<p>{escape(p)}</p>" for p in paragraphs))

    def prompts(self, prompts, title="Prompts"):
        """name -> prompt text (e.g. prompt, extended prompt, negative prompt), shown verbatim."""
        blocks = "".join(f"<h4>{escape(str(name))}</h4><pre class=\"prompt\">{escape(str(text))}</pre>"
                         for name, text in prompts.items() if text is not None)
        return self._add(_heading(title) + blocks)

    def video(self, path, caption=None, embed=None):
        """A video file (H.264 mp4 plays everywhere). embed: True inlines it as a data: URI, False links it
        by a path relative to the report, None inlines files up to `embed_limit` bytes."""
        path = Path(path)
        frames, fps, width, height = probe_video(path)  # also: a missing or unreadable file fails here
        details = f"{width}x{height}, {frames} frames at {fps:g} fps ({frames / fps:.2f} s)"
        if embed is None:
            embed = path.stat().st_size <= self.embed_limit
        source = None
        if embed:
            source = f"data:{_video_type(path)};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
        return self._add(_Video(path.resolve(), source, caption or path.name, details, width, height))

    def image(self, image, caption=None, max_side=IMAGE_MAX_SIDE):
        """An image (PIL image, file path, or uint8 array [H, W, 3] / [H, W]) inlined as a PNG."""
        image = _as_pil(image)
        details = f"{image.width}x{image.height}"
        if max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        return self._add(f'<figure><img src="data:image/png;base64,{data}" {_display_size(image.width, image.height)} '
                         f'alt="{escape(caption or "image")}">'
                         f"<figcaption>{escape(f'{caption} ({details})' if caption else details)}</figcaption></figure>")

    def table(self, rows, title=None, columns=None):
        """rows: a list of dicts (columns: the union of their keys, in first-seen order, unless given)."""
        rows = list(rows)
        if columns is None:
            columns = list(dict.fromkeys(key for row in rows for key in row))
        head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
        return self._add(f"{_heading(title)}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def settings(self, settings, title="Settings"):
        """A key/value table; nested dicts (and dataclasses) become dotted keys, lists and tuples show as
        JSON."""
        rows = [{"setting": key, "value": "None" if value is None else value} for key, value in _flatten(settings)]
        return self.table(rows, title, ["setting", "value"])

    def timings(self, timings, title="Timings"):
        """A StageTimer (seconds and peak memory per stage), or a dict stage -> seconds."""
        if isinstance(timings, StageTimer):
            rows = timings.rows()
            rows.append({"stage": "total (since the timer started)", "seconds": round(timings.total_seconds, 3)})
        else:
            rows = [{"stage": name, "seconds": seconds} for name, seconds in timings.items()]
        return self.table(rows, title)

    def plot(self, series, title, xlabel="", ylabel="", logy=False, width=640, height=300):
        """A line plot (inline SVG, `width` x `height` px) of series: name -> ys or (xs, ys); consecutive
        plots sit side by side where the page is wide enough."""
        return self._add(line_plot(series, title, xlabel, ylabel, width, height, logy))

    def environment(self, title="Environment"):
        """Python, library versions, code revision and GPUs of this process."""
        return self.settings(environment_info(), title)

    def write(self, path):
        """Render to `path` atomically (relative video paths are taken from its folder); returns the path."""
        path = Path(path)
        base = path.resolve().parent
        sections = "".join(self._render_section(index, title, items, base)
                           for index, (title, items) in enumerate(self._sections))
        nav = "".join(f'<a href="#section-{index}">{escape(title)}</a>'
                      for index, (title, _) in enumerate(self._sections) if title)
        written = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{escape(self.title)}</title><style>{STYLE}</style></head>\n<body>"
                f"<header><h1>{escape(self.title)}</h1><p class=\"written\">written {escape(written)}</p>"
                f"<nav>{nav}</nav></header>\n{sections}</body></html>\n")
        with atomic_path(path) as temp:
            temp.write_text(page, encoding="utf-8")
        return str(path)

    def _add(self, item):
        if not self._sections:
            self._sections.append([None, []])
        self._sections[-1][1].append(item)
        return self

    @staticmethod
    def _render_section(index, title, items, base):
        body = "\n".join(item if isinstance(item, str) else item.render(base) for item in items)
        heading = f"<h2>{escape(title)}</h2>" if title else ""
        return f'<section id="section-{index}">{heading}\n{body}</section>\n'


class _Video:
    """A video item; a linked one gets its relative path when the report's folder is known."""

    def __init__(self, path, source, caption, details, width, height):
        self.path, self.source, self.caption, self.details = path, source, caption, details
        self.width, self.height = width, height

    def render(self, base):
        link = quote(Path(os.path.relpath(self.path, base)).as_posix())
        source = self.source or link
        return (f'<figure><video src="{escape(source)}" {_display_size(self.width, self.height)} controls '
                f'loop muted playsinline preload="auto"></video><figcaption>{escape(self.caption)}: '
                f"{escape(self.details)} <a href=\"{escape(link)}\">file</a></figcaption></figure>")


def check_report_path(path):
    """For command-line checks before a long run: the report's folder must exist and the name end in .html."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise WanInputError(f"report path must end in .html: {path}")
    if not path.resolve().parent.is_dir():
        raise WanInputError(f"report folder does not exist: {path.resolve().parent}")
    return path


def _display_size(width, height):
    """width/height attributes, enlarged by a whole factor (and drawn pixelated) when the frame is tiny."""
    factor = min(8, math.ceil(MIN_DISPLAY_WIDTH / width))
    if factor <= 1:
        return f'width="{width}" height="{height}"'
    return f'width="{width * factor}" height="{height * factor}" style="image-rendering: pixelated"'


def _video_type(path):
    return VIDEO_TYPES.get(path.suffix.lower(), "video/mp4")


def _heading(title):
    return f"<h3>{escape(str(title))}</h3>" if title else ""


def _as_pil(image):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"image: expected a PIL image, a path, or uint8 [H, W, 3] / [H, W]; got {array.dtype} "
                         f"{list(array.shape)}")
    return Image.fromarray(array)


def _flatten(settings, prefix=""):
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict) and value:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _cell(value):
    if value is None:
        return "<td></td>"
    if isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
        return f'<td class="number">{escape(text)}</td>'
    if isinstance(value, (list, tuple, dict)):
        return f"<td><code>{escape(json.dumps(value, default=str))}</code></td>"
    text = str(value)
    return f'<td class="number">{escape(text)}</td>' if _looks_numeric(text) else f"<td>{escape(text)}</td>"


def _looks_numeric(text):
    try:
        float(text)
    except ValueError:
        return False
    return True
