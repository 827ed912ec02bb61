"""What a query source answers, independent of how it is asked (C-FIND or QIDO-RS).

:func:`source_for` picks the implementation from a configured destination: a DIMSE destination is queried
with C-FIND and retrieved from with C-MOVE or C-GET (:mod:`dicomnode.query.dimse`), a DICOMweb one with
QIDO-RS and WADO-RS (:mod:`dicomnode.query.qido`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydicom import Dataset

from dicomnode.config import Config
from dicomnode.errors import DicomNodeError


class QueryError(DicomNodeError):
    """A query or retrieval could not be made or was refused by the source."""


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    study_date: str  # YYYYMMDD ("" when the source does not say)
    patient_id: str
    issuer: str  # IssuerOfPatientID ("" when none)
    modalities: tuple[str, ...]
    description: str = ""
    accession: str = ""


@dataclass(frozen=True)
class SeriesMatch:
    study_uid: str
    series_uid: str
    modality: str
    description: str = ""
    body_part: str = ""
    number: int | None = None
    instances: int | None = None


def text(ds: Dataset | dict, keyword: str) -> str:
    """A single string value of ``keyword`` from a pydicom data set (C-FIND) or a DICOM JSON dict (QIDO)."""
    if isinstance(ds, Dataset):
        value = ds.get(keyword, "")
        if isinstance(value, Sequence) and not isinstance(value, str):
            return "\\".join(str(v) for v in value)
        return str(value or "")
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    entry = ds.get(f"{tag:08X}") if tag is not None else None
    values = (entry or {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", ""))
    return "\\".join(str(v) for v in values)


def study_match(ds: Dataset | dict) -> StudyMatch:
    modalities = tuple(m for m in text(ds, "ModalitiesInStudy").split("\\") if m)
    return StudyMatch(text(ds, "StudyInstanceUID"), text(ds, "StudyDate"), text(ds, "PatientID"),
                      text(ds, "IssuerOfPatientID"), modalities, text(ds, "StudyDescription"),
                      text(ds, "AccessionNumber"))


def series_match(study_uid: str, ds: Dataset | dict) -> SeriesMatch:
    number = text(ds, "SeriesNumber")
    count = text(ds, "NumberOfSeriesRelatedInstances")
    return SeriesMatch(study_uid, text(ds, "SeriesInstanceUID"), text(ds, "Modality"),
                       text(ds, "SeriesDescription"), text(ds, "BodyPartExamined"),
                       int(number) if number.lstrip("-").isdigit() else None,
                       int(count) if count.isdigit() else None)


class StudySource(Protocol):
    """A place to look for a patient's studies (and to fetch their series from)."""

    name: str

    def find_studies(self, patient_id: str, *, issuer: str = "", before: str = "",
                     modality: str = "") -> list[StudyMatch]:
        """The patient's studies (same IssuerOfPatientID when ``issuer`` is given), dated before
        ``before`` (YYYYMMDD, exclusive) when given, with ``modality`` among their modalities when given;
        newest first."""
        ...

    def find_series(self, study_uid: str) -> list[SeriesMatch]: ...

    def retrieve_series(self, series: SeriesMatch, folder: Path) -> list[Path]:
        """Fetch the series' instances into ``folder`` (C-GET / WADO-RS); C-MOVE sources deliver them to
        the node's own listener instead and return []."""
        ...


def keep(matches: Sequence[StudyMatch], *, patient_id: str, issuer: str, before: str,
         modality: str) -> list[StudyMatch]:
    """The matches a source must return, whatever its own matching did (sources differ: some ignore
    IssuerOfPatientID or a date range), newest first."""
    kept = [m for m in matches
            if m.patient_id == patient_id
            and (not issuer or not m.issuer or m.issuer == issuer)
            and (not before or (m.study_date and m.study_date < before))
            and (not modality or not m.modalities or modality in m.modalities)]
    return sorted(kept, key=lambda m: (m.study_date, m.study_uid), reverse=True)


def source_for(config: Config, name: str, *, method: Literal["c-move", "c-get"] = "c-get") -> StudySource:
    """The query source behind destination ``name``: QIDO-RS for a DICOMweb one, C-FIND otherwise."""
    destination = config.destination(name)
    if destination.is_dicomweb:
        from dicomnode.query.qido import QidoSource

        return QidoSource(name, destination)
    from dicomnode.query.dimse import DimseSource

    return DimseSource(name, destination, config.node.ae_title, method=method)
