"""Inline SVG charts drawn on the server: no JavaScript, nothing third-party."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    css_class: str
    values: Sequence[Decimal]


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (the axis maximum)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _money(value: float) -> str:
    if value >= 1000:
        return f"${value:,.0f}"
    if value >= 10 or value == 0:
        return f"${value:,.0f}" if value == int(value) else f"${value:,.1f}"
    return f"${value:.2f}"


def line_chart(
    days: Sequence[date],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 720,
    height: int = 260,
) -> SafeString:
    """A line chart of dollar ``series`` over ``days``, scaled to its container's width."""
    left, right, top, bottom = 56, 12, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((float(v) for s in series for v in s.values), default=0.0)
    y_max = _nice_ceiling(peak)
    count = max(len(days), 1)

    def x(index: int) -> float:
        return left + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h - plot_h * value / y_max

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(5):
        value = y_max * tick / 4
        ty = y(value)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">'
            f"{escape(_money(value))}</text>"
        )
    label_every = max(1, count // 6)
    for index, day in enumerate(days):
        last = index == count - 1
        if (index % label_every == 0 and count - 1 - index >= label_every / 2) or last:
            anchor = "end" if last and count > 1 else "middle"
            parts.append(
                f'<text class="axis" x="{x(index):.1f}" y="{height - bottom + 18}" '
                f'text-anchor="{anchor}">{day:%b %d}</text>'
            )
    for item in series:
        points = " ".join(f"{x(i):.1f},{y(float(v)):.1f}" for i, v in enumerate(item.values))
        parts.append(f'<polyline class="line {escape(item.css_class)}" points="{points}"/>')
        for index, amount in enumerate(item.values):
            parts.append(
                f'<circle class="dot {escape(item.css_class)}" cx="{x(index):.1f}" '
                f'cy="{y(float(amount)):.1f}" r="2.5"><title>{escape(item.label)} '
                f"{days[index]:%b %d}: ${float(amount):,.4f}</title></circle>"
            )
    legend_x = left
    for item in series:
        parts.append(
            f'<rect class="swatch {escape(item.css_class)}" x="{legend_x}" '
            f'y="{height - 14}" width="12" height="4"/>'
            f'<text class="legend" x="{legend_x + 18}" y="{height - 9}">'
            f"{escape(item.label)}</text>"
        )
        legend_x += 30 + 8 * len(item.label)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated text is escaped


def sparkline(values: Sequence[Decimal], *, width: int = 120, height: int = 24) -> SafeString:
    """A small line of daily cost; flat at the bottom when there was none."""
    peak = max((float(v) for v in values), default=0.0) or 1.0
    count = max(len(values), 1)
    step = (width - 2) / (count - 1) if count > 1 else 0
    points = " ".join(
        f"{1 + step * i:.1f},{height - 2 - (height - 4) * float(v) / peak:.1f}"
        for i, v in enumerate(values)
    )
    total = sum(values, Decimal(0))
    return mark_safe(  # numbers only
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="Daily cost, last {count} days"><title>Last {count} days: '
        f'${float(total):,.4f}</title><polyline points="{points}"/></svg>'
    )
