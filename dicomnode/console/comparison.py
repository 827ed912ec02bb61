"""A job's comparison with the prior study (``result.json`` → ``summary.comparison``) as the console shows
it: one row per finding with the prior and current values and the change, and a small SVG chart of each
finding's volume over time (no plotting library; the page stays self-contained)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from html import escape
from typing import Any

STATUS_TEXT = {"no_prior": "no prior study", "unavailable": "comparison unavailable", "compared": "compared"}


@dataclass(frozen=True)
class FindingRow:
    label: str
    status: str
    prior_ml: float | None
    current_ml: float | None
    change_percent: float | None
    prior_mean: float | None
    current_mean: float | None


@dataclass
class ComparisonView:
    status: str
    reason: str = ""
    prior_study_uid: str = ""
    prior_date: str = ""
    interval_days: int | None = None
    rows: list[FindingRow] = field(default_factory=list)
    chart: str = ""  # inline SVG


def _date(text: str) -> dt.date | None:
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, TypeError):
        return None


def comparison_view(summary: dict[str, Any], study_date: str = "") -> ComparisonView | None:
    """The view of ``summary['comparison']`` (None when the job asked for none)."""
    block = summary.get("comparison")
    if not isinstance(block, dict):
        return None
    view = ComparisonView(STATUS_TEXT.get(str(block.get("status")), str(block.get("status"))),
                          reason=str(block.get("reason", "")),
                          prior_study_uid=str(block.get("prior_study_uid", "")),
                          prior_date=str(block.get("prior_study_date", "")),
                          interval_days=block.get("interval_days"))
    for label, entry in (block.get("findings") or {}).items():
        volume = entry.get("volume_ml") or {}
        mean = next((v for k, v in entry.items() if k.startswith("mean_")), {}) or {}
        view.rows.append(FindingRow(label, str(entry.get("status", "")), volume.get("prior"),
                                    volume.get("current"), volume.get("change_percent"), mean.get("prior"),
                                    mean.get("current")))
    prior, current = _date(view.prior_date), _date(study_date)
    if current is None and prior is not None and isinstance(view.interval_days, int):
        current = prior + dt.timedelta(days=view.interval_days)
    if prior is not None and current is not None and view.rows:
        series = {r.label: [(prior, r.prior_ml), (current, r.current_ml)] for r in view.rows}
        for older in block.get("history") or []:  # priors.count > 1: older studies' values, charted too
            when = _date(str(older.get("study_date", ""))) if isinstance(older, dict) else None
            if when is None:
                continue
            for label, values in (older.get("findings") or {}).items():
                if label in series and isinstance(values, dict):
                    series[label].insert(0, (when, values.get("volume_ml")))
        view.chart = volume_chart(series)
    return view


def volume_chart(series: dict[str, list[tuple[dt.date, float | None]]], width: int = 360,
                 height: int = 160) -> str:
    """Each finding's volume at every time point (oldest first), on a shared time axis (log scale: organs
    and lesions differ by orders of magnitude)."""
    import math

    points = {label: sorted(((d, v) for d, v in values if isinstance(v, int | float) and v > 0),
                            key=lambda p: p[0]) for label, values in series.items()}
    values = [v for found in points.values() for _, v in found]
    dates = sorted({d for found in series.values() for d, _ in found})
    if not values or len(dates) < 2:
        return ""
    lo, hi = math.log10(min(values)) - 0.1, math.log10(max(values)) + 0.1
    left, right, top, bottom = 48, width - 110, 12, height - 28
    span = max((dates[-1] - dates[0]).days, 1)

    def x(d: dt.date) -> float:
        return left + (d - dates[0]).days / span * (right - left)

    def y(v: float) -> float:
        return bottom - (math.log10(v) - lo) / max(hi - lo, 1e-6) * (bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="display:block;width:{width}px;height:{height}px" '
             f'role="img" aria-label="volume over time">',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
             f'<text x="4" y="{top + 4}" font-size="9" fill="#666">volume</text>',
             f'<text x="4" y="{top + 14}" font-size="9" fill="#666">(ml, log)</text>',
             f'<text x="{left}" y="{height - 8}" font-size="10">{dates[0].isoformat()}</text>',
             f'<text x="{right}" y="{height - 8}" font-size="10" text-anchor="end">'
             f'{dates[-1].isoformat()}</text>']
    parts.extend(f'<line x1="{x(d):.1f}" y1="{bottom}" x2="{x(d):.1f}" y2="{bottom + 4}" stroke="#888">'
                 f'<title>{d.isoformat()}</title></line>' for d in dates)
    palette = ["#d9534f", "#f0ad4e", "#5bc0de", "#5cb85c", "#428bca", "#9b59b6"]
    for n, (label, found) in enumerate(points.items()):
        colour = palette[n % len(palette)]
        if len(found) > 1:
            line = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in found)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for d, v in found:
            parts.append(f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>'
                         f'{escape(label)}: {v:.1f} ml ({d.isoformat()})</title></circle>')
        if found:
            parts.append(f'<text x="{right + 6}" y="{y(found[-1][1]) + 3:.1f}" font-size="10" '
                         f'fill="{colour}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
