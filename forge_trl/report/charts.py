"""Inline SVG charts drawn in Python: line charts, histograms, heatmaps, scatter plots and the lineage graph.

Each function returns `Markup` (safe HTML): every text that came from a file goes through `escape`. Line charts
and scatter plots carry their points in `data-points` so that the page's script can show the values under the
pointer; without scripts they are still complete pictures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from markupsafe import Markup, escape

# Tableau 10: distinct on screen and in print.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
# Points per series drawn at most (evenly thinned beyond that; the first and last are kept).
MAX_POINTS = 600
# Line chart geometry (px): outer size and the plot area's margins.
WIDTH, HEIGHT = 340, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 26, 34


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(value: float) -> str:
    """A number for a label: 4 significant digits, scientific notation when very large or small."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _span(values: Sequence[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        delta = abs(lo) * 0.1 or 1.0
        return lo - delta, hi + delta
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def thin(xs: Sequence[float], ys: Sequence[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    if len(xs) <= limit:
        return list(xs), list(ys)
    picks = sorted({round(i * (len(xs) - 1) / (limit - 1)) for i in range(limit)})
    return [xs[i] for i in picks], [ys[i] for i in picks]


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str = PALETTE[0]


class _Frame:
    """Maps data coordinates into the plot area of a chart of `width` x `height`."""

    def __init__(self, x_span, y_span, width=WIDTH, height=HEIGHT, log_x=False):
        self.log_x = log_x
        self.x0, self.x1 = x_span
        self.y0, self.y1 = y_span
        self.left, self.top = LEFT, TOP
        self.w, self.h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(self, value: float) -> float:
        v = math.log10(value) if self.log_x else value
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.w

    def y(self, value: float) -> float:
        return self.top + (1 - (value - self.y0) / (self.y1 - self.y0)) * self.h

    def axes(self, x_label: str, y_label: str = "", x_ticks: Optional[list] = None) -> list[str]:
        """Grid lines, tick labels and axis titles."""
        parts = [
            f'<rect class="plot" x="{self.left}" y="{self.top}" width="{self.w}" height="{self.h}"/>',
        ]
        for tick in nice_ticks(self.y0, self.y1):
            y = self.y(tick)
            parts.append(f'<line class="grid" x1="{self.left}" x2="{self.left + self.w}" y1="{y:.1f}" y2="{y:.1f}"/>')
            parts.append(f'<text class="tick" x="{self.left - 4}" y="{y + 3:.1f}" text-anchor="end">{fmt(tick)}</text>')
        if x_ticks is None:
            lo, hi = self.x0, self.x1
            x_ticks = [(10**t if self.log_x else t, None) for t in nice_ticks(lo, hi, 4 if self.log_x else 5)]
            if self.log_x:
                x_ticks = [(10 ** round(math.log10(v)), None) for v, _ in x_ticks if float(math.log10(v)).is_integer()]
        for value, label in x_ticks:
            x = self.x(value)
            if not self.left - 0.5 <= x <= self.left + self.w + 0.5:
                continue
            text = escape(label) if label is not None else fmt(value)
            parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{self.top}" y2="{self.top + self.h}"/>')
            parts.append(
                f'<text class="tick" x="{x:.1f}" y="{self.top + self.h + 13}" text-anchor="middle">{text}</text>'
            )
        parts.append(
            f'<text class="axis" x="{self.left + self.w / 2:.1f}" y="{self.top + self.h + 28}" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
        if y_label:
            parts.append(
                f'<text class="axis" transform="translate(12 {self.top + self.h / 2:.1f}) rotate(-90)" '
                f'text-anchor="middle">{escape(y_label)}</text>'
            )
        return parts


def _svg(width: int, height: int, title: str, body: list[str], cls: str, data: Optional[dict] = None) -> str:
    attrs = f' data-points="{escape(json.dumps(data, separators=(",", ":")))}"' if data is not None else ""
    return (
        f'<svg class="{cls}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"{attrs}><title>{escape(title)}</title>'
        f'<text class="title" x="{LEFT}" y="16">{escape(title)}</text>' + "".join(body) + "</svg>"
    )


def _legend(series: Sequence[tuple[str, str]], *, always: bool = False) -> str:
    if len(series) < 2 and not always:
        return ""
    items = "".join(f'<span class="key"><i style="background:{c}"></i>{escape(name)}</span>' for name, c in series)
    return f'<div class="legend">{items}</div>'


def _figure(svg: str, legend: str = "", caption: str = "") -> Markup:
    text = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Markup(f'<figure class="chart">{svg}{legend}{text}</figure>')


def line_chart(title: str, series: Sequence[Series], *, x_label: str = "step", caption: str = "") -> Markup:
    """Values against steps; one line per series (markers when a series has few points)."""
    drawn = [Series(s.name, *thin(s.xs, s.ys), s.color) for s in series if s.xs]
    if not drawn:
        return Markup("")
    xs = [x for s in drawn for x in s.xs]
    ys = [y for s in drawn for y in s.ys]
    x_lo, x_hi = min(xs), max(xs)
    frame = _Frame((x_lo, x_hi) if x_hi > x_lo else (x_lo - 1, x_hi + 1), _span(ys))
    body = frame.axes(x_label)
    for s in drawn:
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in zip(s.xs, s.ys))
        body.append(f'<polyline class="line" points="{points}" stroke="{s.color}"/>')
        if len(s.xs) <= 30:
            body += [
                f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.5" fill="{s.color}"/>'
                for x, y in zip(s.xs, s.ys)
            ]
    data = {
        "frame": [frame.left, frame.top, frame.w, frame.h, frame.x0, frame.x1, frame.y0, frame.y1],
        "x": x_label,
        "series": [
            {"name": s.name, "color": s.color, "x": s.xs, "y": [float(f"{y:.6g}") for y in s.ys]} for s in drawn
        ],
    }
    svg = _svg(WIDTH, HEIGHT, title, body, "line-chart", data)
    return _figure(svg, _legend([(s.name, s.color) for s in drawn]), caption)


def histogram(title: str, groups: dict[str, list[float]], *, bins: int = 20, x_label: str = "score") -> Markup:
    """Overlaid histograms of each group's values on shared bins; the legend gives each group's mean."""
    groups = {k: [v for v in vs if math.isfinite(v)] for k, vs in groups.items()}
    groups = {k: vs for k, vs in groups.items() if vs}
    if not groups:
        return Markup("")
    values = [v for vs in groups.values() for v in vs]
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = {k: [0] * bins for k in groups}
    for name, vs in groups.items():
        for v in vs:
            counts[name][min(int((v - lo) / width), bins - 1)] += 1
    top = max(max(c) for c in counts.values())
    frame = _Frame((lo, hi), (0, top * 1.08))
    body = frame.axes(x_label, "count")
    for i, (name, cs) in enumerate(counts.items()):
        for b, count in enumerate(cs):
            if not count:
                continue
            x0, x1 = frame.x(lo + b * width), frame.x(lo + (b + 1) * width)
            y = frame.y(count)
            body.append(
                f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                f'height="{frame.top + frame.h - y:.1f}" fill="{color(i)}"><title>{escape(name)}: {count} in '
                f"[{fmt(lo + b * width)}, {fmt(lo + (b + 1) * width)})</title></rect>"
            )
    legend = [
        (f"{name}: n={len(vs)}, mean {fmt(sum(vs) / len(vs))}", color(i)) for i, (name, vs) in enumerate(groups.items())
    ]
    return _figure(_svg(WIDTH, HEIGHT, title, body, "histogram"), _legend(legend, always=True))


def heatmap(
    title: str,
    rows: Sequence[str],
    columns: Sequence[str],
    matrix: Sequence[Sequence[float]],
    *,
    vmax: float,
    x_label: str,
    y_label: str,
    cell_titles: bool = True,
) -> Markup:
    """`matrix[row][column]` as shades of one colour from 0 (white) to `vmax` (dark)."""
    if not rows or not columns:
        return Markup("")
    cell_w = max(2.0, min(28.0, 420 / len(columns)))
    cell_h = max(2.0, min(14.0, 180 / len(rows)))
    left, top = 56, 26
    width = int(max(left + cell_w * len(columns) + 12, LEFT + 6.6 * len(title)))
    height = int(top + cell_h * len(rows) + 36)
    body = []
    scale = vmax or 1.0
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            shade = max(0.0, min(1.0, value / scale))
            tip = (
                f"<title>{escape(y_label)} {escape(rows[r])}, {escape(x_label)} {escape(columns[c])}: "
                f"{value:.3f}</title>"
                if cell_titles
                else ""
            )
            body.append(
                f'<rect x="{left + c * cell_w:.1f}" y="{top + r * cell_h:.1f}" width="{cell_w + 0.05:.2f}" '
                f'height="{cell_h + 0.05:.2f}" fill="{_blue(shade)}">{tip}</rect>'
            )
    label_every = max(1, math.ceil(len(rows) * 11 / (cell_h * len(rows))))
    for r in range(0, len(rows), label_every):
        body.append(
            f'<text class="tick" x="{left - 4}" y="{top + (r + 0.5) * cell_h + 3:.1f}" '
            f'text-anchor="end">{escape(rows[r])}</text>'
        )
    col_every = max(1, math.ceil(len(columns) * 34 / (cell_w * len(columns))))
    for c in range(0, len(columns), col_every):
        body.append(
            f'<text class="tick" x="{left + (c + 0.5) * cell_w:.1f}" y="{top + len(rows) * cell_h + 12:.1f}" '
            f'text-anchor="middle">{escape(columns[c])}</text>'
        )
    body.append(
        f'<text class="axis" x="{left + cell_w * len(columns) / 2:.1f}" y="{height - 6}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    body.append(
        f'<text class="axis" transform="translate(12 {top + cell_h * len(rows) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return _figure(_svg(width, height, title, body, "heatmap"))


def _blue(shade: float) -> str:
    """White (0) to dark blue (1)."""
    r, g, b = (int(255 + (t - 255) * shade) for t in (8, 48, 107))
    return f"rgb({r},{g},{b})"


def color_scale(vmax: float, uniform: Optional[float] = None) -> Markup:
    """The heatmaps' legend: a gradient from 0 to `vmax`, with the uniform share marked."""
    stops = "".join(f'<stop offset="{t / 10:.1f}" stop-color="{_blue(t / 10)}"/>' for t in range(11))
    mark = ""
    if uniform is not None and vmax > 0 and uniform <= vmax:
        x = 10 + 200 * uniform / vmax
        mark = (
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="22" stroke="#e15759" stroke-width="2"/>'
            f'<text class="tick" x="{x:.1f}" y="34" text-anchor="middle">uniform {uniform:.3f}</text>'
        )
    return Markup(
        '<svg class="scale" width="400" height="38" viewBox="0 0 400 38" xmlns="http://www.w3.org/2000/svg">'
        '<defs><linearGradient id="share-scale">' + stops + "</linearGradient></defs>"
        '<rect x="10" y="6" width="200" height="14" fill="url(#share-scale)" stroke="#999"/>'
        f'<text class="tick" x="10" y="34">0</text><text class="tick" x="210" y="34" text-anchor="end">'
        f"{vmax:.3f}</text>"
        f'<text class="tick" x="220" y="17">expert share of tokens</text>{mark}</svg>'
    )


def scatter(
    title: str,
    points: Sequence[tuple[float, float, str]],
    *,
    x_label: str,
    y_label: str,
    categories: Optional[list[str]] = None,
    best_line: Optional[list[float]] = None,
    highlight: Optional[str] = None,
) -> Markup:
    """(x, y, label) points. `categories`: x is an index into them (a non-numeric parameter). Positive x spanning
    two decades or more is drawn on a log scale. `best_line`: the best value so far, drawn as a step line over x.
    `highlight`: the label of the point to ring (the best trial)."""
    points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not points:
        return Markup("")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    log_x = categories is None and min(xs) > 0 and max(xs) / min(xs) >= 100
    ticks = None
    if categories is not None:
        x_span = (-0.5, len(categories) - 0.5)
        ticks = [(float(i), c) for i, c in enumerate(categories)]
    elif log_x:
        x_span = _span([math.log10(x) for x in xs])
    else:
        x_span = _span(xs)
    frame = _Frame(x_span, _span(ys + (best_line or [])), log_x=log_x)
    body = frame.axes(x_label, y_label, ticks)
    if best_line:
        path = []
        for i, (x, value) in enumerate(zip(xs, best_line)):
            if i:
                path.append(f"L{frame.x(x):.1f},{frame.y(best_line[i - 1]):.1f}")
            path.append(f"{'M' if not i else 'L'}{frame.x(x):.1f},{frame.y(value):.1f}")
        body.append(f'<path class="best" d="{" ".join(path)}"/>')
    for x, y, label in points:
        ring = ' class="best-point"' if highlight is not None and label == highlight else ""
        body.append(
            f'<circle{ring} cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="4" fill="{PALETTE[0]}">'
            f"<title>{escape(label)}: {escape(y_label)} {fmt(y)}</title></circle>"
        )
    return _figure(_svg(WIDTH, HEIGHT, title, body, "scatter"))


# ----- the lineage graph --------------------------------------------------------------------------------------------
@dataclass
class Node:
    key: str
    label: str
    lines: list[str]  # under the label
    href: Optional[str] = None  # a link to the node's section
    external: bool = False  # a base model or a checkpoint outside the report's directory
    failed: bool = False


BOX_W, BOX_H, GAP_X, GAP_Y = 176, 66, 40, 16


def lineage_graph(nodes: Sequence[Node], parent: dict[str, str], reward: dict[str, str]) -> Markup:
    """Nodes left to right by generation (`parent`: child key -> parent key); a dashed arrow from a reward model
    to the RL stage trained against it (`reward`: child key -> reward model key)."""
    if not nodes:
        return Markup("")
    known = {n.key for n in nodes}
    children: dict[str, list[str]] = {}
    for node in nodes:
        if parent.get(node.key) in known:
            children.setdefault(parent[node.key], []).append(node.key)
    column: dict[str, int] = {}
    row: dict[str, int] = {}
    next_row = [0]

    def place(key: str, depth: int) -> None:
        column[key] = depth
        kids = children.get(key, [])
        if not kids:
            row[key] = next_row[0]
            next_row[0] += 1
            return
        for kid in kids:
            place(kid, depth + 1)
        row[key] = row[kids[0]]

    for node in nodes:
        if parent.get(node.key) not in known and node.key not in column:
            place(node.key, 0)
    width = (max(column.values()) + 1) * (BOX_W + GAP_X) + 8
    height = next_row[0] * (BOX_H + GAP_Y) + 8

    def anchor(key: str) -> tuple[float, float]:
        return 4 + column[key] * (BOX_W + GAP_X), 4 + row[key] * (BOX_H + GAP_Y)

    body = [
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>'
    ]
    for child, par in parent.items():
        if child in column and par in column:
            (x0, y0), (x1, y1) = anchor(par), anchor(child)
            body.append(
                f'<path class="edge" d="M{x0 + BOX_W:.0f},{y0 + BOX_H / 2:.0f} C{x0 + BOX_W + GAP_X / 2:.0f},'
                f'{y0 + BOX_H / 2:.0f} {x1 - GAP_X / 2:.0f},{y1 + BOX_H / 2:.0f} {x1 - 2:.0f},{y1 + BOX_H / 2:.0f}" '
                'marker-end="url(#arrow)"/>'
            )
    for child, rm in reward.items():
        if child in column and rm in column:
            (x0, y0), (x1, y1) = anchor(rm), anchor(child)
            body.append(
                f'<path class="edge reward" d="M{x0 + BOX_W / 2:.0f},{y0 + (BOX_H if y1 > y0 else 0):.0f} '
                f'L{x1 + BOX_W / 2:.0f},{y1 + (0 if y1 > y0 else BOX_H):.0f}" marker-end="url(#arrow)">'
                "<title>reward model of this RL stage</title></path>"
            )
    for node in nodes:
        x, y = anchor(node.key)
        cls = "node" + (" external" if node.external else "") + (" failed" if node.failed else "")
        text = [f'<text class="node-label" x="{x + 8}" y="{y + 18}">{escape(_clip(node.label, 24))}</text>']
        text += [
            f'<text class="node-line" x="{x + 8}" y="{y + 34 + 14 * i}">{escape(_clip(line, 30))}</text>'
            for i, line in enumerate(node.lines[:2])
        ]
        box = (
            f'<g class="{cls}"><title>{escape(node.label)}</title><rect x="{x}" y="{y}" width="{BOX_W}" '
            f'height="{BOX_H}" rx="6"/>{"".join(text)}</g>'
        )
        body.append(f'<a href="#{escape(node.href)}">{box}</a>' if node.href else box)
    return Markup(
        f'<svg class="lineage" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img"><title>lineage of the stages</title>{"".join(body)}</svg>'
    )


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
