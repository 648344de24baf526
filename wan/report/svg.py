"""Line plots as inline SVG text: no plotting library, no fonts or scripts, every label escaped.

    svg = line_plot({"edge": [0.3, 0.2, 0.25], "gram": [0.1, 0.1, 0.05]}, "losses", "frame", "loss")

A series is a list of y values (x = 0, 1, 2, ...) or a pair (xs, ys). Non-finite values (NaN,
None, inf) leave a gap. On a log axis (`logy`), values <= 0 leave a gap too.
"""
import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MARGIN = dict(left=64, right=16, top=44, bottom=44)
TICK_COUNT = 5
MARKERS_UP_TO = 60  # draw a dot per point for short series (a one-point series would otherwise be invisible)


def line_plot(series, title="", xlabel="", ylabel="", width=640, height=300, logy=False):
    """An <svg> element drawing each series of `series` (name -> ys or (xs, ys)) as a line."""
    lines = {name: _points(values, logy) for name, values in series.items()}
    finite = [p for points in lines.values() for p in points if p is not None]
    x_ticks = nice_ticks(*_span([x for x, _ in finite]))
    y_ticks = decade_ticks(*_span([y for _, y in finite])) if logy else nice_ticks(*_span([y for _, y in finite]))
    plot = _Frame(width, height, x_ticks, y_ticks)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
             f"<title>{escape(title)}</title>",
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
             f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>']
    parts += plot.axes(x_ticks, y_ticks, logy)
    parts += _axis_labels(plot, xlabel, ylabel)
    for index, (name, points) in enumerate(lines.items()):
        parts += _series(plot, points, PALETTE[index % len(PALETTE)])
    parts += _legend(plot, list(lines))
    parts.append("</svg>")
    return "\n".join(parts)


def nice_ticks(low, high, count=TICK_COUNT):
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def decade_ticks(low, high):
    """Powers of ten (as exponents, the log axis' unit) covering [low, high] given as log10 values."""
    first, last = math.floor(low), math.ceil(high)
    if last == first:
        last += 1
    step = max(1, math.ceil((last - first) / 8))  # at most about 8 labels
    return list(range(first, last + step, step))


def _points(values, logy):
    is_pair = isinstance(values, tuple) and len(values) == 2 and all(hasattr(v, "__len__") for v in values)
    xs, ys = values if is_pair else (range(len(values)), values)
    points = []
    for x, y in zip(xs, ys):
        y = _number(y)
        if y is not None and logy:
            y = math.log10(y) if y > 0 else None
        x = _number(x)
        points.append(None if x is None or y is None else (x, y))
    return points


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _span(values):
    return (min(values), max(values)) if values else (0.0, 1.0)


class _Frame:
    """Maps data coordinates onto the plot area inside the margins."""

    def __init__(self, width, height, x_ticks, y_ticks):
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.right, self.bottom = width - MARGIN["right"], height - MARGIN["bottom"]
        self.x_range = (x_ticks[0], x_ticks[-1])
        self.y_range = (y_ticks[0], y_ticks[-1])

    def x(self, value):
        low, high = self.x_range
        return self.left + (value - low) / (high - low) * (self.right - self.left)

    def y(self, value):
        low, high = self.y_range
        return self.bottom - (value - low) / (high - low) * (self.bottom - self.top)

    def axes(self, x_ticks, y_ticks, logy):
        parts = [f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
                 f'height="{self.bottom - self.top}" fill="none" stroke="#888888"/>']
        for tick in x_ticks:
            x = self.x(tick)
            parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.bottom}" stroke="#eeeeee"/>')
            parts.append(f'<text x="{x:.1f}" y="{self.bottom + 16}" text-anchor="middle">{_label(tick)}</text>')
        for tick in y_ticks:
            y = self.y(tick)
            label = f"1e{tick}" if logy else _label(tick)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" stroke="#eeeeee"/>')
            parts.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        return parts


def _label(value):
    return escape(f"{value:.4g}")


def _axis_labels(plot, xlabel, ylabel):
    middle_x, middle_y = (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2
    return [f'<text x="{middle_x:.1f}" y="{plot.bottom + 36}" text-anchor="middle">{escape(xlabel)}</text>',
            f'<text x="14" y="{middle_y:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {middle_y:.1f})">{escape(ylabel)}</text>']


def _series(plot, points, colour):
    """One polyline per unbroken run of points, plus dots when the series is short."""
    parts, run = [], []
    for point in [*points, None]:
        if point is not None:
            run.append(f"{plot.x(point[0]):.2f},{plot.y(point[1]):.2f}")
        elif run:
            parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"/>')
            run = []
    if len(points) <= MARKERS_UP_TO:
        parts += [f'<circle cx="{plot.x(x):.2f}" cy="{plot.y(y):.2f}" r="2.5" fill="{colour}"/>'
                  for x, y in filter(None, points)]
    return parts


def _legend(plot, names):
    parts, x = [], plot.left
    for index, name in enumerate(names):
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<line x1="{x}" y1="32" x2="{x + 18}" y2="32" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{x + 22}" y="36">{escape(str(name))}</text>')
        x += 36 + 7 * len(str(name))  # about the width of 12 px sans-serif text
    return parts
