"""The comparison of a processed series with the patient's most recent comparable earlier study.

A job whose rule is listed in ``priors.rules`` carries a :class:`PriorRequest` (``JobSpec.prior``). After its
own series is processed, :func:`compare_with_prior`:

1. asks the source (``priors.source``, a destination: C-FIND or QIDO-RS) for the patient's studies —
   same PatientID, and IssuerOfPatientID when the series has one — dated before this one and not older than
   ``max_age_days``, with the series' modality, newest first;
2. in each (newest first) takes the series of the same modality (the same series description first, then
   the largest) and retrieves it (C-GET or WADO-RS into the job folder, or C-MOVE to the node's own AE and
   then read from its spool);
3. refuses a prior the pipeline would not accept (another body region, MR labelled CT, ...: the pipeline's
   input guard, with the reason recorded) and tries the next;
4. measures the prior the same way: when the node's SEG for the same pipeline is already in the prior study
   its segments are read back (the prior is not processed again); otherwise the prior runs through the same
   pipeline and version, and its result objects go to the destinations too (they carry the prior's study);
5. registers the prior onto the current series, matches findings (:mod:`dicomnode.compare.findings`) and
   returns the ``comparison`` block of ``result.json``.

Nothing here may hold the current result back longer than ``wait_seconds``: a source that does not answer,
or a comparison that runs out of time, gives ``{"status": "unavailable", "reason": ...}`` and the current
result is sent without it (the processing stage schedules a new attempt).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.compare.findings import Finding, Match, match_findings, measure
from dicomnode.config import DestinationConfig
from dicomnode.errors import DicomNodeError
from dicomnode.query.source import QueryError, SeriesMatch, StudyMatch, StudySource

log = logging.getLogger(__name__)

MAX_STUDIES_TRIED = 3
MAX_SERIES_TRIED = 2
REGISTRATION_MM = 2.0  # grid on which prior and current are registered for lesion matching
#: metric samples on the finest level of that registration: six rigid parameters need no more (the real CT
#: moved 8 mm and 3 degrees comes back within 0.7 mm, as with register()'s cap of 200 000, in 1/7 the time)
REGISTRATION_SAMPLES = 25_000
NOT_IMAGES = {"SEG", "SR", "KO", "PR", "RTSTRUCT", "DOC", "OT"}


@dataclass(frozen=True)
class PriorRequest:
    """What a job needs to compare with a prior (JSON in ``JobSpec.prior``)."""

    source_name: str
    source: dict[str, Any]  # the DestinationConfig of the source, as JSON
    method: str = "c-get"  # c-get | c-move
    max_age_days: int = 1825
    wait_seconds: float = 300.0
    node_ae: str = "DICOMNODE"
    spool_dir: str = ""  # where a C-MOVE'd prior arrives (the node's spool)
    count: int = 1  # studies charted: the most recent comparable one is compared, older ones are history
    database_path: str = ""  # the node database: a C-MOVE is recorded there, so the router does not route it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PriorRequest:
        return cls(**data)

    def open_source(self) -> StudySource:
        config = DestinationConfig.model_validate(self.source)
        if config.is_dicomweb:
            from dicomnode.query.qido import QidoSource

            return QidoSource(self.source_name, config)
        from dicomnode.query.dimse import DimseSource

        return DimseSource(self.source_name, config, self.node_ae, method=self.method)  # type: ignore[arg-type]


class OutOfTime(DicomNodeError):
    """The comparison did not finish within ``priors.wait_seconds``."""


def _text(ds: Any, keyword: str) -> str:  # noqa: ANN401 - pydicom Dataset
    return str(ds.get(keyword, "") or "").strip()


def _age_days(prior_date: str, current_date: str) -> int | None:
    try:
        return (dt.date.fromisoformat(f"{current_date[:4]}-{current_date[4:6]}-{current_date[6:8]}")
                - dt.date.fromisoformat(f"{prior_date[:4]}-{prior_date[4:6]}-{prior_date[6:8]}")).days
    except ValueError:
        return None


def candidate_series(series: list[SeriesMatch], modality: str, description: str) -> list[SeriesMatch]:
    """Image series of ``modality``: the same description first, then the largest."""
    images = [s for s in series if s.modality == modality and s.modality not in NOT_IMAGES]
    return sorted(images, key=lambda s: (s.description.strip().lower() != description.strip().lower(),
                                         -(s.instances or 0)))


def _findings(segments: Any, image: np.ndarray | None, volume: Any) -> list[Finding]:  # noqa: ANN401
    grid = volume.to_sitk(np.zeros(volume.shape, np.uint8))  # the volume's geometry

    def to_patient(k: float, j: float, i: float) -> tuple[float, float, float]:
        return grid.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))

    return [measure(s.label, s.category, s.mask, image, volume.spacing, to_patient) for s in segments]


def _coarse(image: Any, mm: float = REGISTRATION_MM) -> Any:  # noqa: ANN401 - SimpleITK image
    """``image`` averaged down to about ``mm`` per voxel (no axis is made coarser than that)."""
    import SimpleITK as sitk

    factors = [max(1, int(mm // spacing)) for spacing in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _carry(prior_findings: list[Finding], prior: Any, current: Any) -> dict[str, tuple[float, float, float]]:  # noqa: ANN401
    """Prior lesion centroids in the current patient coordinates, after rigid registration."""
    from dicomnode.imaging.preprocess import register

    lesions = [f for f in prior_findings if f.category == "lesion"]
    if not lesions:
        return {}
    fixed, moving = _coarse(current.to_sitk()), _coarse(prior.to_sitk())
    sampling = min(0.2, REGISTRATION_SAMPLES / float(np.prod(fixed.GetSize())))
    try:  # on ~2 mm grids: lesions match within ≥ 10 mm, and full-resolution pyramids cost GBs and minutes
        result = register(fixed, moving, transform="rigid", levels=3, iterations=100, sampling=sampling)
    except DicomNodeError as exc:
        log.warning("Prior and current series could not be registered (%s); lesions are matched by their "
                    "patient coordinates as they are.", exc)
        return {}
    inverse = result.transform.GetInverse()  # the transform maps current points into the prior
    return {f.label: tuple(inverse.TransformPoint(f.centroid)) for f in lesions}


def _change(prior: float | None, current: float | None, digits: int) -> dict[str, Any]:
    out: dict[str, Any] = {"prior": None if prior is None else round(prior, digits),
                           "current": None if current is None else round(current, digits)}
    if prior is not None and current is not None:
        out["change"] = round(current - prior, digits)
        out["change_percent"] = round(100.0 * (current - prior) / prior, 1) if prior else None
    return out


def report(matches: list[Match], units: str, prior_tracking: dict[str, str] | None = None,
           carried: dict[str, tuple[float, float, float]] | None = None) -> dict[str, Any]:
    """The ``findings`` of the comparison block: per finding prior/current values and their change; a finding
    matched to a prior one gets the prior's ``tracking_uid`` (from the prior's SEG), a gone lesion where it
    lies now (``position_mm``: its prior centroid carried into the current patient coordinates)."""
    findings: dict[str, Any] = {}
    for m in matches:
        entry: dict[str, Any] = {"status": m.status}
        pv, cv = m.prior, m.current
        entry["volume_ml"] = _change(pv.volume_ml if pv else None, cv.volume_ml if cv else None, 2)
        mean_key = f"mean_{units.lower() or 'value'}"
        entry[mean_key] = _change(pv.mean if pv else None, cv.mean if cv else None, 1)
        if (pv or cv) and (pv or cv).category == "lesion":  # type: ignore[union-attr]
            entry["longest_diameter_mm"] = _change(pv.longest_diameter_mm if pv else None,
                                                   cv.longest_diameter_mm if cv else None, 1)
        if pv is not None:
            entry["prior_label"] = pv.label
            if (prior_tracking or {}).get(pv.label):
                entry["tracking_uid"] = prior_tracking[pv.label]  # type: ignore[index]
            if cv is None:
                entry["position_mm"] = [round(v, 1) for v in (carried or {}).get(pv.label, pv.centroid)]
        findings[m.label] = entry
    return findings


def seg_tracking(files: list[Path]) -> dict[str, str]:
    """Segment label → TrackingUID of a SEG file (empty when there is none)."""
    from pydicom import dcmread

    found: dict[str, str] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        for item in ds.get("SegmentSequence", []):
            if item.get("TrackingUID"):
                found[str(item.SegmentLabel)] = str(item.TrackingUID)
    return found


@dataclass(frozen=True)
class PriorOutcome:
    """What a comparison gives the job: the ``comparison`` block of result.json, the prior's result objects
    to send (when the prior was processed now) and the prior's image headers for the SR's evidence."""

    block: dict[str, Any]
    files: list[Path]
    evidence: tuple[Any, ...] = ()


class Comparison:
    """One comparison run inside a job (see the module docstring)."""

    def __init__(self, request: PriorRequest, pipeline: Any, job: Any, output_dir: Path,  # noqa: ANN401
                 source: StudySource | None = None, clock: Any = time.monotonic) -> None:  # noqa: ANN401
        self.request = request
        self.pipeline = pipeline
        self.job = job
        self.output_dir = Path(output_dir)
        self.source = source or request.open_source()
        self.clock = clock
        self.deadline = clock() + request.wait_seconds
        self.skipped: list[str] = []
        self.prior_files: list[Path] = []
        self.prior_evidence: tuple[Any, ...] = ()  # the prior's image headers (the SR references them)
        self.prior_tracking: dict[str, str] = {}  # prior segment label → tracking UID in the prior's SEG
        self.current_findings: list[Finding] = []

    def _check_time(self, doing: str) -> None:
        if self.clock() > self.deadline:
            raise OutOfTime(f"The comparison ran out of time ({self.request.wait_seconds:g} s, "
                            f"priors.wait_seconds) while {doing}.")

    def run(self, volume: Any, processed: Any) -> dict[str, Any]:  # noqa: ANN401
        """The comparison block for ``processed`` (the current series' result)."""
        first = volume.datasets[0] if volume.datasets else None
        patient_id = _text(first, "PatientID") if first is not None else ""
        if not patient_id:
            return {"status": "no_prior",
                    "reason": "The series has no PatientID to look for earlier studies."}
        issuer = _text(first, "IssuerOfPatientID")
        study_date = _text(first, "StudyDate")
        study_uid = _text(first, "StudyInstanceUID")
        modality = volume.modality or _text(first, "Modality")
        try:
            studies = self.source.find_studies(patient_id, issuer=issuer, before=study_date,
                                               modality=modality)
            studies = [s for s in studies if s.study_uid != study_uid and self._recent(s, study_date)]
            if not studies:
                return {"status": "no_prior", "reason": f"No earlier {modality} study of this patient within "
                                                        f"{self.request.max_age_days} days at "
                                                        f"'{self.request.source_name}'."}
            description = _text(first, "SeriesDescription")
            for n, study in enumerate(studies[:MAX_STUDIES_TRIED]):
                self._check_time(f"looking at study {study.study_uid}")
                found = self._compare_study(study, volume, processed, modality, description)
                if found is not None:
                    if self.request.count > 1:
                        found["history"] = self._history(studies[n + 1:], volume, modality, description)
                    return found
        except (QueryError, OutOfTime) as exc:
            log.warning("Comparison of job %s unavailable: %s", self.job.job_id, exc)
            return {"status": "unavailable", "reason": str(exc), "skipped": self.skipped}
        return {"status": "no_prior", "reason": "No earlier study had a series this pipeline accepts.",
                "skipped": self.skipped}

    def _recent(self, study: StudyMatch, current_date: str) -> bool:
        age = _age_days(study.study_date, current_date) if study.study_date and current_date else None
        if age is not None and age > self.request.max_age_days:
            self.skipped.append(f"study {study.study_uid} ({study.study_date}) is older than "
                                f"{self.request.max_age_days} days")
            return False
        return True

    def _measure_study(self, study: StudyMatch, modality: str, description: str,  # noqa: ANN401
                       folder: str) -> tuple[SeriesMatch, Any, Any, bool, dict[str, str], list[Path]] | None:
        """The first series of ``study`` the pipeline accepts: (series, its volume, its segments, whether it
        was processed now, segment label → tracking UID, result files to send); None when there is none."""
        from dicomnode.errors import VolumeError
        from dicomnode.imaging.guards import InputRefused
        from dicomnode.imaging.volume import load_series
        from dicomnode.pipelines.runner import process_volume

        series_list = self.source.find_series(study.study_uid)
        ours = [s for s in series_list if s.modality == "SEG"
                and s.description.strip() == f"{self.pipeline.name} segmentation"]
        for series in candidate_series(series_list, modality, description)[:MAX_SERIES_TRIED]:
            self._check_time(f"retrieving series {series.series_uid}")
            files = self._retrieve(series)
            try:
                prior_volume = load_series(files, skip_non_dicom=True)
                self._check_time(f"processing the prior series {series.series_uid}")
                found = self._prior_segments(ours, prior_volume, files, folder) if ours else None
                if found is not None:
                    return series, prior_volume, found[0], False, found[1], []
                prior_job = type(self.job)(
                    job_id=f"{self.job.job_id}-{folder}", pipeline=self.job.pipeline, params=self.job.params,
                    input_files=tuple(map(str, files)), output_dir=str(self.output_dir / folder),
                    study_uid=study.study_uid, series_uid=series.series_uid, rule=self.job.rule,
                    ruleset_hash=self.job.ruleset_hash)
                prior_processed, _ = process_volume(self.pipeline, prior_volume, prior_job)
                written = self._write_prior_package(prior_processed, self.output_dir / folder)
                tracking = seg_tracking([f for f in written if f.name == "seg.dcm"])
                return series, prior_volume, prior_processed.segments, True, tracking, written
            except InputRefused as exc:
                self.skipped.append(f"series {series.series_uid} of study {study.study_uid}: {exc}")
            except VolumeError as exc:
                self.skipped.append(f"series {series.series_uid} of study {study.study_uid} cannot be read: "
                                    f"{exc}")
        return None

    def _compare_study(self, study: StudyMatch, volume: Any, processed: Any, modality: str,  # noqa: ANN401
                       description: str) -> dict[str, Any] | None:
        measured = self._measure_study(study, modality, description, "prior")
        if measured is None:
            return None
        series, prior_volume, segments, processed_again, self.prior_tracking, written = measured
        self.prior_files.extend(written)
        self._check_time("matching findings")
        prior_findings = _findings(segments, prior_volume.array, prior_volume)
        self.current_findings = _findings(processed.segments, volume.array, volume)
        carried = _carry(prior_findings, prior_volume, volume)
        matches = match_findings(prior_findings, self.current_findings, carried)
        self.prior_evidence = tuple(prior_volume.datasets)
        interval = _age_days(study.study_date, _text(volume.datasets[0], "StudyDate"))
        return {
            "status": "compared",
            "prior_study_uid": study.study_uid,
            "prior_study_date": study.study_date,
            "prior_series_uid": series.series_uid,
            "interval_days": interval,
            "prior_processed_now": processed_again,
            "source": self.request.source_name,
            "findings": report(matches, volume.units, self.prior_tracking, carried),
            "skipped": self.skipped,
        }

    def _history(self, studies: list[StudyMatch], volume: Any, modality: str,  # noqa: ANN401
                 description: str) -> list[dict[str, Any]]:
        """Values of the current findings in up to ``count - 1`` older comparable studies (newest first),
        each matched to the current study as the prior is; what cannot be had is noted in ``skipped``."""
        history: list[dict[str, Any]] = []
        mean_key = f"mean_{volume.units.lower() or 'value'}"
        for study in studies:
            if len(history) >= self.request.count - 1:
                break
            try:
                self._check_time(f"looking at the older study {study.study_uid}")
                measured = self._measure_study(study, modality, description, f"prior-{len(history) + 2}")
                if measured is None:
                    continue
                _, older_volume, segments, _, _, written = measured
                self.prior_files.extend(written)
                findings = _findings(segments, older_volume.array, older_volume)
                carried = _carry(findings, older_volume, volume)
            except (QueryError, OutOfTime) as exc:
                self.skipped.append(f"older studies not charted: {exc}")
                break
            values: dict[str, Any] = {}
            for m in match_findings(findings, self.current_findings, carried):
                if m.prior is None or m.current is None:
                    continue
                entry = {"volume_ml": round(m.prior.volume_ml, 2),
                         mean_key: None if m.prior.mean is None else round(m.prior.mean, 1)}
                if m.prior.category == "lesion":
                    entry["longest_diameter_mm"] = round(m.prior.longest_diameter_mm, 1)
                values[m.label] = entry
            interval = _age_days(study.study_date, _text(volume.datasets[0], "StudyDate"))
            history.append({"study_uid": study.study_uid, "study_date": study.study_date,
                            "interval_days": interval, "findings": values})
        return history

    def _retrieve(self, series: SeriesMatch) -> list[Path]:
        folder = self.output_dir / "prior-input" / series.series_uid
        # a worker on another machine (Celery) has no node database: nothing to record there
        if self.request.method == "c-move" and Path(self.request.database_path or "/nonexistent").is_file():
            from dicomnode.compare.retrieves import PendingRetrieves
            from dicomnode.database import Database

            database = Database(self.request.database_path)
            try:
                PendingRetrieves(database).expect(series.study_uid, series.series_uid, self.job.job_id,
                                                  self.request.source_name)
            finally:
                database.close()
        files = self.source.retrieve_series(series, folder)
        if files:
            return files
        # C-MOVE: the instances arrive at the node's listener; wait for them in the spool
        from dicomnode.spool.store import Spool

        spool = Spool(Path(self.request.spool_dir), fsync=False)
        target = spool.series_dir(series.study_uid, series.series_uid)
        settled_at, count = self.clock(), -1
        while True:
            self._check_time(f"waiting for the C-MOVE of series {series.series_uid}")
            found = sorted(target.glob("*.dcm")) if target.exists() else []
            if found and (len(found) == series.instances or (len(found) == count
                                                             and self.clock() - settled_at > 3.0)):
                return found
            if len(found) != count:
                count, settled_at = len(found), self.clock()
            time.sleep(0.5)

    def _prior_segments(self, ours: list[SeriesMatch], prior_volume: Any, files: list[Path],  # noqa: ANN401
                        folder: str = "prior") -> tuple[list, dict[str, str]] | None:
        """The segments of the node's SEG already in the prior study, on the prior's grid, and their tracking
        UIDs (None if it cannot be used)."""
        from dicomnode.outputs.api import Segment
        from dicomnode.outputs.segmask import read_seg, seg_mask, segment_numbers

        seg_files = self.source.retrieve_series(ours[0], self.output_dir / f"{folder}-seg")
        if not seg_files:
            return None
        try:
            seg = read_seg(seg_files[0])
            tracking = seg_tracking(seg_files[:1])
            segments = []
            for number in segment_numbers(seg):
                item = seg.get_segment_description(number)
                label = str(item.SegmentLabel)
                category = "lesion" if label.lower().startswith("lesion") else "organ"
                mask = seg_mask(seg, prior_volume.datasets, number)
                segments.append(Segment(label, label.lower(), mask, category=category))
        except (DicomNodeError, ValueError, KeyError, AttributeError) as exc:
            log.warning("The node's SEG in the prior study cannot be read (%s); the prior is processed "
                        "again.", exc)
            return None
        log.info("Prior %s was processed before: its SEG (%d segments) is used.", ours[0].study_uid,
                 len(segments))
        return segments, tracking

    def _write_prior_package(self, prior_processed: Any, folder: Path) -> list[Path]:  # noqa: ANN401
        from dicomnode.outputs.package import write_result_package

        profile = None
        if self.job.profile:
            from dicomnode.config import ViewerProfile

            profile = ViewerProfile(**self.job.profile)
        return write_result_package(prior_processed, folder, profile, features=self.pipeline.sr_features)


def compare_with_prior(job: Any, pipeline: Any, volume: Any, processed: Any,  # noqa: ANN401
                       output_dir: Path) -> PriorOutcome:
    """The ``comparison`` block for a job that asked for one, the prior's result objects to send (when the
    prior was processed now) and its image headers. Never raises: the current result goes out whatever
    happens here."""
    try:
        comparison = Comparison(PriorRequest.from_json(job.prior), pipeline, job, output_dir)
        block = comparison.run(volume, processed)
    except DicomNodeError as exc:
        log.warning("Comparison of job %s unavailable: %s", job.job_id, exc)
        return PriorOutcome({"status": "unavailable", "reason": str(exc)}, [])
    except Exception as exc:  # a bug must not cost the current result: reported, with its traceback
        log.exception("Comparison of job %s crashed", job.job_id)
        reason = f"Internal error: {type(exc).__name__}: {exc}"
        return PriorOutcome({"status": "unavailable", "reason": reason}, [])
    log.info("Comparison of job %s: %s%s", job.job_id, block["status"],
             f" with study {block['prior_study_uid']} ({block['prior_study_date']})"
             if block["status"] == "compared" else f" ({block.get('reason', '')})")
    evidence = comparison.prior_evidence if block["status"] == "compared" else ()
    return PriorOutcome(block, comparison.prior_files, evidence)
