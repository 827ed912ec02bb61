"""De-identification per destination: what arrives at a ``deidentify: true`` destination (dcmtk storescp)
carries none of the basic profile's attributes, consistent pseudonyms per study, and burned-in
annotation images never leave the node."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicomnode.config import DestinationConfig, OutboxConfig
from dicomnode.database import Database
from dicomnode.errors import SendError
from dicomnode.send.confidentiality import BASIC_PROFILE
from dicomnode.send.deidentify import Deidentifier, pseudonymous_uid
from dicomnode.send.destination import DicomDestination
from dicomnode.send.outbox import Outbox
from dicomnode.send.sender import Sender
from tests.support import shared_data

pytestmark = pytest.mark.integration
SECRET = "test-secret-not-for-production"
PHI_TEXT = "PHI-Doe"
_VALUES = {"PN": "Doe^PHI", "DA": "20240102", "TM": "101010", "DT": "20240102101010", "AS": "045Y",
           "CS": "PHIDOE", "IS": "7", "DS": "7.5", "US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 7.0, "FD": 7.0}


def _fill_phi(ds: Dataset) -> dict[str, object]:
    """Give every attribute of the profile an identifying value; returns keyword → original value."""
    originals: dict[str, object] = {}
    for keyword in BASIC_PROFILE:
        tag = tag_for_keyword(keyword)
        vr = dictionary_VR(tag)
        if tag is None or (tag >> 16) in (0x0002, 0xFFFA, 0xFFFC) or vr in ("OB", "OW", "UN", "AT", "OF") \
                or " or " in vr or keyword in ds:
            continue
        if vr == "SQ":
            item = Dataset()
            item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            item.ReferencedSOPInstanceUID = generate_uid()
            item.PersonName = "Doe^Inside"
            value: object = Sequence([item])
        elif vr == "UI":
            value = generate_uid()
        else:
            value = _VALUES.get(vr, f"{PHI_TEXT} {keyword}"[:16] if vr in ("SH", "AE") else f"{PHI_TEXT} x")
        setattr(ds, keyword, value)
        originals[keyword] = value
    ds.add_new(0x00291010, "LO", "private PHI")
    ds.add_new(0x00290010, "LO", "ACME PRIVATE")
    ds.BurnedInAnnotation = "NO"
    return originals


def _strings(ds: Dataset) -> list[str]:
    out: list[str] = []
    for elem in ds.iterall():
        if elem.VR not in ("OB", "OW", "SQ", "UN") and elem.value is not None:
            out.append(str(elem.value))
    return out


def test_deidentified_copies_carry_no_phi_and_consistent_pseudonyms(storescp, tmp_path: Path) -> None:  # noqa: ANN001
    sources = sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:3]
    originals: dict[str, object] = {}
    files = []
    for i, src in enumerate(sources):
        ds = dcmread(src)
        originals = _fill_phi(ds)
        files.append(tmp_path / f"phi{i}.dcm")
        ds.save_as(files[-1])
    burned = dcmread(sources[0])
    burned.SOPInstanceUID = burned.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "burned.dcm")

    scp = storescp()
    cfg = DestinationConfig(ae_title=scp.aet, host="127.0.0.1", port=scp.port, deidentify=True, timeout=10)
    dest = DicomDestination("research", cfg, "DICOMNODE", deidentifier=Deidentifier(SECRET))
    outbox = Outbox(Database(tmp_path / "db.sqlite3"), OutboxConfig())
    ids = outbox.enqueue("research", [*files, tmp_path / "burned.dcm"], "forward")
    Sender(outbox, {"research": dest}).process_due()

    assert [outbox.get(i).state for i in ids] == ["sent", "sent", "sent", "dead"]
    assert "BurnedInAnnotation 'YES'" in outbox.get(ids[3]).last_error
    received = [dcmread(p) for p in scp.files()]
    assert len(received) == 3

    src0 = dcmread(sources[0], stop_before_pixels=True)
    for ds in received:
        for keyword, action in BASIC_PROFILE.items():
            if keyword not in originals and keyword not in src0:
                continue
            original = originals.get(keyword, src0.get(keyword))
            if action == "X":
                assert keyword not in ds, keyword
            elif action == "Z":
                assert keyword in ds and not ds[keyword].value, keyword
            elif ds[keyword].VR != "SQ":
                assert str(ds[keyword].value) != str(original), keyword
        text = " ".join(_strings(ds))
        assert "Doe" not in text and PHI_TEXT not in text and "TotalSegmentator" not in text
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.StudyInstanceUID == pseudonymous_uid(SECRET.encode(), src0.StudyInstanceUID)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # one study, one series, one frame of reference, one patient pseudonym; every SOP UID new and unique
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID",
                    "PatientName"):
        assert len({str(ds.get(keyword)) for ds in received}) == 1, keyword
    assert len({ds.SOPInstanceUID for ds in received}) == 3
    assert received[0].PatientID.startswith("ANON") and received[0].PatientID != src0.PatientID
    assert all(ds.pixel_array.shape == (512, 512) for ds in received[:1])


def test_deidentify_without_secret_is_a_clear_error() -> None:
    cfg = DestinationConfig(ae_title="X", host="127.0.0.1", port=104, deidentify=True)
    with pytest.raises(SendError, match="deidentification_secret"):
        DicomDestination("research", cfg, "DICOMNODE")
