"""The local worker pool: a fresh process per job (forked from a fork server), at most ``workers`` at once.

A job that crashes its process (segfault, ``os._exit``, out of memory) or runs past ``timeout`` seconds
is killed and reported as a failed :class:`~dicomnode.jobs.JobResult` naming the reason; the pool and
the other jobs go on (a ``concurrent.futures.ProcessPoolExecutor`` would break entirely when one worker
dies). Each worker caps ITK's and the BLAS/OpenMP libraries' threads at ``itk_threads``.

The child runs ``target`` (``"module:function"``, default :func:`dicomnode.pipelines.runner.run_job`)
with the :class:`~dicomnode.jobs.JobSpec`; its result travels back through ``result.json`` in the job's
output directory, so nothing but paths crosses the process boundary.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicomnode.errors import PipelineError
from dicomnode.jobs import JobResult, JobSpec

log = logging.getLogger(__name__)

DEFAULT_TARGET = "dicomnode.pipelines.runner:run_job"
PRELOAD_MODULES = (
    "dicomnode.pipelines.runner",
    "dicomnode.pipelines.steps",
    "dicomnode.imaging.volume",
    "dicomnode.outputs.package",
    "dicomnode.imaging.quantify",
)
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


def _child(spec_json: str, itk_threads: int, target: str) -> None:
    """Worker process entry point (forked from the fork server, whose environment carries the caps)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(itk_threads)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    spec = JobSpec.from_json(spec_json)
    result = function(spec)
    if isinstance(result, JobResult):
        result.write(Path(spec.output_dir))


# what multiprocessing's fork server reports when a child's exit status does not reach the parent (under load,
# CPython gh-140867): the child may have ended well, having written its result
LOST_STATUS = 255


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == LOST_STATUS:
        return (f"exit code {code}, or its exit status was lost: the fork server reports {code} when it "
                "cannot pass a child's status on, CPython gh-140867")
    return f"exit code {code}"


class LocalExecutor:
    """Run jobs in separate processes; ``on_done`` is called (from a pool thread) with each result."""

    def __init__(
        self, workers: int = 1, timeout: float = 1800.0, itk_threads: int = 1, *, target: str = DEFAULT_TARGET
    ) -> None:
        if workers < 1 or timeout <= 0 or itk_threads < 1:
            raise PipelineError(
                f"Invalid executor settings: workers={workers!r}, timeout={timeout!r}, "
                f"itk_threads={itk_threads!r}."
            )
        self.workers = workers
        self.timeout = float(timeout)
        self.itk_threads = itk_threads
        self.target = target
        # forkserver: each job still gets a fresh process (a crash or leak dies with it), forked from a
        # server that imported the imaging stack once (a spawned process pays ~2 s of imports per job)
        self._context = multiprocessing.get_context("forkserver")
        self._queue: queue.Queue[tuple[JobSpec, Callable[[JobResult], None]] | None] = queue.Queue()
        self._slots = threading.BoundedSemaphore(workers)
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running: dict[str, multiprocessing.process.BaseProcess] = {}
        self._threads: set[threading.Thread] = set()

    def start(self) -> None:
        if self._dispatcher is not None:
            return
        # the fork server is started from this environment: cap BLAS/OpenMP threads before it imports
        # numpy (the node process itself does no heavy numerics; its numpy is already loaded)
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, str(self.itk_threads))
        module = self.target.partition(":")[0]
        self._context.set_forkserver_preload([*PRELOAD_MODULES, module])
        self._stopping.clear()
        self._dispatcher = threading.Thread(target=self._dispatch, name="executor-dispatch", daemon=True)
        self._dispatcher.start()

    def submit(self, spec: JobSpec, on_done: Callable[[JobResult], None]) -> None:
        if self._stopping.is_set():
            raise PipelineError(f"The executor is stopping; job '{spec.job_id}' was not accepted.")
        self._queue.put((spec, on_done))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, kill running workers (their jobs are reported failed) and join the threads."""
        self._stopping.set()
        self._queue.put(None)
        with self._lock:
            running = list(self._running.values())
        for process in running:
            process.kill()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
            self._dispatcher = None
        for thread in list(self._threads):
            thread.join(timeout)

    def running_jobs(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                return
            spec, on_done = item
            thread = threading.Thread(target=self._supervise, args=(spec, on_done), name=f"job-{spec.job_id}")
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _supervise(self, spec: JobSpec, on_done: Callable[[JobResult], None]) -> None:
        try:
            result = self._run_one(spec)
            try:
                on_done(result)
            except Exception:  # the callback's own failure must not kill the pool
                log.exception("The completion callback of job %s failed", spec.job_id)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._slots.release()

    def _run_one(self, spec: JobSpec) -> JobResult:
        output_dir = Path(spec.output_dir)
        result_file = output_dir / "result.json"
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            result_file.unlink(missing_ok=True)  # never read a previous attempt's result
        except OSError as exc:
            return JobResult(spec.job_id, False, error=f"Cannot prepare output folder '{output_dir}': {exc}.")
        process = self._context.Process(
            target=_child,
            args=(spec.to_json(), self.itk_threads, self.target),
            name=f"dicomnode-job-{spec.job_id}",
        )
        started = time.monotonic()
        process.start()
        with self._lock:
            self._running[spec.job_id] = process
        try:
            process.join(self.timeout)
            if process.is_alive():
                process.kill()
                process.join(10)
                return JobResult(
                    spec.job_id, False, error=f"Job '{spec.job_id}' ({spec.pipeline}) timed out after "
                    f"{self.timeout:g} s and was killed."
                )
        finally:
            with self._lock:
                self._running.pop(spec.job_id, None)
        elapsed = time.monotonic() - started
        if self._stopping.is_set() and process.exitcode != 0:
            return JobResult(spec.job_id, False, error=f"Job '{spec.job_id}' was stopped with the node.")
        if process.exitcode == LOST_STATUS and result_file.exists():  # the status was lost, not the result
            with contextlib.suppress(OSError, ValueError, TypeError):
                result = JobResult.from_json(result_file.read_text(encoding="utf-8"))
                log.warning("job %s: its worker's exit status was lost (%s); its result.json is used",
                            spec.job_id, LOST_STATUS)
                return result
        if process.exitcode != 0:
            return JobResult(
                spec.job_id, False, error=f"The worker process of job '{spec.job_id}' ({spec.pipeline}) died "
                f"({_describe_exit(process.exitcode)}) after {elapsed:.1f} s."
            )
        try:
            return JobResult.from_json(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            return JobResult(
                spec.job_id, False, error=f"Job '{spec.job_id}' left no readable result.json: {exc}."
            )
