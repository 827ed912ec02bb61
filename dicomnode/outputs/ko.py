"""Key Object Selection document (TID 2010): the key slice of each finding, so PACS viewers that list key
images jump to them.

The key slice of a segment is the one the SR's TID 1410 planar group outlines (largest axial cross-section,
:func:`dicomnode.outputs.outline.key_slice_index`); the document references those source images (once each,
in slice order), carries the title 113000 "Of Interest" (CID 7010) and a description naming which finding
each slice shows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomnode.errors import OutputError
from dicomnode.outputs.api import Provenance, Segment
from dicomnode.outputs.outline import key_slice_index
from dicomnode.outputs.provenance import MANUFACTURER, apply_provenance, contributing_equipment
from dicomnode.outputs.uids import UIDFactory

log = logging.getLogger(__name__)

#: CID 7010 "Key Object Selection Document Title": 113000 (DCM) "Of Interest".
DOCUMENT_TITLE = codes.DCM.OfInterest


@dataclass(frozen=True)
class KOSpec:
    series_description: str = "Key images"
    series_number: int = 905
    instance_number: int = 1
    device_name: str = "dicomnode"


def key_slices(segments: Sequence[Segment]) -> dict[int, list[str]]:
    """Slice index → labels of the findings whose key slice it is (empty segments have none)."""
    found: dict[int, list[str]] = {}
    for segment in segments:
        if segment.mask.any():
            found.setdefault(key_slice_index(segment.mask), []).append(segment.label)
    return dict(sorted(found.items()))


def describe(slices: dict[int, list[str]], sources: Sequence[Dataset]) -> str:
    """The Key Object Description (TEXT, ≤ 1024 characters): which finding each key image shows."""
    parts = []
    for index, labels in slices.items():
        number = sources[index].get("InstanceNumber", index + 1)
        parts.append(f"image {number}: {', '.join(labels)}")
    return ("Key slices (largest cross-section) of " + "; ".join(parts))[:1024]


def build_ko(
    sources: Sequence[Dataset],
    segments: Sequence[Segment],
    provenance: Provenance,
    uids: UIDFactory,
    spec: KOSpec = KOSpec(),
) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS flagging each finding's key slice in ``sources`` (sorted as the masks' slices)."""
    slices = key_slices(segments)
    if not slices:
        raise OutputError("Every segment is empty: there is no key image to flag in the KOS.")
    referenced = [sources[i] for i in slices]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["dicomnode-device", spec.device_name]),
        name=spec.device_name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=provenance.pipeline[:64],
    )
    try:
        content = hd.ko.KeyObjectSelection(
            document_title=DOCUMENT_TITLE,
            referenced_objects=referenced,
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device),
            description=describe(slices, sources),
        )
        ko = hd.ko.KeyObjectSelectionDocument(
            evidence=referenced,
            content=content,
            series_instance_uid=uids("ko-series"),
            series_number=spec.series_number,
            sop_instance_uid=uids("ko"),
            instance_number=spec.instance_number,
            manufacturer=MANUFACTURER,
            contributing_equipment=[contributing_equipment(provenance)],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"The KOS for pipeline '{provenance.pipeline}' could not be built: {exc}") from exc
    ko.SeriesDescription = spec.series_description[:64]
    apply_provenance(ko, provenance, equipment=False)
    log.debug("KOS flags %d key images: %s", len(slices), ko.ContentSequence[-1].get("TextValue", ""))
    return ko
