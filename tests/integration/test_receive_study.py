"""A multi-series CT study sent with dcmtk's storescu arrives byte-identical, indexed and listed by status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import ct_study, dataset_hash
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration


def test_multi_series_study_arrives_byte_identical(dicomnode_node, tmp_path: Path) -> None:
    from tests.fixtures_node import storescu

    study = ct_study(tmp_path / "study", series=2, slices=4)  # 512×512 int16, as a scanner sends
    node = dicomnode_node()
    result = storescu(node, tmp_path / "study")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(study.files)

    for original in study.files:
        import pydicom

        ds = pydicom.dcmread(original, stop_before_pixels=True)
        received = node.spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert received.is_file(), f"{received} missing"
        assert dataset_hash(received) == dataset_hash(original)
        meta = pydicom.dcmread(received, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "STORESCU"

    rows = node.query("SELECT series_uid, calling_aet, size, path FROM spool_instances")
    assert len(rows) == len(study.files)
    assert {r["series_uid"] for r in rows} == set(study.series_uids)
    assert all(r["calling_aet"] == "STORESCU" for r in rows)
    assert all((node.spool / r["path"]).stat().st_size == r["size"] for r in rows)
    assert not list((node.spool / ".tmp").iterdir())

    status = subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--config", str(node.config_path), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)["studies"]
    assert [s["study_uid"] for s in listed] == [study.study_uid]
    assert sorted((s["series_uid"], s["instances"]) for s in listed[0]["series"]) == sorted(
        (uid, 4) for uid in study.series_uids
    )
    assert node.stop() == 0
