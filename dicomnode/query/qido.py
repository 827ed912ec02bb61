"""Query/retrieve over DICOMweb: QIDO-RS searches (studies of a patient, series of a study) and WADO-RS
retrieval of a series into a folder, with the same client set-up (TLS, credentials) as STOW-RS destinations.
"""

from __future__ import annotations

import logging
from pathlib import Path

import requests

from dicomnode.config import DestinationConfig
from dicomnode.errors import SendError
from dicomnode.query.source import QueryError, SeriesMatch, StudyMatch, keep, series_match, study_match
from dicomnode.send.dicomweb import make_client

log = logging.getLogger(__name__)

STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "PatientID", "IssuerOfPatientID", "ModalitiesInStudy",
                "StudyDescription", "AccessionNumber")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
                 "NumberOfSeriesRelatedInstances")


class QidoSource:
    """A DICOMweb service queried with QIDO-RS and retrieved from with WADO-RS."""

    def __init__(self, name: str, config: DestinationConfig) -> None:
        if config.dicomweb is None:
            raise QueryError(f"Destination '{name}' is not a DICOMweb destination (no 'dicomweb' section).")
        self.name = name
        self.config = config
        self.web = config.dicomweb

    def _call(self, what: str, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            client = make_client(self.web, self.config.timeout)
            return fn(client)(*args, **kwargs)
        except SendError as exc:
            raise QueryError(f"Cannot query '{self.name}': {exc}") from exc
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise QueryError(f"'{self.name}' ({self.web.url}) refused the {what}: HTTP {status}.") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise QueryError(f"'{self.name}' ({self.web.url}) did not answer the {what} "
                             f"({type(exc).__name__}); is the service down?") from exc

    def find_studies(self, patient_id: str, *, issuer: str = "", before: str = "",
                     modality: str = "") -> list[StudyMatch]:
        filters: dict[str, str] = {"PatientID": patient_id}
        if before:
            filters["StudyDate"] = f"-{before}"
        if issuer:
            filters["IssuerOfPatientID"] = issuer
        found = self._call("QIDO-RS study search", lambda c: c.search_for_studies,
                           search_filters=filters, fields=list(STUDY_FIELDS), get_remaining=True)
        matches = [study_match(item) for item in found]
        return keep(matches, patient_id=patient_id, issuer=issuer, before=before, modality=modality)

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        found = self._call("QIDO-RS series search", lambda c: c.search_for_series,
                           study_instance_uid=study_uid, fields=list(SERIES_FIELDS), get_remaining=True)
        return [series_match(study_uid, item) for item in found]

    def retrieve_series(self, series: SeriesMatch, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        datasets = self._call("WADO-RS series retrieval", lambda c: c.iter_series,
                              series.study_uid, series.series_uid)
        try:
            for ds in datasets:
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path, enforce_file_format=True)
                written.append(path)
        except (requests.RequestException, ValueError) as exc:
            raise QueryError(f"WADO-RS retrieval of series '{series.series_uid}' from '{self.name}' broke "
                             f"off after {len(written)} instance(s): {type(exc).__name__}.") from exc
        log.info("Retrieved %d instance(s) of series %s from %s by WADO-RS.", len(written), series.series_uid,
                 self.name)
        return written
