"""Stand-in job targets for Celery worker tests (``dicomnode worker --target tests.celery_targets:dispatch``).

A job's behaviour comes from its params (``{"behaviour": "hang"}``), else from the pipeline name
(:data:`STANDIN_PIPELINES`); anything else runs the real :func:`dicomnode.pipelines.runner.run_job`.
"""

from __future__ import annotations

import ctypes
import signal
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.jobs import JobResult, JobSpec

STANDIN_PIPELINES = {"lung-ct": "copy"}


def hang_in_c(spec: JobSpec) -> JobResult:
    """Blocks inside a C call that holds the GIL (PyDLL keeps it) with every signal blocked, like a C
    extension stuck in a loop: the soft time limit (a signal) never gets through; only the hard limit's
    SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    ctypes.PyDLL(None).sleep(3600)
    raise AssertionError("unreachable")


def copy_as_new_series(spec: JobSpec) -> JobResult:
    """'Processes' a series by copying it into a new series whose UIDs derive from the job id
    (deterministic, and distinct per job, so each job's results are separate objects in the PACS)."""
    out = Path(spec.output_dir)
    series_uid = generate_uid(entropy_srcs=[spec.job_id, spec.series_uid])
    files = []
    for i, source in enumerate(spec.input_files, 1):
        ds = dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[spec.job_id, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out / f"IM{i:05d}.dcm"
        ds.save_as(target)
        files.append(str(target))
    return JobResult(spec.job_id, True, tuple(files), {"seconds": 0.1, "steps": [
        {"name": "copy", "use": "copy", "seconds": 0.1, "peak_rss_mb": 1.0}]})


def dispatch(spec: JobSpec) -> JobResult:
    behaviour = spec.params.get("behaviour") or STANDIN_PIPELINES.get(spec.pipeline)
    seconds = float(spec.params.get("seconds", 0.0))
    if behaviour is None:
        from dicomnode.pipelines.runner import run_job

        return run_job(spec)
    first = spec.attempt == 1
    if behaviour == "hang" or behaviour == "hang-first" and first:
        return hang_in_c(spec)
    if behaviour == "slow" or behaviour == "slow-first" and first:
        time.sleep(seconds)
    return copy_as_new_series(spec)
