"""Stand-in job targets for executor/processing tests, run in spawned worker processes
(``LocalExecutor(target="tests.pipeline_targets:NAME")``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dicomnode.jobs import JobResult, JobSpec


def crash(spec: JobSpec) -> JobResult:
    """Dies like a segfaulting C extension would: no result, no clean-up."""
    os._exit(3)


def copy_inputs(spec: JobSpec) -> JobResult:
    """'Processes' a series by copying its files: real DICOM result files for the outbox."""
    out = Path(spec.output_dir)
    files = []
    for i, source in enumerate(spec.input_files, 1):
        target = out / f"IM{i:05d}.dcm"
        shutil.copyfile(source, target)
        files.append(str(target))
    return JobResult(spec.job_id, True, tuple(files), {"seconds": 0.1, "steps": [
        {"name": "copy", "use": "copy", "seconds": 0.1, "peak_rss_mb": 1.0}]})
