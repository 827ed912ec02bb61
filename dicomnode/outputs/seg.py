"""DICOM SEG (BINARY) for a processed series: one segment per structure and per lesion (highdicom)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.errors import OutputError
from dicomnode.outputs.api import Provenance, Segment
from dicomnode.outputs.codes import structure_code
from dicomnode.outputs.provenance import MANUFACTURER, apply_provenance, contributing_equipment
from dicomnode.outputs.uids import UIDFactory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegSpec:
    """What varies between SEG objects; everything else is fixed by the source series and provenance."""

    series_description: str = "Segmentation"
    series_number: int = 901
    content_label: str = "SEGMENTATION"
    content_creator_name: str = "DICOMNODE^AUTOMATIC"
    omit_empty_frames: bool = True
    instance_number: int = 1


def algorithm_family(provenance: Provenance) -> Code:
    """CID 7162 family of the pipeline's method: Artificial Intelligence only when a learned model segments
    (a ``model.*`` step); the shipped chains threshold at levels estimated from the image's histogram
    (Otsu, soft-tissue mode bands, k-sigma lesion contrast) and refine with morphology: Histogram Analysis."""
    uses = [step.rsplit("(", 1)[-1].rstrip(")") for step in provenance.steps]
    if any(use.startswith("model.") for use in uses):
        return codes.cid7162.ArtificialIntelligence
    return codes.cid7162.HistogramAnalysis


def algorithm_identification(provenance: Provenance) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=provenance.pipeline[:64],
        family=algorithm_family(provenance),
        version=(provenance.pipeline_version or "0")[:64],
        source=MANUFACTURER,
        parameters={"params_hash": provenance.params_hash, "node_version": provenance.node_version},
    )


def segment_tracking_uid(uids: UIDFactory, number: int) -> str:
    """A per-result tracking UID of segment ``number`` (1-based), for callers without patient identity;
    the result package uses :func:`dicomnode.outputs.findings.tracking_uids` (stable across studies)."""
    return str(uids("tracking", number))


def segment_descriptions(
    segments: Sequence[Segment], provenance: Provenance, uids: UIDFactory,
    tracking: Mapping[str, str] | None = None,
) -> list[hd.seg.SegmentDescription]:
    algorithm = algorithm_identification(provenance)
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        code = structure_code(segment.structure)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.label[:64],
                segmented_property_category=code.category,
                segmented_property_type=code.type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=(tracking or {}).get(segment.label) or segment_tracking_uid(uids, number),
                tracking_id=segment.label[:64],
                display_color=hd.color.CIELabColor.from_rgb(*(float(c) for c in segment.color)),
            )
        )
    return descriptions


def mask_stack(segments: Sequence[Segment], n_slices: int) -> np.ndarray:
    """(slices, rows, columns, segments) bool array; checks every mask has the source shape."""
    if not segments:
        raise OutputError("Cannot build a SEG without segments.")
    shape = segments[0].mask.shape
    for segment in segments:
        if segment.mask.shape != shape or shape[0] != n_slices:
            raise OutputError(
                f"Mask of segment '{segment.label}' has shape {segment.mask.shape}; expected "
                f"({n_slices}, rows, columns) like the source series and every other segment."
            )
    # stacked segment-major and viewed segment-last: highdicom's overlap check (a sum over the last axis)
    # then adds whole planes instead of 4-byte runs, ~4x faster on a 512x512x300 series
    shared = _shared_planes([s.mask for s in segments])
    if shared is not None:  # the pipeline's masks already are such a stack: no copy (2.5 s, 630 MB)
        return np.moveaxis(shared, 0, -1)
    return np.moveaxis(np.stack([np.asarray(s.mask, dtype=bool) for s in segments], axis=0), 0, -1)


def _shared_planes(masks: Sequence[np.ndarray]) -> np.ndarray | None:
    """The (segments, slices, rows, columns) array whose consecutive planes ``masks`` are, in order
    (as :func:`dicomnode.pipelines.runner.build_segments` makes them); None when they are not."""
    owner = masks[0].base
    if not isinstance(owner, np.ndarray) or owner.dtype != bool or not owner.flags.c_contiguous:
        return None
    if owner.ndim != 4 or owner.shape[1:] != masks[0].shape or owner.shape[0] < len(masks):
        return None
    start = owner.__array_interface__["data"][0]
    for i, mask in enumerate(masks):
        if mask.base is not owner or mask.dtype != bool or not mask.flags.c_contiguous:
            return None
        if mask.__array_interface__["data"][0] != start + i * owner.strides[0]:
            return None
    return owner[: len(masks)]


def build_seg(
    sources: Sequence[Dataset],
    segments: Sequence[Segment],
    provenance: Provenance,
    uids: UIDFactory,
    spec: SegSpec = SegSpec(),
    tracking: Mapping[str, str] | None = None,
) -> hd.seg.Segmentation:
    """A BINARY Segmentation on the source grid (same study, Frame of Reference, source references)."""
    pixels = mask_stack(segments, len(sources))
    has_content = any(bool(np.any(s.mask)) for s in segments)  # per mask: the stack is a strided view
    if not has_content:
        log.warning("Every segment is empty; the SEG keeps all frames so that it is still valid.")
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(segments, provenance, uids, tracking),
            series_instance_uid=uids("seg-series"),
            series_number=spec.series_number,
            sop_instance_uid=uids("seg"),
            instance_number=spec.instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=provenance.pipeline[:64],
            software_versions=provenance.node_version[:64],
            device_serial_number="0",
            content_description=spec.series_description[:64],
            content_creator_name=spec.content_creator_name,
            content_label=spec.content_label,
            omit_empty_frames=spec.omit_empty_frames and has_content,
            contributing_equipment=[contributing_equipment(provenance)],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"The SEG for pipeline '{provenance.pipeline}' could not be built: {exc}") from exc
    seg.SeriesDescription = spec.series_description[:64]
    seg.SeriesDate, seg.SeriesTime = seg.ContentDate, seg.ContentTime
    apply_provenance(seg, provenance, equipment=False)
    return seg
