"""Prometheus metrics of one running node, on a per-service :class:`CollectorRegistry`.

``build_service`` creates one :class:`Metrics` and hands it to each stage's constructor (or subscribes its
methods to a stage's observer list); the stages call these methods
(all thread-safe, all cheap):

============================================  ====================================================
call                                          metric(s)
============================================  ====================================================
``association_accepted()``                    ``dicomnode_associations_accepted_total``
``association_rejected(reason)``              ``dicomnode_associations_rejected_total{reason}``
                                              (reasons e.g. ``calling_aet``, ``called_aet``,
                                              ``disk_full``, ``busy``, ``tls``, ``no_context``)
``instance_received(nbytes)``                 ``dicomnode_instances_received_total``,
                                              ``dicomnode_received_bytes_total``
``store_failed(reason)``                      ``dicomnode_store_failures_total{reason}``
``series_completed()``                        ``dicomnode_series_completed_total``
``rule_matched(rule)``                        ``dicomnode_rule_matches_total{rule}``
``pipeline_finished(pipeline, seconds, ok)``  ``dicomnode_pipeline_runs_total{pipeline}``,
                                              ``dicomnode_pipeline_failures_total{pipeline}``,
                                              ``dicomnode_pipeline_duration_seconds{pipeline}``
``step_finished(pipeline, step, seconds)``    ``dicomnode_pipeline_step_duration_seconds``
``instance_sent(destination)``                ``dicomnode_instances_sent_total{destination}``
``send_failed(destination)``                  ``dicomnode_send_failures_total{destination}``
``disk_full(active)``                         ``dicomnode_disk_full`` (1 while refusing)
``study_removed(nbytes)``                     ``dicomnode_retention_removed_studies_total``,
                                              ``dicomnode_retention_removed_bytes_total``
``console_login_failed()``                    ``dicomnode_console_login_failures_total``
``console_login_locked(kind)``                ``dicomnode_console_login_lockouts_total{kind}``
                                              (``user`` or ``address``: a lockout started)
``console_login_refused()``                   ``dicomnode_console_login_refused_total`` (an attempt
                                              refused during a lockout)
============================================  ====================================================

Computed at scrape time (a custom collector, never stale): ``dicomnode_outbox_depth{destination}``
(pending sends per destination, read from the database by an ``outbox_depth`` callable, by default
:func:`outbox_depth_from_database`), ``dicomnode_spool_filesystem_{free,used,size}_bytes`` and
``dicomnode_spool_filesystem_used_ratio`` for the spool's filesystem, and
``dicomnode_spool_bytes`` (the sum of stored instance sizes when the spool index records them), and per
configured destination ``dicomnode_destination_unreachable{destination}`` (1 when its sends have failed
unanswered for longer than ``health.destination_unreachable_minutes``, else 0),
``dicomnode_destination_failing_seconds{destination}`` and
``dicomnode_destination_seconds_since_success{destination}`` (absent when unknown), from a
``destination_health`` callable (by default :func:`destination_health_from_database`); with the receive
journal on, ``dicomnode_journal_pending_records`` and ``dicomnode_journal_lag_seconds`` (instances
acknowledged whose spool file the journal's syncer has not fsynced yet, and the oldest one's age; the node's
own process, not its receiver processes).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomnode.config import Config, OutboxConfig
from dicomnode.database import Database
from dicomnode.observability.health import DestinationHealth, destination_health
from dicomnode.send.outbox import Outbox

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Pipelines take seconds to tens of minutes; steps milliseconds to minutes.
PIPELINE_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

OutboxDepth = Callable[[], Mapping[str, int]]
DestinationsHealth = Callable[[], list[DestinationHealth]]


def outbox_depth_from_database(db: Database) -> OutboxDepth:
    """Pending sends per destination (``queued``, ``sending`` or ``failed`` with a retry scheduled; not
    ``sent`` or ``dead``), asked of the sending stage's :class:`~dicomnode.send.outbox.Outbox`. A database
    error reports nothing rather than failing the scrape."""
    outbox = Outbox(db, OutboxConfig())

    def depth() -> Mapping[str, int]:
        try:
            return outbox.depth_by_destination()
        except sqlite3.Error as exc:
            log.warning("Cannot read the outbox depth for metrics: %s", exc)
            return {}

    return depth


def destination_health_from_database(db: Database, config: Config) -> DestinationsHealth:
    """The health of ``config``'s destinations from the outbox (see
    :func:`~dicomnode.observability.health.destination_health`). A database error reports nothing rather
    than failing the scrape."""
    outbox = Outbox(db, config.outbox)
    threshold = config.health.destination_unreachable_minutes * 60

    def health() -> list[DestinationHealth]:
        try:
            return destination_health(outbox.contacts(), config.destinations, threshold)
        except sqlite3.Error as exc:
            log.warning("Cannot read the destinations' health for metrics: %s", exc)
            return []

    return health


class _ScrapeTimeCollector(Collector):
    """Gauges computed when Prometheus scrapes: outbox depth, destination health, spool disk usage."""

    def __init__(self, spool_dir: Path | None, outbox_depth: OutboxDepth | None,
                 spool_bytes: Callable[[], int] | None, destinations: DestinationsHealth | None,
                 journal_backlog: Callable[[], tuple[int, float]] | None = None) -> None:
        self.spool_dir = spool_dir
        self.outbox_depth = outbox_depth
        self.spool_bytes = spool_bytes
        self.destinations = destinations
        self.journal_backlog = journal_backlog

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "dicomnode_outbox_depth", "Sends waiting in the outbox, per destination.", labels=["destination"]
        )
        if self.outbox_depth is not None:
            for destination, count in sorted(self.outbox_depth().items()):
                depth.add_metric([destination], count)
        yield depth
        if self.destinations is not None:
            yield from self._destination_gauges(self.destinations())
        if self.spool_dir is not None:
            try:
                usage = shutil.disk_usage(self._existing(self.spool_dir))
            except OSError as exc:
                log.warning("Cannot read disk usage of '%s' for metrics: %s", self.spool_dir, exc)
            else:
                yield GaugeMetricFamily("dicomnode_spool_filesystem_size_bytes",
                                        "Size of the spool's filesystem.", value=usage.total)
                yield GaugeMetricFamily("dicomnode_spool_filesystem_free_bytes",
                                        "Free space on the spool's filesystem.", value=usage.free)
                yield GaugeMetricFamily("dicomnode_spool_filesystem_used_bytes",
                                        "Used space on the spool's filesystem.", value=usage.used)
                ratio = usage.used / usage.total if usage.total else 0.0
                yield GaugeMetricFamily("dicomnode_spool_filesystem_used_ratio",
                                        "Fill level (0..1) of the spool's filesystem.", value=ratio)
        if self.spool_bytes is not None:
            yield GaugeMetricFamily("dicomnode_spool_bytes", "Bytes of DICOM instances held in the spool.",
                                    value=self.spool_bytes())
        if self.journal_backlog is not None:
            pending, lag = self.journal_backlog()
            yield GaugeMetricFamily("dicomnode_journal_pending_records",
                                    "Instances acknowledged from the receive journal whose spool file is not "
                                    "fsynced yet (every receiving process).", value=pending)
            yield GaugeMetricFamily("dicomnode_journal_lag_seconds",
                                    "Age of the oldest such instance (0 when there is none).", value=lag)

    @staticmethod
    def _destination_gauges(health: list[DestinationHealth]) -> Iterator[GaugeMetricFamily]:
        unreachable = GaugeMetricFamily(
            "dicomnode_destination_unreachable",
            "1 when sends to the destination have failed unanswered for longer than "
            "health.destination_unreachable_minutes without a delivery since, else 0.",
            labels=["destination"])
        failing = GaugeMetricFamily(
            "dicomnode_destination_failing_seconds",
            "Seconds the destination's sends have been failing unanswered (0 when the last one succeeded).",
            labels=["destination"])
        since = GaugeMetricFamily(
            "dicomnode_destination_seconds_since_success",
            "Seconds since the last delivery to the destination.", labels=["destination"])
        for item in health:
            unreachable.add_metric([item.destination], 1 if item.unreachable else 0)
            failing.add_metric([item.destination], item.failing_seconds or 0.0)
            if item.seconds_since_success is not None:
                since.add_metric([item.destination], item.seconds_since_success)
        yield unreachable
        yield failing
        yield since

    @staticmethod
    def _existing(path: Path) -> Path:
        while not path.exists() and path != path.parent:
            path = path.parent
        return path


class Metrics:
    """The node's metrics. One instance per service; nothing is registered globally."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        spool_dir: Path | None = None,
        outbox_depth: OutboxDepth | None = None,
        spool_bytes: Callable[[], int] | None = None,
        destination_health: DestinationsHealth | None = None,
        journal_backlog: Callable[[], tuple[int, float]] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._assoc_accepted = Counter(
            "dicomnode_associations_accepted", "Associations accepted by the listener.", registry=r)
        self._assoc_rejected = Counter(
            "dicomnode_associations_rejected", "Associations refused by the listener, by reason.",
            ["reason"], registry=r)
        self._instances = Counter(
            "dicomnode_instances_received", "Instances stored durably (answered Success).", registry=r)
        self._bytes = Counter("dicomnode_received_bytes", "Bytes of instances stored durably.", registry=r)
        self._store_failures = Counter(
            "dicomnode_store_failures", "C-STORE requests answered with a failure status, by reason.",
            ["reason"], registry=r)
        self._series = Counter("dicomnode_series_completed", "Series found complete.", registry=r)
        self._rules = Counter(
            "dicomnode_rule_matches", "Routing rule matches, by rule name.", ["rule"], registry=r)
        self._pipeline_runs = Counter(
            "dicomnode_pipeline_runs", "Pipeline runs finished (ok or failed).", ["pipeline"], registry=r)
        self._pipeline_failures = Counter(
            "dicomnode_pipeline_failures", "Pipeline runs that failed, crashed or timed out.",
            ["pipeline"], registry=r)
        self._pipeline_seconds = Histogram(
            "dicomnode_pipeline_duration_seconds", "Wall time of pipeline runs.", ["pipeline"],
            buckets=PIPELINE_BUCKETS, registry=r)
        self._step_seconds = Histogram(
            "dicomnode_pipeline_step_duration_seconds", "Wall time of pipeline steps.", ["pipeline", "step"],
            buckets=STEP_BUCKETS, registry=r)
        self._sent = Counter(
            "dicomnode_instances_sent", "Instances delivered, per destination.", ["destination"], registry=r)
        self._send_failures = Counter(
            "dicomnode_send_failures", "Send attempts that failed, per destination.", ["destination"],
            registry=r)
        self._retention_studies = Counter(
            "dicomnode_retention_removed_studies", "Studies removed by retention.", registry=r)
        self._retention_bytes = Counter(
            "dicomnode_retention_removed_bytes", "Bytes of spool files removed by retention.", registry=r)
        self._disk_full = Gauge(
            "dicomnode_disk_full", "1 while new associations are refused because the spool is full.",
            registry=r)
        self._login_failures = Counter(
            "dicomnode_console_login_failures", "Console logins refused for a wrong user name or password.",
            registry=r)
        self._login_lockouts = Counter(
            "dicomnode_console_login_lockouts", "Console login lockouts started, per kind (user, address).",
            ["kind"], registry=r)
        self._login_refused = Counter(
            "dicomnode_console_login_refused", "Console login attempts refused during a lockout.", registry=r)
        self._collector = _ScrapeTimeCollector(spool_dir, outbox_depth, spool_bytes, destination_health,
                                               journal_backlog)
        r.register(self._collector)

    # --- receive --------------------------------------------------------------------------------------
    def association_accepted(self) -> None:
        self._assoc_accepted.inc()

    def association_rejected(self, reason: str) -> None:
        self._assoc_rejected.labels(reason=reason).inc()

    def instance_received(self, nbytes: int) -> None:
        self._instances.inc()
        self._bytes.inc(max(0, int(nbytes)))

    def store_failed(self, reason: str) -> None:
        self._store_failures.labels(reason=reason).inc()

    def disk_full(self, active: bool) -> None:
        self._disk_full.set(1 if active else 0)

    # --- assemble / route -----------------------------------------------------------------------------
    def series_completed(self) -> None:
        self._series.inc()

    def rule_matched(self, rule: str) -> None:
        self._rules.labels(rule=rule).inc()

    # --- pipelines --------------------------------------------------------------------------------------
    def pipeline_finished(self, pipeline: str, seconds: float, ok: bool) -> None:
        self._pipeline_runs.labels(pipeline=pipeline).inc()
        if not ok:
            self._pipeline_failures.labels(pipeline=pipeline).inc()
        self._pipeline_seconds.labels(pipeline=pipeline).observe(max(0.0, seconds))

    def step_finished(self, pipeline: str, step: str, seconds: float) -> None:
        self._step_seconds.labels(pipeline=pipeline, step=step).observe(max(0.0, seconds))

    def step_timings(self, pipeline: str, timings: Mapping[str, float]) -> None:
        """Record a whole ``{step: seconds}`` mapping (e.g. from ``JobResult.summary``)."""
        for step, seconds in timings.items():
            self.step_finished(pipeline, step, float(seconds))

    # --- send ---------------------------------------------------------------------------------------------
    def instance_sent(self, destination: str, count: int = 1) -> None:
        self._sent.labels(destination=destination).inc(count)

    def send_failed(self, destination: str) -> None:
        self._send_failures.labels(destination=destination).inc()

    # --- retention ----------------------------------------------------------------------------------------
    def study_removed(self, nbytes: int) -> None:
        self._retention_studies.inc()
        self._retention_bytes.inc(max(0, int(nbytes)))

    # --- console ------------------------------------------------------------------------------------------
    def console_login_failed(self) -> None:
        self._login_failures.inc()

    def console_login_locked(self, kind: str) -> None:
        self._login_lockouts.labels(kind=kind).inc()

    def console_login_refused(self) -> None:
        self._login_refused.inc()

    # --- exposition ---------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """A sample's current value (``None`` when absent); for tests and ``dicomnode status``."""
        return self.registry.get_sample_value(name, dict(labels or {}))
