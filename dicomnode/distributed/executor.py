"""``processing.executor: celery``: the node's side of running jobs on Celery workers.

:class:`CeleryExecutor` has the local executor's interface (``start()``, ``stop()``,
``submit(spec, on_done)``). The node stays the source of truth: every (job, attempt) handed out is a
row of ``job_leases`` in its SQLite database, and one collector thread

* dispatches: stages the series into the shared ``<job>/in/`` with a sha256 manifest and publishes a
  small JSON message on the pipeline's queue (or the urgent queue);
* collects: a committed ``<job>/out/attempt-<n>/`` is verified file by file and accepted with a
  conditional update on (job, attempt) — the first commit of a job wins, later duplicates are
  discarded — then ``on_done`` gets the :class:`JobResult` whose files lie in the committed folder;
* reconciles: an attempt whose worker was killed (hard limit, out of memory: ``attempt-<n>.failed``),
  whose claim outlived hard limit + lease (worker machine died), whose message vanished from the broker
  before any claim (Redis flushed or restarted without its append-only file), or whose result folder
  fails its hashes, is reported failed to ``on_done``; :class:`~dicomnode.runtime.processing.Processing`
  then dispatches attempt + 1 until ``processing.max_attempts`` and fails the job with the reason.

Worker events on Redis pub/sub wake the collector at once; a full scan every
``processing.celery.reconcile_seconds`` finds whatever an event did not announce.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.distributed.broker import BROKER_ERRORS, Broker
from dicomnode.distributed.leases import ACTIVE, Lease, LeaseState, LeaseStore
from dicomnode.distributed.message import TASK_NAME, JobMessage
from dicomnode.distributed.settings import CelerySettings
from dicomnode.distributed.staging import JobLayout, adopt, read_committed, stage_inputs
from dicomnode.distributed.task import pipeline_versions
from dicomnode.errors import DicomNodeError, DistributedError, PipelineError
from dicomnode.jobs import JobResult, JobSpec
from dicomnode.pipelines.jobstore import FINISHED, JobStore

log = logging.getLogger(__name__)

OnDone = Callable[[JobResult], None]
LOST_AFTER_MISSES = 2  # consecutive broker scans without the message before it counts as lost
PUBLISH_RETRY_SECONDS = 2.0


class MetricsRegistry(Protocol):
    """Where the executor registers its Celery metrics (``dicomnode.observability.metrics.Metrics`` fits)."""

    registry: CollectorRegistry


class CeleryExecutor:
    """Run jobs on Celery workers; ``on_done`` is called from the collector thread."""

    def __init__(self, config: Config, database: Database, *, metrics: MetricsRegistry | None = None) -> None:
        self.settings = CelerySettings.from_config(config)
        self.leases = LeaseStore(database)
        self.jobs = JobStore(database, max_attempts=config.processing.max_attempts)
        self.versions = pipeline_versions(self.settings.pipelines_path)
        self._lock = threading.Lock()
        self._callbacks: dict[str, OnDone] = {}
        self._specs: dict[str, JobSpec] = {}
        self._hot: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._app: Any = None
        self._broker: Broker | None = None
        self._last_full = 0.0
        self._publish_after = 0.0
        self._attempts: Counter | None = None
        if metrics is not None:
            self._attempts = Counter(
                "dicomnode_job_attempts", "Job attempts on Celery workers, by pipeline and outcome (ok, "
                "failed, killed, expired, lost, rejected, duplicate, stage_failed).", ["pipeline", "outcome"],
                registry=metrics.registry)
            metrics.registry.register(_QueueCollector(self))

    # -- component -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        from dicomnode.distributed.app import build_app

        self._stopping.clear()
        self._app = build_app(self.settings)
        self._broker = Broker(self.settings.broker_url, self.settings.queue_prefix)
        self._close_orphans()
        for name, target in (("celery-collector", self._run), ("celery-events", self._listen)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching and collecting; attempts on workers go on and are collected after a restart."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        if self._broker is not None:
            self._broker.close()
        if self._app is not None:
            self._app.close()

    def submit(self, spec: JobSpec, on_done: OnDone) -> None:
        if self._stopping.is_set():
            raise PipelineError(f"The executor is stopping; job '{spec.job_id}' was not accepted.")
        JobLayout(self.settings.shared_dir, spec.job_id)  # refuses a job id that cannot name a folder
        queue = self.settings.queue_for(spec.pipeline, spec.rule)
        self.leases.open(spec.job_id, spec.attempt, spec.pipeline, queue)
        with self._lock:
            self._callbacks[spec.job_id] = on_done
            self._specs[spec.job_id] = spec
            self._hot.add(spec.job_id)
        self._wake.set()

    def queues(self) -> list[str]:
        """The urgent queue and every pipeline's queue, with those of attempts still on the broker."""
        known = self.settings.default_queues(p for p in self.versions if p != "forward")
        return known + sorted({lease.queue for lease in self.leases.active()} - set(known))

    # -- the collector thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._cycle()
            except Exception:  # one bad cycle must not end collection; the next one retries
                log.exception("The Celery collector cycle failed")
            self._wake.wait(min(1.0, self.settings.reconcile_seconds))
            self._wake.clear()

    def _listen(self) -> None:
        assert self._broker is not None
        self._broker.listen(self._on_event, self._stopping)

    def _on_event(self, event: dict) -> None:
        job_id = str(event.get("job_id", ""))
        with self._lock:
            if job_id in self._callbacks:
                self._hot.add(job_id)
        self._wake.set()

    def _cycle(self) -> None:
        now = time.time()
        with self._lock:
            hot, self._hot = self._hot, set()
        full = now - self._last_full >= self.settings.reconcile_seconds
        if full:
            self._last_full = now
        presence: dict[str, set[str] | None] = {}
        for lease in self.leases.active() + self._replays(hot):
            if self._stopping.is_set():
                return
            spec = self._specs.get(lease.job_id)
            if spec is None:
                continue  # not (re)submitted by the processing stage (yet)
            if lease.attempt != spec.attempt and lease.state in ACTIVE:
                self.leases.end(lease.job_id, lease.attempt, LeaseState.SUPERSEDED,
                                f"attempt {spec.attempt} was submitted")
                continue
            if lease.state == LeaseState.PENDING:
                self._dispatch(lease, now)
            elif lease.state in (LeaseState.QUEUED, LeaseState.RUNNING) and (full or lease.job_id in hot):
                self._check(lease, now, full, presence)
            elif lease.state not in ACTIVE and lease.job_id in hot:
                self._replay(lease)

    def _replays(self, hot: set[str]) -> list[Lease]:
        """Final leases of jobs submitted again (after a node restart) whose outcome was never delivered."""
        found = []
        for job_id in hot:
            with self._lock:
                spec = self._specs.get(job_id)
            lease = self.leases.get(job_id, spec.attempt) if spec else None
            if lease is not None and lease.state not in ACTIVE:
                found.append(lease)
        return found

    # -- dispatch ---------------------------------------------------------------------------------------
    def _dispatch(self, lease: Lease, now: float) -> None:
        if now < self._publish_after:
            return
        spec = self._specs[lease.job_id]
        layout = JobLayout(self.settings.shared_dir, spec.job_id)
        try:
            manifest = stage_inputs(layout, list(spec.input_files), spec.attempt)
        except (DistributedError, OSError) as exc:
            self._fail(lease, LeaseState.FAILED,
                       f"Cannot stage the input of job '{spec.job_id}' into the shared folder: {exc}",
                       "stage_failed")
            return
        soft, hard = self.settings.limits_for(spec.pipeline)
        deadline = now + self.settings.visibility_timeout
        message = JobMessage.for_spec(spec, pipeline_version=self.versions.get(spec.pipeline, ""),
                                      manifest_sha256=manifest, deadline=deadline)
        task_id = f"{spec.job_id}-{spec.attempt}-{uuid.uuid4().hex[:12]}"
        try:
            self._app.send_task(TASK_NAME, args=[message.to_dict()], queue=lease.queue, task_id=task_id,
                                time_limit=hard, soft_time_limit=soft, retry=False)
        except Exception as exc:  # kombu/redis connection errors: keep the lease pending and try again
            log.warning("Cannot publish job %s attempt %d to the broker (%s); retrying in %g s.",
                        spec.job_id, spec.attempt, exc, PUBLISH_RETRY_SECONDS)
            self._publish_after = now + PUBLISH_RETRY_SECONDS
            return
        self.leases.dispatched(spec.job_id, spec.attempt, task_id, manifest)
        log.info("Job %s attempt %d queued on %s (time limits %g/%g s).", spec.job_id, spec.attempt,
                 lease.queue, soft, hard)

    # -- collect and reconcile --------------------------------------------------------------------------
    def _check(self, lease: Lease, now: float, full: bool, presence: dict[str, set[str] | None]) -> None:
        layout = JobLayout(self.settings.shared_dir, lease.job_id)
        for attempt in _committed_attempts(layout, lease.attempt):
            if self._collect(lease, layout, attempt):
                return
        failed = layout.failed(lease.attempt)
        if failed.exists():
            reason = _read_json(failed).get("reason", "the worker reported a failure")
            self._fail(lease, LeaseState.FAILED,
                       f"Attempt {lease.attempt} of job '{lease.job_id}' failed: {reason}.", "killed")
            return
        if lease.state == LeaseState.QUEUED:
            claims = layout.claims(lease.attempt)
            if claims:
                worker = str(_read_json(claims[0]).get("worker", ""))
                if self.leases.claimed(lease.job_id, lease.attempt, worker):
                    with contextlib.suppress(PipelineError):  # no longer queued: nothing to show
                        self.jobs.mark_running(lease.job_id)
                return
            waited = now - (lease.dispatched_at or now)
            if full and waited > self.settings.lease_seconds:
                self._check_presence(lease, presence)
        elif lease.state == LeaseState.RUNNING and lease.claimed_at is not None:
            _, hard = self.settings.limits_for(lease.pipeline)
            if now > lease.claimed_at + hard + self.settings.lease_seconds:
                self._fail(lease, LeaseState.EXPIRED, f"Attempt {lease.attempt} of job '{lease.job_id}' on "
                           f"{lease.worker or 'a worker'} gave no result within its hard time limit "
                           f"({hard:g} s) plus the lease ({self.settings.lease_seconds:g} s); the worker is "
                           "presumed dead.", "expired")

    def _check_presence(self, lease: Lease, presence: dict[str, set[str] | None]) -> None:
        if "ids" not in presence:
            assert self._broker is not None
            try:
                presence["ids"] = self._broker.present_task_ids(self.queues())
            except BROKER_ERRORS as exc:
                log.warning("Cannot read the broker's queues to reconcile leases: %s", exc)
                presence["ids"] = None
        ids = presence["ids"]
        if ids is None:
            return
        if lease.task_id in ids:
            if lease.misses:
                self.leases.seen(lease.job_id, lease.attempt)
            return
        if self.leases.missed(lease.job_id, lease.attempt) >= LOST_AFTER_MISSES:
            self._fail(lease, LeaseState.LOST,
                       f"The message of attempt {lease.attempt} of job '{lease.job_id}' is no "
                       "longer on the broker and no worker claimed it (Redis flushed, or restarted without "
                       "its append-only file?).", "lost")

    def _collect(self, lease: Lease, layout: JobLayout, attempt: int) -> bool:
        """Accept committed ``attempt`` of the lease's job; True when the lease is settled by it."""
        folder = layout.committed(attempt)
        spec = self._specs[lease.job_id]
        try:
            result = read_committed(folder)
            target = adopt(folder, Path(spec.output_dir))
            if target != folder:
                result = read_committed(target)
        except (DistributedError, OSError) as exc:
            rejected = folder.with_name(f"{folder.name}.rejected-{uuid.uuid4().hex[:8]}")
            folder.rename(rejected)
            error = f"The result of attempt {attempt} of job '{lease.job_id}' was rejected: {exc}"
            if attempt != lease.attempt:
                log.error("%s (a late result; attempt %d is current).", error, lease.attempt)
                self._count(lease.pipeline, "rejected")
                return False
            self._fail(lease, LeaseState.REJECTED, error, "rejected")
            return True
        if not result.ok:
            if attempt != lease.attempt:
                return False  # a late failure of an earlier attempt changes nothing
            self._fail(lease, LeaseState.FAILED, result.error, "failed")
            return True
        worker = str(result.summary.get("worker", ""))
        if not self.leases.collect(lease.job_id, attempt, worker):  # that attempt was settled otherwise
            log.info("Discarded a late result of job %s (attempt %d).", lease.job_id, attempt)
            self._count(lease.pipeline, "duplicate")
            with contextlib.suppress(OSError):
                target.rename(target.with_name(f"{target.name}.discarded-{uuid.uuid4().hex[:8]}"))
            return False
        shutil.rmtree(layout.in_dir, ignore_errors=True)
        if target != folder:
            shutil.rmtree(layout.root, ignore_errors=True)
        self._count(lease.pipeline, "ok")
        log.info("Collected job %s attempt %d from %s: %d result objects.", lease.job_id, attempt,
                 worker or "a worker", len(result.output_files))
        self._deliver(lease.job_id, JobResult(lease.job_id, True, result.output_files, result.summary))
        return True

    def _replay(self, lease: Lease) -> None:
        """Deliver again the outcome of an attempt the node settled before it was stopped."""
        collected = [x for x in self.leases.of_job(lease.job_id) if x.state == LeaseState.COLLECTED]
        if collected:
            spec = self._specs[lease.job_id]
            folder = JobLayout(self.settings.shared_dir, lease.job_id).committed(collected[0].attempt)
            local = Path(spec.output_dir) / folder.name
            try:
                result = read_committed(folder if folder.exists() else local)
            except DistributedError as exc:
                self._deliver(lease.job_id, JobResult(lease.job_id, False, error=str(exc)))
                return
            self._deliver(lease.job_id, JobResult(lease.job_id, True, result.output_files, result.summary))
            return
        self._deliver(lease.job_id, JobResult(lease.job_id, False, error=lease.error or
                                              f"Attempt {lease.attempt} ended {lease.state}."))

    def _fail(self, lease: Lease, state: LeaseState, error: str, outcome: str) -> None:
        if self.leases.end(lease.job_id, lease.attempt, state, error):
            log.warning("Job %s attempt %d %s: %s", lease.job_id, lease.attempt, state, error)
            self._count(lease.pipeline, outcome)
            self._deliver(lease.job_id, JobResult(lease.job_id, False, error=error))

    def _deliver(self, job_id: str, result: JobResult) -> None:
        with self._lock:
            on_done = self._callbacks.pop(job_id, None)
            self._specs.pop(job_id, None)
        if on_done is None:
            return
        try:
            on_done(result)
        except Exception:  # the callback's own failure must not stop the collector
            log.exception("The completion callback of job %s failed", job_id)

    def _count(self, pipeline: str, outcome: str) -> None:
        if self._attempts is not None:
            self._attempts.labels(pipeline=pipeline, outcome=outcome).inc()

    def _close_orphans(self) -> None:
        """Active leases of jobs that are already done or failed (the node stopped in between)."""
        for lease in self.leases.active():
            try:
                state: str = self.jobs.get(lease.job_id).state
            except DicomNodeError:
                state = "missing"
            if state in FINISHED or state == "missing":
                self.leases.end(lease.job_id, lease.attempt, LeaseState.SUPERSEDED, f"the job is {state}")

    def queue_depth(self) -> dict[str, int]:
        assert self._broker is not None
        return self._broker.queue_depth(self.queues())


def _committed_attempts(layout: JobLayout, upto: int) -> list[int]:
    return [n for n in range(1, upto + 1) if layout.committed(n).is_dir()]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _QueueCollector(Collector):
    """Scrape-time gauges: messages waiting per Celery queue, and leases per state."""

    def __init__(self, executor: CeleryExecutor) -> None:
        self.executor = executor

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("dicomnode_celery_queue_depth",
                                  "Messages waiting on the broker, per queue.", labels=["queue"])
        if self.executor._broker is not None:
            try:
                for queue, count in sorted(self.executor.queue_depth().items()):
                    depth.add_metric([queue], count)
            except BROKER_ERRORS as exc:
                log.warning("Cannot read the Celery queue depth for metrics: %s", exc)
        yield depth
        leases = GaugeMetricFamily("dicomnode_celery_active_attempts",
                                   "Attempts handed to Celery and not settled, per state.", labels=["state"])
        counts: dict[str, int] = {str(state): 0 for state in ACTIVE}
        for lease in self.executor.leases.active():
            counts[lease.state] += 1
        for state, count in counts.items():
            leases.add_metric([state], count)
        yield leases
