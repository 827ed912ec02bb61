"""The worker's side of one job attempt (runs in a Celery prefork child).

:func:`run_attempt`: drop stale messages (past the deadline, attempt superseded or already committed),
claim the attempt in the shared folder, copy ``in/`` to local scratch verifying the sha256 manifest, run
the same target as the local executor (:func:`dicomnode.pipelines.runner.run_job`) with inputs and
outputs in scratch, then commit ``out/attempt-<n>/`` (``result.json`` last, renamed into place). Every
failure the child can see becomes a committed failed result; what only the worker's parent process sees
(the hard time limit, a child killed by the kernel) is written as ``out/attempt-<n>.failed`` by
:func:`record_failure`. Workers never open the node's database and never talk to the PACS.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dicomnode.distributed.broker import Broker
from dicomnode.distributed.message import JobMessage
from dicomnode.distributed.settings import CelerySettings
from dicomnode.distributed.staging import JobLayout, commit_attempt, copy_verified, write_atomic
from dicomnode.errors import DicomNodeError
from dicomnode.jobs import JobResult, JobSpec

log = logging.getLogger(__name__)

DEFAULT_TARGET = "dicomnode.pipelines.runner:run_job"
_TOKEN_RE = re.compile(r"[^A-Za-z0-9_-]+")


def load_target(target: str) -> Callable[[JobSpec], JobResult]:
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def pipeline_versions(folder: str | Path | None = None) -> Mapping[str, str]:
    """Name → version of every pipeline in this installation and the site's ``folder`` (read once:
    parsing them takes ~50 ms)."""
    from dicomnode.pipelines.registry import load_pipelines

    pipelines = load_pipelines(folder or None, strict=False)
    return MappingProxyType({name: spec.version for name, spec in pipelines.items()})


@dataclass(frozen=True)
class WorkerContext:
    settings: CelerySettings
    target: str
    hostname: str
    broker: Broker
    versions: Mapping[str, str]


def run_attempt(
    context: WorkerContext, payload: dict[str, Any], soft_limit_error: type[BaseException]
) -> dict[str, Any]:
    """Run one attempt; returns a small JSON summary (Celery ignores it; the shared folder is the result)."""
    message = JobMessage.from_dict(payload)
    layout = JobLayout(context.settings.shared_dir, message.job_id)
    skip = _stale(message, layout)
    if skip:
        log.info("Dropping job %s attempt %d: %s.", message.job_id, message.attempt, skip)
        return {"job_id": message.job_id, "attempt": message.attempt, "skipped": skip}
    token = _TOKEN_RE.sub("_", f"{context.hostname}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    started = time.time()
    write_atomic(layout.claim(message.attempt, token), json.dumps(
        {"worker": context.hostname, "pid": os.getpid(), "started_at": started}).encode(), durable=False)
    context.broker.publish("claimed", message.job_id, message.attempt, context.hostname)
    scratch_root = context.settings.scratch_dir
    with tempfile.TemporaryDirectory(prefix=f"dicomnode-{message.job_id}-", dir=scratch_root) as scratch:
        result = _execute(context, message, layout, Path(scratch), soft_limit_error)
        summary = {**result.summary, "worker": context.hostname, "worker_seconds": time.time() - started}
        committed = commit_attempt(layout, message.attempt, token, replace(result, summary=summary))
    if committed:
        context.broker.publish("committed", message.job_id, message.attempt, context.hostname)
    log.info("Job %s attempt %d %s%s.", message.job_id, message.attempt, "done" if result.ok else "failed",
             "" if committed else " (a duplicate delivery committed first; discarded)")
    return {"job_id": message.job_id, "attempt": message.attempt, "ok": result.ok, "committed": committed}


def _stale(message: JobMessage, layout: JobLayout) -> str:
    if time.time() > message.deadline:
        return "past its deadline"
    if layout.committed(message.attempt).exists():
        return "already committed"
    wanted = layout.wanted_attempt()
    if wanted > message.attempt:
        return f"superseded by attempt {wanted}"
    return ""


def _execute(context: WorkerContext, message: JobMessage, layout: JobLayout, scratch: Path,
             soft_limit_error: type[BaseException]) -> JobResult:
    try:
        version = context.versions.get(message.pipeline, "")
        if message.pipeline_version and version and version != message.pipeline_version:
            raise DicomNodeError(f"This worker has pipeline '{message.pipeline}' version {version}, but the "
                                 f"node asked for version {message.pipeline_version}; update the worker.")
        inputs = copy_verified(layout, message.manifest_sha256, scratch / "in")
        (scratch / "out").mkdir()
        spec = message.spec(inputs, str(scratch / "out"), context.settings.pipelines_path)
        result = load_target(context.target)(spec)
        if not isinstance(result, JobResult):
            raise DicomNodeError(f"The job target '{context.target}' returned {type(result).__name__}, "
                                 "not a JobResult.")
        if not result.ok and "SoftTimeLimitExceeded" in result.error:
            soft, _ = context.settings.limits_for(message.pipeline)
            return replace(result, error=f"Job '{message.job_id}' ({message.pipeline}) passed its soft time "
                                         f"limit of {soft:g} s and was stopped.")
        return result
    except soft_limit_error:
        soft, _ = context.settings.limits_for(message.pipeline)
        return JobResult(message.job_id, False, error=f"Job '{message.job_id}' ({message.pipeline}) passed "
                                                      f"its soft time limit of {soft:g} s and was stopped.")
    except DicomNodeError as exc:
        log.warning("Job %s attempt %d failed: %s", message.job_id, message.attempt, exc)
        return JobResult(message.job_id, False, error=str(exc))
    except Exception as exc:  # a bug in the target: the job's failure, traceback in the worker log
        log.exception("Job %s attempt %d crashed", message.job_id, message.attempt)
        return JobResult(message.job_id, False, error=f"Internal error in worker {context.hostname}: "
                                                      f"{type(exc).__name__}: {exc}")


def record_failure(context: WorkerContext, payload: object, reason: str) -> None:
    """Called in the worker's parent process when a child died or hit the hard limit: write
    ``out/attempt-<n>.failed`` (first writer wins) so the node retries now rather than at lease expiry."""
    try:
        message = JobMessage.from_dict(payload)
        layout = JobLayout(context.settings.shared_dir, message.job_id)
        if layout.committed(message.attempt).exists():
            return
        data = json.dumps({"worker": context.hostname, "reason": reason, "time": time.time()}).encode()
        fd = os.open(layout.failed(message.attempt), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except FileExistsError:
        return
    except (DicomNodeError, OSError) as exc:
        log.error("Cannot record the failure of a job attempt (%s): %s", reason, exc)
        return
    log.error("Job %s attempt %d: %s", message.job_id, message.attempt, reason)
    context.broker.publish("failed", message.job_id, message.attempt, context.hostname)


def default_hostname() -> str:
    return f"dicomnode@{socket.gethostname()}"
