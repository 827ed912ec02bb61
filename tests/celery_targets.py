"""Stand-in job targets for Celery worker tests (``dicomnode worker --target tests.celery_targets:dispatch``).

A job's behaviour comes from its params (``{"behaviour": "hang"}``), else from the pipeline name
(:data:`STANDIN_PIPELINES`); anything else runs the real :func:`dicomnode.pipelines.runner.run_job`.
"""

from __future__ import annotations

import ctypes
import signal
import time

from dicomnode.jobs import JobResult, JobSpec
from tests.pipeline_targets import copy_inputs

STANDIN_PIPELINES = {"lung-ct": "copy"}


def hang_in_c(spec: JobSpec) -> JobResult:
    """Blocks inside a C call that holds the GIL (PyDLL keeps it) with every signal blocked, like a C
    extension stuck in a loop: the soft time limit (a signal) never gets through; only the hard limit's
    SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    ctypes.PyDLL(None).sleep(3600)
    raise AssertionError("unreachable")


def dispatch(spec: JobSpec) -> JobResult:
    behaviour = spec.params.get("behaviour") or STANDIN_PIPELINES.get(spec.pipeline)
    seconds = float(spec.params.get("seconds", 0.0))
    if behaviour is None:
        from dicomnode.pipelines.runner import run_job

        return run_job(spec)
    if behaviour == "hang":
        return hang_in_c(spec)
    if behaviour == "slow-first" and spec.attempt == 1 or behaviour == "slow":
        time.sleep(seconds)
    return copy_inputs(spec)
