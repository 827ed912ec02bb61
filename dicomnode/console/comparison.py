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
        view.chart = volume_chart(prior, current, view.rows)
    return view


def volume_chart(prior: dt.date, current: dt.date, rows: list[FindingRow], width: int = 360,
                 height: int = 160) -> str:
    """Each finding's volume at the two time points, on a shared time axis (log scale: organs and lesions
    differ by orders of magnitude)."""
    import math

    points = [(r.label, r.prior_ml, r.current_ml) for r in rows]
    values = [v for _, a, b in points for v in (a, b) if isinstance(v, int | float) and v > 0]
    if not values:
        return ""
    lo, hi = math.log10(min(values)) - 0.1, math.log10(max(values)) + 0.1
    left, right, top, bottom = 48, width - 110, 12, height - 28

    def y(v: float) -> float:
        return bottom - (math.log10(v) - lo) / max(hi - lo, 1e-6) * (bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="display:block;width:{width}px;height:{height}px" '
             f'role="img" aria-label="volume over time">',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
             f'<text x="4" y="{top + 4}" font-size="9" fill="#666">volume</text>',
             f'<text x="4" y="{top + 14}" font-size="9" fill="#666">(ml, log)</text>',
             f'<text x="{left}" y="{height - 8}" font-size="10">{prior.isoformat()}</text>',
             f'<text x="{right}" y="{height - 8}" font-size="10" text-anchor="end">'
             f'{current.isoformat()}</text>']
    palette = ["#d9534f", "#f0ad4e", "#5bc0de", "#5cb85c", "#428bca", "#9b59b6"]
    for n, (label, a, b) in enumerate(points):
        colour = palette[n % len(palette)]
        ends = [(x, v) for x, v in ((left, a), (right, b)) if isinstance(v, int | float) and v > 0]
        if len(ends) == 2:
            parts.append(f'<line x1="{ends[0][0]}" y1="{y(ends[0][1]):.1f}" x2="{ends[1][0]}" '
                         f'y2="{y(ends[1][1]):.1f}" stroke="{colour}" stroke-width="2"/>')
        for x, v in ends:
            parts.append(f'<circle cx="{x}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{escape(label)}: '
                         f'{v:.1f} ml</title></circle>')
        if ends:
            parts.append(f'<text x="{right + 6}" y="{y(ends[-1][1]) + 3:.1f}" font-size="10" fill="{colour}">'
                         f'{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
