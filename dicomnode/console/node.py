"""What the console reads and acts on: the node's database through the stages' own APIs.

:class:`ConsoleNode` bundles the configuration, the database and the stage objects the console uses
(spool index, decision log, outbox, audit trail) plus, when it runs inside ``dicomnode serve``, the live
parts: the rule book in force, the router's ``submit_job`` (re-run), the listener and the metrics.
Outside a running node (tests, a read-only console on a copy of the database) the live parts are None and
the console says so instead of guessing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomnode.assemble.assembler import AssemblyRecords
from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.observability.audit import AuditTrail
from dicomnode.pipelines.jobstore import JobStore
from dicomnode.route.decisions import DecisionLog
from dicomnode.route.watcher import RuleBook
from dicomnode.send.outbox import Outbox
from dicomnode.spool.index import SpoolIndex

if TYPE_CHECKING:
    from dicomnode.observability.metrics import Metrics
    from dicomnode.route.router import Router
    from dicomnode.runtime.service import Service


@dataclass
class ConsoleNode:
    config: Config
    database: Database
    index: SpoolIndex
    decisions: DecisionLog
    outbox: Outbox
    audit: AuditTrail
    book: RuleBook | None = None  # the rule set in force (None: the console loads the folder itself)
    router: Any | None = None  # the Router, when running: its ``submit_job(spec, priority=…)`` re-runs jobs
    listener: Any | None = None  # the DICOM listener (state on the dashboard), when running
    metrics: Any | None = None  # the node's Metrics (association counters), when running
    secret_key: str = ""
    assembly: AssemblyRecords | None = None  # series/study states (built from ``database`` when None)
    jobs: JobStore | None = None  # the jobs table (built from ``database`` when None)

    def __post_init__(self) -> None:
        self.assembly = self.assembly or AssemblyRecords(self.database)
        self.jobs = self.jobs or JobStore(self.database)
        if not self.secret_key:
            self.secret_key = self.config.console.secret_key or secrets.token_urlsafe(32)

    @classmethod
    def for_config(cls, config: Config, database: Database | None = None, **live: Any) -> ConsoleNode:
        """A console on the node database of ``config`` (tables are created if missing)."""
        db = database or Database(config.storage.database_path)
        return cls(
            config=config, database=db, index=SpoolIndex(db, config.storage.spool_dir),
            decisions=DecisionLog(db), outbox=Outbox(db, config.outbox), audit=AuditTrail(db), **live,
        )

    @classmethod
    def for_service(
        cls, service: Service, *, book: RuleBook, router: Router, metrics: Metrics, audit: AuditTrail
    ) -> ConsoleNode:
        """The console of a :class:`~dicomnode.runtime.service.Service` (from ``build_service``)."""
        return cls(
            config=service.config, database=service.database, index=service.index,
            decisions=DecisionLog(service.database), outbox=Outbox(service.database, service.config.outbox),
            audit=audit, book=book, router=router, listener=service.listener, metrics=metrics,
        )

    @property
    def submit_job(self) -> Any | None:
        """The router's job submitter, read at call time (wiring may connect an executor later)."""
        return getattr(self.router, "submit_job", None)
