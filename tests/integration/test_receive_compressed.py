"""Compressed transfer syntaxes are accepted and stored exactly as received (never decoded/re-encoded)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.factories import JPEG2000_DIR, ct_series, dataset_hash, jpeg2000_series
from tests.fixtures_node import storescu
from tests.support import shared_data

pytestmark = pytest.mark.integration

RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _stored(node, path: Path) -> Path:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return node.spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def test_rle_and_jpeg2000_are_stored_as_received(dicomnode_node, tmp_path: Path) -> None:
    rle = ct_series(tmp_path / "rle", slices=3, rows=64, cols=64, compressed="rle", seed="rle")
    j2k = jpeg2000_series(tmp_path / "j2k", count=3)
    node = dicomnode_node()
    for files, option in ((rle, "-xr"), (j2k, "-xv")):  # propose RLE / JPEG 2000 lossless (+ uncompressed)
        result = storescu(node, *files, extra=[option])
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("(Success)") == 3
        assert "Converting transfer syntax: RLE Lossless -> Little" not in result.stderr
    for path, ts in [(p, RLE) for p in rle] + [(p, J2K_LOSSLESS) for p in j2k]:
        stored = _stored(node, path)
        assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        assert dataset_hash(stored) == dataset_hash(path)
    rows = node.query("SELECT DISTINCT transfer_syntax FROM spool_instances ORDER BY 1")
    assert [r["transfer_syntax"] for r in rows] == [J2K_LOSSLESS, RLE]


def test_jpeg2000_files_with_empty_study_uid_are_refused_clearly(
    dicomnode_node, tmp_path: Path, monkeypatch
) -> None:
    """shared/data JPEG 2000 slices have empty Study/Series/SOP UIDs (only the file meta has the SOP UIDs).

    dcmtk's storescu refuses to send them (no SOP Class in the dataset); pynetdicom sends them as-is,
    taking the SOP Class/Instance UIDs from the file meta, like many real senders.
    """
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    source = sorted(shared_data(*JPEG2000_DIR).iterdir())[:2]
    node = dicomnode_node()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, J2K_LOSSLESS)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(p) for p in source]
    finally:
        assoc.release()
    assert [int(s.Status) for s in statuses] == [0xA900, 0xA900]
    assert "Study Instance UID is empty" in str(statuses[0].ErrorComment)
    assert "The Study Instance UID is empty" in node.log_text()
    assert node.query("SELECT * FROM spool_instances") == []
    good = jpeg2000_series(tmp_path / "fixed", count=1)
    assert storescu(node, *good, extra=["-xv"]).returncode == 0
    assert len(node.query("SELECT * FROM spool_instances")) == 1
