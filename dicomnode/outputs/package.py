"""The result package of one processed series: SEG, enhanced derived series, TID 1500 SR, key images (KOS),
secondary capture.

Entry point: :func:`write_result_package`. File names are stable (``seg.dcm``, ``sr.dcm``, ``ko.dcm``,
``derived/IM00001.dcm`` …, ``capture.dcm``) and every UID is derived from (source series,
pipeline, parameters hash), so writing the package again replaces the same objects.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset

from dicomnode.config import ViewerProfile
from dicomnode.errors import OutputError, QuantifyError
from dicomnode.outputs.api import ProcessedSeries, Segment
from dicomnode.outputs.codes import DEFAULT_SR_FEATURES, feature_code
from dicomnode.outputs.derived import DerivedSpec, iter_derived_series
from dicomnode.outputs.findings import finding_sites, lesion_kinds, tracking_uids
from dicomnode.outputs.ko import KOSpec, build_ko
from dicomnode.outputs.seg import SegSpec, build_seg
from dicomnode.outputs.sr import FindingInfo, SRSpec, build_sr
from dicomnode.outputs.timepoints import matched_tracking, sr_comparison
from dicomnode.outputs.uids import UIDFactory

log = logging.getLogger(__name__)

SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
KO_FILE = "ko.dcm"
DERIVED_DIR = "derived"
CAPTURE_FILE = "capture.dcm"
CAPTURE_DIR = "capture"  # earlier releases' CT-image-per-slice capture: removed when a package is rewritten


# Type 2 attributes of the Patient and General Study modules: they must be present (possibly empty) in every
# derived object; non-conforming senders omit them, which would make highdicom refuse the sources.
TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def conforming_sources(sources: Sequence[Dataset]) -> tuple[Dataset, ...]:
    """Sources as the result writers need them, fixing what real scanners get wrong: missing Type 2
    patient/study attributes are added empty, and an empty Specific Character Set (meaning the default
    repertoire, which highdicom refuses as a value) is dropped. Shallow copies; the originals are left
    untouched."""
    completed = []
    for source in sources:
        missing = [k for k in TYPE2_PATIENT_STUDY if k not in source]
        empty_charset = "SpecificCharacterSet" in source and not source.SpecificCharacterSet
        if missing or empty_charset:
            original, source = source, Dataset(dict(source.items()))  # Dataset(ds) would share elements
            source.file_meta = getattr(original, "file_meta", Dataset())
            for keyword in missing:
                setattr(source, keyword, "")
            if empty_charset:
                del source.SpecificCharacterSet
        completed.append(source)
    return tuple(completed)


def series_number(source: Dataset, kind: int) -> int:
    """Result series numbers: 1000·kind + the source's (SEG 1, derived 2, SR 3, capture 4, KOS 5)."""
    try:
        base = int(source.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        base = 0
    return 1000 * kind + max(base, 0) % 1000


def segment_measurements(
    processed: ProcessedSeries, segment: Segment, features: Sequence[str]
) -> dict[str, float]:
    """The pipeline's measurements for ``segment``, completed with pyradiomics where features are missing;
    ``voxel_count`` and ``volume_ml`` always come from the mask on the source grid."""
    values = dict(processed.measurements.get(segment.label, {}))
    count = int(np.count_nonzero(segment.mask))
    values["voxel_count"] = float(count)
    values["volume_ml"] = count * math.prod(processed.spacing) / 1000.0
    missing = [f for f in features if f not in values]
    if not missing or count == 0:
        return values
    if processed.image is None:
        raise OutputError(
            f"Features {missing} of segment '{segment.label}' were not given and cannot be computed: "
            "the processed series carries no source image."
        )
    from dicomnode.imaging.quantify import feature_classes_for, quantify_arrays

    try:
        computed = quantify_arrays(
            processed.image, segment.mask, processed.spacing,
            feature_classes=feature_classes_for(missing), features=missing,
        )
    except QuantifyError as exc:
        if count > 1:
            raise OutputError(f"Quantification of segment '{segment.label}' failed: {exc}") from exc
        log.warning("Segment '%s' has a single voxel: only its volume is reported.", segment.label)
        return values
    return {**computed, **values}


def finding_info(processed: ProcessedSeries, tracking: dict[str, str]) -> dict[str, FindingInfo]:
    """Per segment label: tracking UID, the organ a lesion lies in and whether it is hypo/hyperdense."""
    sites = finding_sites(processed.segments)
    modality = str(processed.sources[0].get("Modality", ""))
    kinds = lesion_kinds(processed.segments, processed.image, sites, modality)
    return {
        s.label: FindingInfo(tracking[s.label], sites[s.label].structure if s.label in sites else None,
                             kinds.get(s.label))
        for s in processed.segments
    }


def _write(dataset: Dataset, path: Path) -> Path:
    """Write atomically (temporary file, then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    dataset.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def _write_series(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [_write(ds, folder / f"IM{i:05d}.dcm") for i, ds in enumerate(datasets, start=1)]
    wanted = {p.name for p in paths}
    for stale in folder.glob("IM*.dcm"):  # a rerun with fewer slices must not leave old images behind
        if stale.name not in wanted:
            stale.unlink()
    return paths


def write_result_package(
    processed: ProcessedSeries,
    output_dir: Path,
    profile: ViewerProfile | None = None,
    *,
    features: Sequence[str] | None = None,
    comparison: Mapping[str, Any] | None = None,
    prior_evidence: Sequence[Dataset] = (),
) -> list[Path]:
    """Build and write the result objects of ``processed`` into ``output_dir``; return the files written.

    ``profile`` chooses what is produced (SEG, derived series, SR, burned-in capture) and whether empty SEG
    frames are omitted; ``features`` lists the pyradiomics feature names that go into the SR (default
    :data:`~dicomnode.outputs.codes.DEFAULT_SR_FEATURES`). Measurements missing from
    ``processed.measurements`` are computed with pyradiomics from ``processed.image``. ``comparison`` (the
    ``result.json`` block of :mod:`dicomnode.compare.prior`) puts the change since the prior into the SR, and
    a finding matched to a prior one keeps the prior's tracking UID (SEG and SR); ``prior_evidence`` are the
    prior's image headers, referenced as Pertinent Other Evidence.
    """
    profile = profile or ViewerProfile()
    features = tuple(features) if features is not None else DEFAULT_SR_FEATURES
    for name in features:
        feature_code(name)  # fail early, naming the feature, when it has no SR code
    if not processed.sources:
        raise OutputError("The processed series has no source images.")
    if not processed.segments:
        raise OutputError("The processed series has no segments.")
    processed = dataclasses.replace(processed, sources=conforming_sources(processed.sources))
    sources = processed.sources
    first = sources[0]
    prov = processed.provenance
    uids = UIDFactory(str(first.get("SeriesInstanceUID", "")), prov.pipeline, prov.params_hash)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    tracking = tracking_uids(processed.segments, sources, uids.prefix)
    tracking = matched_tracking(comparison, tracking)
    seg = None
    if profile.send_seg or profile.send_sr:
        spec = SegSpec(
            series_description=f"{prov.pipeline} segmentation"[:64],
            series_number=series_number(first, 1),
            omit_empty_frames=profile.seg_omit_empty_frames,
        )
        seg = build_seg(sources, processed.segments, prov, uids, spec, tracking)
        written.append(_write(seg, output_dir / SEG_FILE))

    if profile.send_enhanced and processed.enhanced is not None:
        description = f"{first.get('SeriesDescription', '') or 'Series'} enhanced ({prov.pipeline})"
        if processed.enhanced_values == "display":
            description = f"{first.get('SeriesDescription', '') or 'Series'} DISPLAY ONLY ({prov.pipeline})"
        spec_d = DerivedSpec(series_description=description[:64], series_number=series_number(first, 2),
                             values=processed.enhanced_values)
        windows = processed.windows or processed.window
        # written as they are built: one image's pixel bytes in memory at a time, not the whole series
        images = iter_derived_series(sources, processed.enhanced, prov, uids, spec_d, windows)
        written.extend(_write_series(images, output_dir / DERIVED_DIR))

    measurements = {s.label: segment_measurements(processed, s, features) for s in processed.segments}
    if profile.send_sr and seg is not None:
        spec_s = SRSpec(
            series_description=f"{prov.pipeline} measurements"[:64], series_number=series_number(first, 3)
        )
        sr = build_sr(sources, processed.segments, seg, measurements, features, prov, uids, spec_s,
                      finding_info(processed, tracking), sr_comparison(comparison, first), prior_evidence)
        written.append(_write(sr, output_dir / SR_FILE))

    if profile.send_ko and any(s.mask.any() for s in processed.segments):
        spec_k = KOSpec(series_description=f"{prov.pipeline} key images"[:64],
                        series_number=series_number(first, 5))
        ko = build_ko(sources, processed.segments, prov, uids, spec_k)
        written.append(_write(ko, output_dir / KO_FILE))

    if profile.secondary_capture and any(s.mask.any() for s in processed.segments):
        from dicomnode.outputs.capture import CaptureSpec, build_capture

        if processed.image is None:
            raise OutputError("A secondary capture needs the source image in the processed series.")
        spec_c = CaptureSpec(series_number=series_number(first, 4))
        capture = build_capture(processed, measurements, uids, spec_c)
        written.append(_write(capture, output_dir / CAPTURE_FILE))
    for stale in (output_dir / CAPTURE_DIR).glob("IM*.dcm"):  # the CT-based capture of earlier releases
        stale.unlink()
    log.info("Result package of %s written: %d files in %s", prov.pipeline, len(written), output_dir)
    return written
