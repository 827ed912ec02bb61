"""The router's joints to the other stages: the outbox ``forward`` and ``generated_by`` (which series the node
generated itself), and the observed ready handler.

Both are built by :func:`dicomnode.runtime.wiring.build_service`; what they report to is typed by the small
protocols below (``dicomnode.observability``'s ``Metrics`` and ``AuditTrail`` fit).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from dicomnode.config import OutboxConfig
from dicomnode.database import Database
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.route.ownership import GeneratedBy
from dicomnode.route.router import Forward, Router
from dicomnode.send.forward import forward as queue_forward
from dicomnode.send.outbox import Outbox

log = logging.getLogger(__name__)


class RouteMetrics(Protocol):
    def rule_matched(self, rule: str) -> None: ...


class RouteAudit(Protocol):
    def record(self, stage: str, study_uid: str, *, series_uid: str | None = None, job_id: str | None = None,
               detail: Mapping[str, Any] | None = None) -> None: ...


def outbox_forward(database: Database, config: OutboxConfig) -> Forward:
    """``forward`` that queues the original files in the node's durable outbox (the sender delivers)."""
    outbox = Outbox(database, config)

    def forward(files: Sequence[Path], destinations: Sequence[str], reason: str) -> None:
        queue_forward(outbox, files, destinations)
        log.info("Queued %d original files for %s (%s).", len(files), ", ".join(destinations), reason)

    return forward


def outbox_generated_by(database: Database, config: OutboxConfig) -> GeneratedBy:
    """``generated_by`` for the router: the job whose results the outbox queued under a series UID."""
    return Outbox(database, config).result_job


class ObservedRouting:
    """The ready handler of routing: ``router.on_ready``, counting rule matches and auditing ``routed``."""

    def __init__(self, router: Router, *, metrics: RouteMetrics | None = None,
                 audit: RouteAudit | None = None) -> None:
        self.router = router
        self.metrics = metrics
        self.audit = audit

    def __call__(self, event: SeriesReady | StudyReady) -> None:
        for item in self.router.on_ready(event):
            d = item.decision
            if self.metrics is not None and d.rule:
                self.metrics.rule_matched(d.rule)
            if self.audit is not None:
                self.audit.record(
                    "routed", d.study_uid, series_uid=d.series_uid or None, job_id=d.job_id,
                    detail={"rule": d.rule, "action": d.action, "pipeline": d.pipeline,
                            "destinations": list(d.destinations), "ruleset": d.ruleset_hash[:12]},
                )
