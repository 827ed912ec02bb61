"""The Dashboard: listener state, associations, instances/s, disk, queue depths and unreachable destinations
(as ``dicomnode health`` decides them), failures in the last 24 h, and a server-rendered SVG chart of
instances received per minute over the last hour."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from dicomnode.console.node import ConsoleNode
from dicomnode.errors import DicomNodeError
from dicomnode.observability.health import destination_health

DAY = 86400.0
CHART_MINUTES = 60


@dataclass
class Dashboard:
    listener: str
    listener_ok: bool | None
    active_associations: int | None
    associations_accepted: float | None
    associations_rejected: float | None
    instances_per_second: float
    instances_last_hour: int
    instances_total: int
    studies_total: int
    disk_total: int | None
    disk_free: int | None
    disk_used_percent: float | None
    spool_bytes: int
    queue: dict[str, dict[str, int]]
    depth: dict[str, int]
    failures: list[dict[str, Any]] = field(default_factory=list)
    decisions_failed_24h: int = 0
    outbox_dead: int = 0
    chart: Markup = Markup("")
    unreachable: list[str] = field(default_factory=list)  # destinations as `dicomnode health` reports them


def _listener(node: ConsoleNode) -> tuple[str, bool | None, int | None]:
    listener = node.listener
    if listener is None:
        return "not known (the console is not running inside the node)", None, None
    try:
        port = listener.port
    except DicomNodeError:
        return "not listening", False, None
    cfg = node.config.node
    return f"listening on {cfg.host}:{port} as {cfg.ae_title}", True, int(listener.active_associations())


def received_per_minute(node: ConsoleNode, now: float, minutes: int = CHART_MINUTES) -> list[int]:
    """Instances stored per minute, oldest first, the last bucket ending at ``now``."""
    start = now - minutes * 60
    counts = [0] * minutes
    for bucket, n in node.index.received_per_minute(start, now).items():
        if 0 <= bucket < minutes:
            counts[bucket] += n
    return counts


def chart_svg(counts: list[int], width: int = 600, height: int = 120) -> Markup:
    """A bar chart of ``counts`` (one bar per minute) as inline SVG with a y-axis maximum label."""
    top = max(counts) if counts and max(counts) > 0 else 1
    pad_left, pad_bottom = 40, 18
    plot_w, plot_h = width - pad_left - 4, height - pad_bottom - 6
    bar = plot_w / max(len(counts), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="instances received per minute, last {len(counts)} minutes">',
        f'<line x1="{pad_left}" y1="{6 + plot_h}" x2="{width - 4}" y2="{6 + plot_h}" class="axis"/>',
        f'<text x="{pad_left - 4}" y="14" class="label" text-anchor="end">{top}</text>',
        f'<text x="{pad_left - 4}" y="{6 + plot_h}" class="label" text-anchor="end">0</text>',
        f'<text x="{pad_left}" y="{height - 3}" class="label">-{len(counts)} min</text>',
        f'<text x="{width - 4}" y="{height - 3}" class="label" text-anchor="end">now</text>',
    ]
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        h = plot_h * n / top
        x = pad_left + i * bar
        parts.append(f'<rect x="{x:.1f}" y="{6 + plot_h - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                     f'height="{h:.1f}" class="bar"><title>{n} instances</title></rect>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _metric(node: ConsoleNode, name: str) -> float | None:
    if node.metrics is None:
        return None
    return node.metrics.value(name)


def build_dashboard(node: ConsoleNode, now: float | None = None) -> Dashboard:
    now = time.time() if now is None else now
    listener, listener_ok, active = _listener(node)
    counts = received_per_minute(node, now)
    last_minute = node.index.received_since(now - 60)
    totals = node.index.totals()
    spool = node.config.storage.spool_dir
    disk_total = disk_free = None
    used_percent = None
    probe = spool if spool.exists() else node.config.storage.path
    if probe.exists():
        usage = shutil.disk_usage(probe)
        disk_total, disk_free = usage.total, usage.free
        used_percent = 100.0 * usage.used / usage.total if usage.total else None
    since = now - DAY
    failures = [e for e in node.audit.events(since=since) if e["stage"] == "failed"]
    decisions_failed = node.decisions.failed_since(since)
    queue = node.outbox.counts()
    threshold = node.config.health.destination_unreachable_minutes * 60
    unreachable = [h.describe(threshold) for h in destination_health(
        node.outbox.contacts(), node.config.destinations, threshold, now) if h.unreachable]
    return Dashboard(
        listener=listener, listener_ok=listener_ok, active_associations=active,
        associations_accepted=_metric(node, "dicomnode_associations_accepted_total"),
        associations_rejected=_rejected(node),
        instances_per_second=last_minute / 60.0, instances_last_hour=sum(counts),
        instances_total=int(totals[0]), studies_total=int(totals[1]),
        disk_total=disk_total, disk_free=disk_free, disk_used_percent=used_percent,
        spool_bytes=int(totals[2]), queue=queue, depth=node.outbox.depth_by_destination(),
        failures=failures[-20:][::-1], decisions_failed_24h=int(decisions_failed),
        outbox_dead=sum(states.get("dead", 0) for states in queue.values()),
        chart=chart_svg(counts), unreachable=unreachable,
    )


def _rejected(node: ConsoleNode) -> float | None:
    if node.metrics is None:
        return None
    total = 0.0
    for family in node.metrics.registry.collect():
        if family.name == "dicomnode_associations_rejected":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def human_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TB"
