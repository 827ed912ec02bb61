"""Result packages of the real pipelines, made once per session for the tests that only read them.

    def test_x(liver_ct_run):
        seg = liver_ct_run.output_dir / "seg.dcm"     # liver-ct on the shared abdominal CT (20 slices)

The tests must not change the files (copy them first); a test about the pipeline run itself runs its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import shared_data


@dataclass(frozen=True)
class PipelineRun:
    output_dir: Path
    files: tuple[Path, ...]  # the result objects (SEG, SR, derived series, …), as the job lists them


@pytest.fixture(scope="session")
def liver_ct_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """liver-ct with its default parameters on ``ct-abdomen-20``."""
    from dicomnode.jobs import JobSpec
    from dicomnode.pipelines.runner import run_job

    ct = sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))
    out = tmp_path_factory.mktemp("liver-ct-run")
    result = run_job(JobSpec("liver-ct-shared", "liver-ct", {}, tuple(map(str, ct)), str(out)))
    assert result.ok, result.error
    return PipelineRun(out, tuple(Path(f) for f in result.output_files))
