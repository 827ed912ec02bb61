"""Query/retrieve over DIMSE (pynetdicom SCU): C-FIND at study and series level (Study Root), retrieval by
C-GET (the instances come back on the same association and are written to a folder) or C-MOVE (the source
sends them to the node's own AE, i.e. its listener, which spools them like any C-STORE; the source must
know the node's AE title, host and port).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomnode.config import DestinationConfig
from dicomnode.errors import SendError
from dicomnode.query.source import QueryError, SeriesMatch, StudyMatch, keep, series_match, study_match
from dicomnode.send.destination import DicomDestination

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_GET_CONTEXTS = 127  # one context is the C-GET model itself


class DimseSource:
    """A PACS queried with C-FIND, retrieved from with C-GET or C-MOVE."""

    def __init__(self, name: str, config: DestinationConfig, calling_ae_title: str, *,
                 method: Literal["c-move", "c-get"] = "c-get") -> None:
        self.name = name
        self.method = method
        self.calling_ae_title = config.calling_ae_title or calling_ae_title
        self._peer = DicomDestination(name, config, calling_ae_title)

    # -- C-FIND -------------------------------------------------------------------------------------
    def _find(self, identifier: Dataset) -> list[Dataset]:
        context = build_context(StudyRootQueryRetrieveInformationModelFind, UNCOMPRESSED)
        try:
            assoc = self._peer.open_association([context])
        except SendError as exc:
            raise QueryError(f"Cannot query '{self.name}': {exc}") from exc
        answers: list[Dataset] = []
        try:
            for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                code = int(status.Status) if status is not None and "Status" in status else None
                if code in PENDING and found is not None:
                    answers.append(found)
                elif code is None:
                    raise QueryError(f"'{self.name}' ({self._peer.address}) did not answer the C-FIND "
                                     f"({identifier.QueryRetrieveLevel} level) in time.")
                elif code != 0x0000:
                    raise QueryError(f"'{self.name}' ({self._peer.address}) refused the C-FIND "
                                     f"({identifier.QueryRetrieveLevel} level) with status 0x{code:04X}.")
        finally:
            if assoc.is_established:
                assoc.release()
        return answers

    def find_studies(self, patient_id: str, *, issuer: str = "", before: str = "",
                     modality: str = "") -> list[StudyMatch]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id
        query.IssuerOfPatientID = issuer
        query.StudyDate = f"-{before}" if before else ""  # inclusive range; the exact day is dropped below
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = ""
        query.StudyDescription = ""
        query.AccessionNumber = ""
        matches = [study_match(ds) for ds in self._find(query)]
        return keep(matches, patient_id=patient_id, issuer=issuer, before=before, modality=modality)

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        query.SeriesDescription = ""
        query.BodyPartExamined = ""
        query.SeriesNumber = ""
        query.NumberOfSeriesRelatedInstances = ""
        return [series_match(study_uid, ds) for ds in self._find(query)]

    # -- retrieval ----------------------------------------------------------------------------------
    def retrieve_series(self, series: SeriesMatch, folder: Path) -> list[Path]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = series.study_uid
        identifier.SeriesInstanceUID = series.series_uid
        if self.method == "c-move":
            self._move(identifier)
            return []
        return self._get(identifier, Path(folder))

    def _move(self, identifier: Dataset) -> None:
        context = build_context(StudyRootQueryRetrieveInformationModelMove, UNCOMPRESSED)
        try:
            assoc = self._peer.open_association([context])
        except SendError as exc:
            raise QueryError(f"Cannot retrieve from '{self.name}': {exc}") from exc
        try:
            for status, _ in assoc.send_c_move(identifier, self.calling_ae_title,
                                               StudyRootQueryRetrieveInformationModelMove):
                self._check_retrieve(status, "C-MOVE", identifier)
        finally:
            if assoc.is_established:
                assoc.release()

    def _get(self, identifier: Dataset, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
            return 0x0000

        storage = [c.abstract_syntax for c in StoragePresentationContexts][:MAX_GET_CONTEXTS]
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet, UNCOMPRESSED),
                    *(build_context(uid, UNCOMPRESSED) for uid in storage)]
        roles = [build_role(uid, scp_role=True) for uid in storage]
        try:
            assoc = self._peer.open_association(contexts, ext_neg=roles,
                                                evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except SendError as exc:
            raise QueryError(f"Cannot retrieve from '{self.name}': {exc}") from exc
        try:
            for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
                self._check_retrieve(status, "C-GET", identifier)
        finally:
            if assoc.is_established:
                assoc.release()
        log.info("Retrieved %d instance(s) of series %s from %s by C-GET.", len(written),
                 identifier.SeriesInstanceUID, self.name)
        return written

    def _check_retrieve(self, status: Dataset | None, what: str, identifier: Dataset) -> None:
        code = int(status.Status) if status is not None and "Status" in status else None
        if code is None:
            raise QueryError(f"'{self.name}' did not answer the {what} of series "
                             f"'{identifier.SeriesInstanceUID}' in time.")
        if code in PENDING or code == 0x0000:
            return
        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        raise QueryError(f"'{self.name}' ({self._peer.address}) answered the {what} of series "
                         f"'{identifier.SeriesInstanceUID}' with status 0x{code:04X}"
                         f"{f' ({failed} instance(s) failed)' if failed else ''}.")
