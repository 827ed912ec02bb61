"""TID 1500 Measurement Report (Comprehensive 3D SR) for a processed series (highdicom).

One finding per structure: a TID 1410 planar group on the key slice (largest axial cross-section: the
outline as a closed SCOORD POLYLINE on that source image, area, long/short axis) and a TID 1411 volumetric
group (the SEG segment, volume, intensity statistics) that share one tracking identifier and tracking UID
(:mod:`dicomnode.outputs.findings`: stable across reruns and studies), the planar group first — OHIF merges
groups by tracking UID and needs image coordinates in the merged measurement. Intensity statistics are the
quantity (CT 112031 Attenuation Coefficient, MR 110852 MR signal intensity) with a 121401 Derivation
modifier; lesions are 52988006 Lesion with their organ as Finding Site and their density as a qualitative
evaluation; QC verdicts (dicomnode.imaging.qc) are qualitative evaluations of every group. Empty segments get
no finding (no outline to anchor it). The observer is this node as a device; the report is UNVERIFIED.
With a comparison with prior studies, every finding gets its time point and the change since the prior
(:mod:`dicomnode.outputs.timepoints`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomnode.errors import OutputError
from dicomnode.outputs.api import Provenance, Segment
from dicomnode.outputs.codes import (
    QC_FLAG,
    QC_STATUS,
    UNIT_MM,
    UNIT_MM2,
    feature_code,
    feature_unit,
    intensity_quantity,
    lesion_kind_code,
    qc_value,
    structure_code,
)
from dicomnode.outputs.library import complete_image_library, is_uniform, library_seed
from dicomnode.outputs.outline import KeySlice, key_slice
from dicomnode.outputs.provenance import (
    MANUFACTURER,
    apply_provenance,
    contributing_equipment,
    provenance_items,
)
from dicomnode.outputs.seg import segment_tracking_uid
from dicomnode.outputs.timepoints import (
    SRComparison,
    change_measurements,
    gone_region,
    prior_groups,
    status_evaluation,
)
from dicomnode.outputs.uids import UIDFactory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SRSpec:
    series_description: str = "Measurements"
    series_number: int = 903
    device_name: str = "dicomnode"
    device_uid: str = ""  # default: a UID derived from device_name
    instance_number: int = 1


def procedure_code(modality: str) -> hd.sr.CodedConcept:
    if modality == "CT":
        code = codes.LN.CTUnspecifiedBodyRegion
    elif modality == "MR":
        code = codes.LN.MRIUnspecifiedBodyRegion
    else:
        return hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def observation_context(provenance: Provenance, spec: SRSpec) -> hd.sr.ObservationContext:
    uid = spec.device_uid or generate_uid(entropy_srcs=["dicomnode-device", spec.device_name])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uid,
        name=spec.device_name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=provenance.pipeline[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def algorithm_id(provenance: Provenance) -> hd.sr.AlgorithmIdentification:
    """TID 4019 with every provenance value as a parameter TEXT item."""
    return hd.sr.AlgorithmIdentification(
        name=provenance.pipeline[:64],
        version=(provenance.pipeline_version or "0")[:64],
        parameters=[f"{k}={v}" for k, v in provenance_items(provenance)],
    )


@dataclass(frozen=True)
class FindingInfo:
    """What the SR says about one segment besides its measurements."""

    tracking_uid: str
    site: str | None = None  # structure key of the organ a lesion lies in
    kind: str | None = None  # hypo | hyper | fat (lesions)


def _finding_sites(segment: Segment, info: FindingInfo) -> list[hd.sr.FindingSite] | None:
    site = structure_code(info.site or segment.structure).finding_site
    return [hd.sr.FindingSite(anatomic_location=site)] if site is not None else None


def qualitative_evaluations(
    segment: Segment, info: FindingInfo, modality: str
) -> list[hd.sr.QualitativeEvaluation]:
    """The lesion's density (CT) and the segment's QC verdict and flags."""
    found = []
    if info.kind is not None:
        coded = lesion_kind_code(modality, info.kind)
        if coded is not None:
            found.append(hd.sr.QualitativeEvaluation(name=coded[0], value=coded[1]))
    if segment.qc is not None:
        found.append(hd.sr.QualitativeEvaluation(name=QC_STATUS, value=qc_value(str(segment.qc.status))))
        found.extend(
            hd.sr.QualitativeEvaluation(name=QC_FLAG, value=qc_value(str(flag))) for flag in segment.qc.flags
        )
    return found


def measurement(name: str, value: float, modality: str) -> hd.sr.Measurement:
    """One feature as TID 300 writes it (quantity + derivation for intensity statistics)."""
    fc = feature_code(name)
    method = codes.cid7474.SumOfSegmentedVoxelMethodForVolume if name == "volume_ml" else None
    quantity = intensity_quantity(modality) if fc.derivation is not None else None
    return hd.sr.Measurement(
        name=quantity or fc.concept,
        value=float(value) + fc.offset,
        unit=feature_unit(fc, modality),
        method=method,
        derivation=fc.derivation if quantity is not None else None,
    )


def volumetric_group(
    number: int,
    segment: Segment,
    seg: Dataset,
    values: Mapping[str, float],
    features: Sequence[str],
    modality: str,
    provenance: Provenance,
    info: FindingInfo,
    change: tuple[hd.sr.TimePointContext, list, list] | None = None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """``change``: (time point, measurements, evaluations) of the comparison with a prior (timepoints)."""
    code = structure_code(segment.structure)
    measurements = []
    for name in features:
        if name not in values:
            # a one-voxel segment has no texture/shape features
            log.warning("Segment '%s' has no value for feature '%s'; it is left out.", segment.label, name)
            continue
        measurements.append(measurement(name, values[name], modality))
    evaluations = qualitative_evaluations(segment, info, modality)
    if change is not None:
        measurements.extend(change[1])
        evaluations.extend(change[2])
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=info.tracking_uid, identifier=segment.label[:64]),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
        ),
        time_point_context=change[0] if change is not None else None,
        finding_type=code.type,
        finding_category=code.category,
        finding_sites=_finding_sites(segment, info),
        algorithm_id=algorithm_id(provenance),
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def planar_group(
    number: int,
    segment: Segment,
    key: KeySlice,
    source: Dataset,
    provenance: Provenance,
    info: FindingInfo,
    modality: str,
    time_point: hd.sr.TimePointContext | None = None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    code = structure_code(segment.structure)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=key.outline,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )
    measurements = [
        hd.sr.Measurement(name=codes.SCT.Area, value=key.area_mm2, unit=UNIT_MM2),
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=key.long_axis_mm, unit=UNIT_MM),
        hd.sr.Measurement(name=codes.SCT.ShortAxis, value=key.short_axis_mm, unit=UNIT_MM),
    ]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=info.tracking_uid, identifier=segment.label[:64]),
        referenced_region=region,
        time_point_context=time_point,
        finding_type=code.type,
        finding_category=code.category,
        finding_sites=_finding_sites(segment, info),
        algorithm_id=algorithm_id(provenance),
        measurements=measurements,
        qualitative_evaluations=qualitative_evaluations(segment, info, modality) or None,
    )


def _gone_groups(comparison: SRComparison, sources: Sequence[Dataset], provenance: Provenance, modality: str,
                 key_indices: list[int]) -> list:
    """Lesions of the prior not found again: a circle where they were, status Absent, their prior values."""
    groups: list = []
    code = structure_code("lesion")
    for change in comparison.findings.values():
        if change.status != "gone" or not change.tracking_uid:
            continue
        placed = gone_region(change, sources)
        if placed is None:
            continue
        key_indices.append(placed[0])
        tracking = hd.sr.TrackingIdentifier(uid=change.tracking_uid, identifier=change.label[:64])
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=placed[1],
            time_point_context=comparison.current.context(), finding_type=code.type,
            finding_category=code.category, algorithm_id=algorithm_id(provenance),
            qualitative_evaluations=status_evaluation(change)))
        groups.extend(prior_groups(change, comparison, tracking, modality, code.type))
    return groups


def build_sr(
    sources: Sequence[Dataset],
    segments: Sequence[Segment],
    seg: Dataset,
    measurements: Mapping[str, Mapping[str, float]],
    features: Sequence[str],
    provenance: Provenance,
    uids: UIDFactory,
    spec: SRSpec = SRSpec(),
    findings: Mapping[str, FindingInfo] | None = None,
    comparison: SRComparison | None = None,
    prior_evidence: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The Measurement Report; ``measurements`` maps segment label → feature name → value, ``findings``
    segment label → tracking UID, site and kind (default: per-result tracking UIDs, no site/kind);
    ``comparison`` adds the time points and the change since the prior (:mod:`dicomnode.outputs.timepoints`),
    ``prior_evidence`` the prior's images (Pertinent Other Evidence)."""
    modality = str(sources[0].get("Modality", ""))
    pixel_spacing = tuple(float(v) for v in sources[0].PixelSpacing)
    groups: list = []
    key_indices: list[int] = []
    now = comparison.current.context() if comparison is not None else None
    for number, segment in enumerate(segments, start=1):
        values = measurements.get(segment.label)
        if values is None:
            raise OutputError(f"No measurements were given for segment '{segment.label}'.")
        if not segment.mask.any():
            # a finding without image coordinates blanks OHIF's whole SR viewport; the SEG keeps the segment
            log.warning("Segment '%s' is empty: the SR gets no finding for it.", segment.label)
            continue
        info = (findings or {}).get(segment.label) or FindingInfo(segment_tracking_uid(uids, number))
        key = key_slice(segment.mask, pixel_spacing)  # type: ignore[arg-type]
        key_indices.append(key.index)
        change = comparison.findings.get(segment.label) if comparison is not None else None
        extra = None
        if now is not None:
            extra = (now, change_measurements(change, comparison, modality) if change else [],  # type: ignore[arg-type]
                     status_evaluation(change) if change else [])
        groups.append(planar_group(number, segment, key, sources[key.index], provenance, info, modality, now))
        groups.append(volumetric_group(number, segment, seg, values, features, modality, provenance, info,
                                       extra))
        if change is not None and comparison is not None:
            tracking = hd.sr.TrackingIdentifier(uid=info.tracking_uid, identifier=segment.label[:64])
            groups.extend(prior_groups(change, comparison, tracking, modality,
                                       structure_code(segment.structure).type))
    if comparison is not None:
        groups.extend(_gone_groups(comparison, sources, provenance, modality, key_indices))
    if not groups:
        raise OutputError("Every segment is empty: there is no finding to report in the SR.")
    try:
        report = hd.sr.MeasurementReport(
            observation_context=observation_context(provenance, spec),
            procedure_reported=procedure_code(modality),
            imaging_measurements=groups,
            # TID 1600 Image Library of every source image, as reference tools write it; highdicom gets
            # only the key images of a uniform series and the rest is added below (outputs.library)
            referenced_images=library_seed(sources, key_indices),
        )
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*sources, seg, *prior_evidence],
            content=report[0],
            series_instance_uid=uids("sr-series"),
            series_number=spec.series_number,
            sop_instance_uid=uids("sr"),
            instance_number=spec.instance_number,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            contributing_equipment=[contributing_equipment(provenance)],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"The SR for pipeline '{provenance.pipeline}' could not be built: {exc}") from exc
    if is_uniform(sources):
        complete_image_library(sr, sources)
    sr.SeriesDescription = spec.series_description[:64]
    sr.SeriesDate, sr.SeriesTime = sr.ContentDate, sr.ContentTime
    sr.ManufacturerModelName = provenance.pipeline[:64]
    sr.SoftwareVersions = provenance.node_version[:64]
    apply_provenance(sr, provenance, equipment=False)
    return sr
