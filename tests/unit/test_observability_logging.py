"""Structured logs: JSON off a terminal, text on one, identifiers on every line, PHI redacted."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.config import LoggingConfig
from dicomnode.observability.logging import REDACTED, configure_logging, log_context, phi_values


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_json_lines_carry_context_from_contextvars_and_extra(restore_root: None) -> None:
    stream = io.StringIO()  # not a terminal → JSON
    configure_logging(LoggingConfig(level="INFO"), stream)
    log = logging.getLogger("dicomnode.receive.test")
    with log_context(association="a7", calling_aet="CT1"), \
            log_context(study_uid="1.2.3", series_uid="1.2.3.4"):
        log.info("Stored %d instances", 3, extra={"job_id": "job-9"})
    log.info("outside")
    log.debug("hidden at INFO")
    first, second = _lines(stream)
    assert first["message"] == "Stored 3 instances" and first["level"] == "INFO"
    assert first["logger"] == "dicomnode.receive.test"
    assert (first["association"], first["calling_aet"], first["study_uid"], first["series_uid"],
            first["job_id"]) == ("a7", "CT1", "1.2.3", "1.2.3.4", "job-9")
    assert first["time"].endswith("+00:00")
    assert second["message"] == "outside" and "study_uid" not in second
    assert len(stream.getvalue().splitlines()) == 2


def test_context_is_per_thread(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream)
    log = logging.getLogger("dicomnode.test")

    def work(uid: str) -> None:
        with log_context(study_uid=uid):
            log.info("work")

    threads = [threading.Thread(target=work, args=(f"1.2.{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(line["study_uid"] for line in _lines(stream)) == ["1.2.0", "1.2.1", "1.2.2", "1.2.3"]


def test_text_on_a_terminal(restore_root: None) -> None:
    stream = _Tty()
    configure_logging(LoggingConfig(format="auto"), stream)
    with log_context(study_uid="1.2.3", job_id="j1"):
        logging.getLogger("dicomnode.x").warning("careful")
    line = stream.getvalue().strip()
    assert not line.startswith("{")
    assert "WARNING" in line and "dicomnode.x: careful" in line and line.endswith("[study=1.2.3 job=j1]")


def _patient() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-448812"
    ds.PatientBirthDate = "19610412"
    ds.StudyInstanceUID = "1.2.840.1"
    return ds


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_phi_never_reaches_the_log(restore_root: None, fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format=fmt), stream)
    log = logging.getLogger("dicomnode.receive")
    ds = _patient()
    with phi_values(ds.PatientName, ds.PatientID, ds.PatientBirthDate):
        log.info("Received %s for %s (%s)", ds.StudyInstanceUID, ds.PatientName, ds.PatientID)
        log.info("Patient Jane Doe? no: Doe Jane, born 19610412")
        try:
            raise ValueError(f"bad header for {ds.PatientName}")
        except ValueError:
            log.exception("store failed")
    log.info("PatientName=Smith^Ann PatientID: 99812 'PatientBirthDate': '19700101'")
    log.info("dump:\n%s", ds)  # pydicom's element dump
    log.info("element", extra={"patient_id": "77123", "PatientName": "Roe^Rich"})
    out = stream.getvalue()
    for phi in ("Doe^Jane", "Doe Jane", "MRN-448812", "19610412", "Smith^Ann", "99812", "19700101",
                "77123", "Roe^Rich"):
        assert phi not in out, f"{phi!r} leaked into the log:\n{out}"
    assert out.count(REDACTED) >= 10
    assert "1.2.840.1" in out and "store failed" in out and "ValueError" in out


def test_phi_shown_when_explicitly_enabled(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json", include_phi=True), stream)
    logging.getLogger("dicomnode.receive").info("PatientName=%s", "Doe^Jane")
    assert _lines(stream)[0]["message"] == "PatientName=Doe^Jane"


def test_dcmdump_style_redaction(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream)
    logging.getLogger("dicomnode.x").info("(0010,0010) PN [Doe^Jane]  #   8, 1 PatientName")
    assert "Doe^Jane" not in stream.getvalue()


def test_reconfiguring_replaces_our_handler_only(restore_root: None) -> None:
    foreign = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingConfig(format="json"), first)
    configure_logging(LoggingConfig(format="json", level="DEBUG"), second)
    logging.getLogger("dicomnode.x").debug("once")
    assert first.getvalue() == "" and "once" in second.getvalue()
    assert foreign in logging.getLogger().handlers
    logging.getLogger().removeHandler(foreign)


def test_a_stage_line_quoting_the_patient_is_redacted_and_observers_hear_the_outcome(
    restore_root: None, tmp_path
) -> None:
    """A modality that puts the patient ID into a UID field: the ingest refuses the instance and logs the
    bad value, which is the patient's ID; the line keeps the identifiers but not the PHI."""
    from dicomnode.assemble import Assembler
    from dicomnode.config import CompletionConfig
    from dicomnode.database import Database
    from dicomnode.receive import Ingest
    from dicomnode.spool import Spool, SpoolIndex
    from tests.factories import ct_series, dataset_offset

    source = ct_series(tmp_path / "src", slices=1, rows=16, cols=16, seed="phi")[0]
    ds = pydicom.dcmread(source)
    ds.PatientName, ds.PatientID, ds.SeriesInstanceUID = "Doe^Jane", "MRN-448812", "MRN-448812"
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    raw = (tmp_path / "bad.dcm").read_bytes()
    spool, database = Spool(tmp_path / "spool"), Database(tmp_path / "db.sqlite3")
    index = SpoolIndex(database, spool.root)
    ingest = Ingest(spool, index, Assembler(database, index, CompletionConfig(), lambda e: None))
    failed: list[str] = []
    ingest.on_failed.append(failed.append)
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream)
    result = ingest.store(raw[dataset_offset(raw):], transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                          sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                          calling_aet="CT1")
    assert result.status == 0xA900 and failed == ["0xA900"]
    (line,) = [entry for entry in _lines(stream) if entry["logger"] == "dicomnode.receive.ingest"]
    assert "MRN-448812" not in json.dumps(line) and REDACTED in line["message"]
    assert line["calling_aet"] == "CT1" and line["sop_uid"] == str(ds.SOPInstanceUID)
    logging.getLogger("dicomnode.receive").warning("after the store: %s", "MRN-448812")  # block ended
    assert _lines(stream)[-1]["message"] == "after the store: MRN-448812"
    database.close()
