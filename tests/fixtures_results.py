"""Result packages of the real pipelines, made once per session for the tests that only read them.

    def test_x(liver_ct_run):
        seg = liver_ct_run.output_dir / "seg.dcm"     # liver-ct on the shared abdominal CT (20 slices)

    def test_y(real_ct_processed):                     # the outputs' input: the shared CT, reference masks
        write_result_package(real_ct_processed, tmp_path, ViewerProfile())

The tests must not change the files or arrays (copy them first); a test of the run itself runs its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomnode.outputs.api import ProcessedSeries
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


@pytest.fixture(scope="session")
def real_ct_processed() -> ProcessedSeries:
    """:func:`tests.unit.test_outputs.make_processed`: the shared CT with its reference liver and spleen."""
    from tests.unit.test_outputs import make_processed

    return make_processed()
