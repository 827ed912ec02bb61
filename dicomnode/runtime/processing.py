"""Processing stage of the running node: routed jobs → executor → result package → outbox.

:class:`Processing` is the ``submit_job`` the router calls. Each job is recorded in the ``jobs`` table
before it runs (so a restart resumes what was queued or running), runs in the executor (a crash or
timeout fails only that job), is retried automatically up to ``processing.max_attempts``, and on
success its result objects are queued in the durable outbox for the job's destinations, each filtered by
that destination's viewer profile — unless the result's QC verdict is ``fail`` and the rule's or the
destination's ``on_qc_fail`` is ``hold`` (the default): then they wait in ``held_results`` for an
operator. Every step is written to the audit trail and counted in the metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from dicomnode.compare.retries import ComparisonRetries
from dicomnode.config import Config, ViewerProfile
from dicomnode.database import Database
from dicomnode.errors import DicomNodeError, PipelineError
from dicomnode.jobs import JobResult, JobSpec
from dicomnode.observability.logging import log_context
from dicomnode.pipelines.jobstore import JobStore
from dicomnode.send.forward import forward as queue_forward
from dicomnode.send.held import HeldResults, QCPolicy, qc_reason
from dicomnode.send.outbox import Outbox
from dicomnode.send.results import enqueue_results

log = logging.getLogger(__name__)

FORWARD_PIPELINE = "forward"
COMPARISON_RETRIES = 3  # new runs of a job whose comparison the prior source could not answer


class Executor(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def submit(self, spec: JobSpec, on_done: Any) -> None: ...


def combined_profile(config: Config, destinations: Sequence[str]) -> dict[str, Any]:
    """One package serves every destination of a job: produce each kind of object any destination wants,
    and keep empty SEG frames when any destination's viewers need them."""
    profiles = [config.destination(name).profile for name in destinations]
    if not profiles:
        return {}
    union = ViewerProfile(
        send_seg=any(p.send_seg for p in profiles),
        send_enhanced=any(p.send_enhanced for p in profiles),
        send_sr=any(p.send_sr for p in profiles),
        send_ko=any(p.send_ko for p in profiles),
        secondary_capture=any(p.secondary_capture for p in profiles),
        seg_omit_empty_frames=all(p.seg_omit_empty_frames for p in profiles),
    )
    return union.model_dump()


class ProcessingMetrics(Protocol):
    """What processing reports to (``dicomnode.observability.metrics.Metrics`` fits)."""

    def pipeline_finished(self, pipeline: str, seconds: float, ok: bool) -> None: ...

    def step_timings(self, pipeline: str, timings: Mapping[str, float]) -> None: ...


class ProcessingAudit(Protocol):
    """Where processing records ``processed``/``failed`` events (``AuditTrail`` fits)."""

    def record(self, stage: str, study_uid: str, *, series_uid: str | None = None, job_id: str | None = None,
               detail: Mapping[str, Any] | None = None) -> None: ...


class Processing:
    """``submit(spec, priority=…)`` for the router; ``start()``/``stop()`` as a service component."""

    def __init__(
        self,
        config: Config,
        database: Database,
        *,
        executor: Executor | None = None,
        metrics: ProcessingMetrics | None = None,
        audit: ProcessingAudit | None = None,
        wake_sender: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.jobs = JobStore(database, max_attempts=config.processing.max_attempts)
        self.outbox = Outbox(database, config.outbox)
        self.held = HeldResults(database)
        self.comparison_retries = ComparisonRetries(database)
        if executor is None:
            from dicomnode.pipelines.executor import LocalExecutor

            p = config.processing
            executor = LocalExecutor(p.workers, p.job_timeout_seconds, p.itk_threads)
        self.executor = executor
        self.metrics = metrics
        self.audit = audit
        self.wake_sender = wake_sender
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._retry_thread: threading.Thread | None = None

    # -- component ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.executor.start()
        for spec in self.jobs.requeue_interrupted():
            log.info("Resuming job %s (%s) for series %s after a restart.", spec.job_id, spec.pipeline,
                     spec.series_uid)
            self.executor.submit(spec, self._on_done)
        self._stop.clear()
        self._retry_thread = threading.Thread(target=self._retry_loop, name="comparison-retries", daemon=True)
        self._retry_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._retry_thread is not None:
            self._retry_thread.join(timeout=5)
            self._retry_thread = None
        self.executor.stop()

    # -- the router's submit_job ----------------------------------------------------------------------
    def submit(self, spec: JobSpec, *, priority: int = 0) -> str:
        """Record and run ``spec``; returns the job's state after submission (``queued`` or ``done``)."""
        if spec.destinations and not spec.profile:
            spec = replace(spec, profile=combined_profile(self.config, spec.destinations))
        if not spec.prior and (request := self.prior_request(spec)):
            spec = replace(spec, prior=request)
        with log_context(job_id=spec.job_id, study_uid=spec.study_uid, series_uid=spec.series_uid):
            if spec.pipeline == FORWARD_PIPELINE:
                queue_forward(self.outbox, [Path(f) for f in spec.input_files], spec.destinations,
                              job_id=spec.job_id)
                self._wake()
                return "done"
            with self._lock:
                try:
                    existing = self.jobs.get(spec.job_id)
                except PipelineError:
                    existing = None
                if existing is not None:
                    log.info("Job %s already %s; not submitted again.", spec.job_id, existing.state)
                    return existing.state
                self.jobs.create(spec)
            log.info("Job %s queued: pipeline %s (rule %s, priority %d), %d instances.", spec.job_id,
                     spec.pipeline, spec.rule, priority, len(spec.input_files))
            self.executor.submit(spec, self._on_done)
            return "queued"

    def prior_request(self, spec: JobSpec) -> dict[str, Any]:
        """The comparison request for a job of a rule listed in ``priors.rules`` (else {})."""
        priors = self.config.priors
        if not priors.enabled or spec.rule not in priors.rules or not priors.source:
            return {}
        from dicomnode.compare.prior import PriorRequest

        return PriorRequest(
            source_name=priors.source,
            source=self.config.destination(priors.source).model_dump(mode="json"),
            method=priors.method, max_age_days=priors.max_age_days, wait_seconds=priors.wait_seconds,
            node_ae=self.config.node.ae_title, spool_dir=str(self.config.storage.spool_dir),
            count=priors.count, database_path=str(self.config.storage.database_path),
        ).to_json()

    def retry(self, job_id: str) -> JobSpec:
        """Run a failed job again (operator action)."""
        spec = self.jobs.retry(job_id)
        self.executor.submit(spec, self._on_done)
        return spec

    # -- completion -----------------------------------------------------------------------------------
    def _on_done(self, result: JobResult) -> None:
        record = self.jobs.get(result.job_id)
        spec = record.spec
        with log_context(job_id=spec.job_id, study_uid=spec.study_uid, series_uid=spec.series_uid):
            seconds = float(result.summary.get("seconds", 0.0) or 0.0)
            if self.metrics is not None:
                self.metrics.pipeline_finished(spec.pipeline, seconds, result.ok)
                steps = result.summary.get("steps") or []
                timings = {str(s["name"]): float(s["seconds"]) for s in steps if isinstance(s, dict)}
                if timings:
                    self.metrics.step_timings(spec.pipeline, timings)
            if result.ok:
                self._deliver(spec, result)  # in the outbox before the job is recorded done
                self.jobs.finish(result)
                self._retry_comparison(spec, result)
            else:
                self.jobs.finish(result)
                self._failed(spec, result)

    def _deliver(self, spec: JobSpec, result: JobResult) -> None:
        log.info("Job %s (%s) done in %.1f s: %d result objects.", spec.job_id, spec.pipeline,
                 float(result.summary.get("seconds", 0.0) or 0.0), len(result.output_files))
        self._audit("processed", spec, {"pipeline": spec.pipeline, "outputs": len(result.output_files),
                                        "seconds": result.summary.get("seconds")})
        if not spec.destinations:
            return
        qc = result.summary.get("qc") or {}
        held = [name for name in spec.destinations if self._holds(spec, name, qc)]
        for name in held:
            self.held.hold(spec.job_id, name, result.output_files, qc, study_uid=spec.study_uid,
                           series_uid=spec.series_uid, pipeline=spec.pipeline)
        if held:
            self._audit("processed", spec,
                        {"held_for": held, "qc": qc.get("status"), "reason": qc_reason(qc)})
        sending = [name for name in spec.destinations if name not in held]
        if not sending:
            return
        try:
            queued = enqueue_results(self.outbox, self.config, result.output_files, sending,
                                     job_id=spec.job_id)
        except DicomNodeError as exc:
            log.error("Results of job %s could not be queued: %s", spec.job_id, exc)
            self._audit("failed", spec, {"stage": "outbox", "error": str(exc)})
            return
        log.info("Job %s: queued %s.", spec.job_id,
                 ", ".join(f"{len(ids)} objects for {name}" for name, ids in queued.items()))
        self._wake()

    def _holds(self, spec: JobSpec, destination: str, qc: dict[str, Any]) -> bool:
        """Whether a result with verdict ``qc`` is held for ``destination`` (the rule's ``on_qc_fail``, else
        the destination's)."""
        if qc.get("status") != "fail":
            return False
        policy = spec.on_qc_fail or self.config.destination(destination).on_qc_fail
        return QCPolicy(policy) is QCPolicy.HOLD

    def _retry_comparison(self, spec: JobSpec, result: JobResult) -> None:
        """A comparison the source could not answer is tried again after ``priors.retry_minutes`` as a
        new run of the job (deterministic UIDs: its objects replace the ones sent without comparison),
        at most ``COMPARISON_RETRIES`` times; the schedule is in the node database
        (:mod:`dicomnode.compare.retries`), so a restart keeps it."""
        comparison = result.summary.get("comparison") or {}
        status = comparison.get("status")
        if not status:
            return
        if status != "unavailable":
            self.comparison_retries.finished(spec, str(status))
            return
        delay = self.config.priors.retry_minutes * 60.0
        retry = self.comparison_retries.unavailable(spec, str(comparison.get("reason", "")), delay,
                                                    COMPARISON_RETRIES)
        if retry.state == "given_up":
            log.warning("Job %s: %s; not tried again.", spec.job_id, retry.reason)
            return
        log.info("Job %s: comparison unavailable (%s); tried again in %.0f min as job %s.", spec.job_id,
                 retry.reason, delay / 60.0, retry.spec.job_id)

    def _retry_loop(self) -> None:
        """Submit the comparison retries that are due (checked every few seconds, at most every 30 s)."""
        interval = min(max(self.config.priors.retry_minutes * 60.0 / 4, 0.05), 30.0)
        while not self._stop.is_set():
            try:
                for retry in self.comparison_retries.due():
                    log.info("Comparison of job %s is tried again as job %s.", retry.job_id,
                             retry.spec.job_id)
                    self.submit(retry.spec)
                    self.comparison_retries.started(retry)
            except DicomNodeError:
                log.exception("Comparison retries could not be submitted; trying again in %.0f s.", interval)
            self._stop.wait(interval)

    def _failed(self, spec: JobSpec, result: JobResult) -> None:
        log.error("Job %s (%s, attempt %d) failed: %s", spec.job_id, spec.pipeline, spec.attempt,
                  result.error)
        self._audit("failed", spec, {"pipeline": spec.pipeline, "attempt": spec.attempt,
                                     "error": result.error})
        if result.summary.get("refused"):  # the input is not what the pipeline accepts: a retry cannot help
            return
        if spec.attempt < self.config.processing.max_attempts:
            retry = self.jobs.retry(spec.job_id)
            log.info("Retrying job %s (attempt %d of %d).", spec.job_id, retry.attempt,
                     self.config.processing.max_attempts)
            self.executor.submit(retry, self._on_done)

    def _audit(self, stage: str, spec: JobSpec, detail: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(stage, spec.study_uid, series_uid=spec.series_uid, job_id=spec.job_id,
                              detail=detail)

    def _wake(self) -> None:
        if self.wake_sender is not None:
            self.wake_sender()
