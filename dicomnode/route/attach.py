"""Attaching routing to the running node (called from :func:`dicomnode.runtime.wiring.build_service`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomnode.route.router import Forward, Router, SubmitJob, log_job_request
from dicomnode.route.watcher import RuleBook, RuleWatcher

log = logging.getLogger(__name__)


def outbox_forward(service: Any) -> Forward:
    """``forward`` that queues the original files in the node's durable outbox (the sender delivers)."""
    from dicomnode.send.forward import forward as queue_forward
    from dicomnode.send.outbox import Outbox

    outbox = Outbox(service.database, service.config.outbox)

    def forward(files: Sequence[Path], destinations: Sequence[str], reason: str) -> None:
        queue_forward(outbox, files, destinations)
        log.info("Queued %d original files for %s (%s).", len(files), ", ".join(destinations), reason)

    return forward


def _observed(router: Router, service: Any) -> Any:
    """``router.on_ready`` that also counts rule matches and writes ``routed`` to the audit trail."""
    metrics = getattr(service, "metrics", None)
    audit = getattr(service, "audit", None)

    def on_ready(event: Any) -> None:
        for item in router.on_ready(event):
            d = item.decision
            if metrics is not None and d.rule:
                metrics.rule_matched(d.rule)
            if audit is not None:
                audit.record(
                    "routed", d.study_uid, series_uid=d.series_uid or None, job_id=d.job_id,
                    detail={"rule": d.rule, "action": d.action, "pipeline": d.pipeline,
                            "destinations": list(d.destinations), "ruleset": d.ruleset_hash[:12]},
                )

    return on_ready


def attach_routing(
    service: Any, *, submit_job: SubmitJob = log_job_request, forward: Forward | None = None
) -> Router:
    """Load the rules, and register the router (ready handler, quiet-period resolver), SIGHUP reload
    and, with ``rules.watch``, the file watcher. An invalid rule set at start-up is logged; the node
    then records every series as ``unrouted`` until a valid set is loaded (the files stay in the spool).
    """
    config = service.config
    book = RuleBook.for_config(config)
    book.reload()
    router = Router(
        config, service.database, book, submit_job=submit_job,
        forward=forward if forward is not None else outbox_forward(service),
    )
    service.add_ready_handler(_observed(router, service))
    service.quiet_seconds_resolver = router.quiet_seconds_for
    service.add_reload_hook(book.reload)
    if config.rules.watch:
        service.add_component(RuleWatcher(book))
    return router
