"""The SR's TID 1600 Image Library with one entry per source image, without highdicom's per-image cost.

highdicom builds an Image Library entry (TID 1601/1604: modality, Frame of Reference, matrix, pixel
spacing, slice thickness, position, orientation) in about 60 ms per image, and the SR document then
deep-copies and re-parses the whole content tree: for a 300-slice series that was most of the SR's 16 s.
In a regular single-frame series every descriptor but the three ImagePositionPatient values is the same
for all images, so :func:`build_sr` lets highdicom build the report with the key images only
(:func:`library_seed`) and :func:`complete_image_library` then gives the finished document one entry per
source image, in source order: highdicom's own entries are kept, the others share their constant
descriptor items and get their own position items. The written object is the same as highdicom's
full library (the entries are equal item by item); only highdicom's parsed view ``sr.content`` still lists
the seed images, so read a written SR back (``hd.sr.srread``) to inspect its library.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicomnode.errors import OutputError

IMAGE_LIBRARY = ("DCM", "111028")
IMAGE_LIBRARY_GROUP = ("DCM", "126200")
SOURCE = hd.sr.CodedConcept(value="260753009", meaning="Source", scheme_designator="SCT")
POSITION_CODES = (
    codes.DCM.ImagePositionPatientX,
    codes.DCM.ImagePositionPatientY,
    codes.DCM.ImagePositionPatientZ,
)
#: The attributes highdicom's entry descriptors are made of, apart from ImagePositionPatient.
CONSTANT_ATTRIBUTES = (
    "SOPClassUID", "FrameOfReferenceUID", "Rows", "Columns", "PixelSpacing", "SliceThickness",
    "ImageOrientationPatient", "ImagerPixelSpacing", "PatientOrientation",
)


def _constants(ds: Dataset) -> tuple:
    return tuple(str(ds.get(keyword, "")) for keyword in CONSTANT_ATTRIBUTES)


def is_uniform(sources: Sequence[Dataset]) -> bool:
    """Whether the sources' library entries differ only in their position (a regular single-frame
    cross-sectional series), so that :func:`complete_image_library` can share the other descriptors."""
    if not sources or "ImagePositionPatient" not in sources[0]:
        return False
    first = _constants(sources[0])
    return all("ImagePositionPatient" in ds and _constants(ds) == first for ds in sources)


def library_seed(sources: Sequence[Dataset], key_indices: Sequence[int]) -> list[Dataset]:
    """The images highdicom gets for the library: all sources unless they are uniform, else the key
    images (the first source when there is none), in source order."""
    if not is_uniform(sources):
        return list(sources)
    indices = sorted(set(key_indices)) or [0]
    return [sources[i] for i in indices]


def _code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodingSchemeDesignator), str(concept.CodeValue)


def _find(items: Sequence[Dataset], code: tuple[str, str]) -> Dataset:
    for item in items:
        if "ConceptNameCodeSequence" in item and _code(item) == code:
            return item
    raise OutputError(
        f"The SR content has no item ({code[0]}, {code[1]}); its image library cannot be completed."
    )


def _entry(source: Dataset, shared: Sequence[Dataset | None]) -> hd.sr.ImageContentItem:
    """A library entry for ``source``: the shared descriptors with ``None`` replaced by its position."""
    positions = iter(
        hd.sr.NumContentItem(
            name=code,
            value=value,  # the source's DS value, exactly as highdicom's own entries take it
            unit=codes.UCUM.Millimeter,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
        )
        for code, value in zip(POSITION_CODES, source.ImagePositionPatient, strict=True)
    )
    image = hd.sr.ImageContentItem(
        name=SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    image.ContentSequence = hd.sr.ContentSequence(
        [item if item is not None else next(positions) for item in shared]
    )
    return image


def complete_image_library(sr: Dataset, sources: Sequence[Dataset]) -> None:
    """Extend the Image Library of ``sr`` (built from a :func:`library_seed` of the uniform ``sources``)
    to one entry per source image, in the sources' order."""
    library = _find(sr.ContentSequence, IMAGE_LIBRARY)
    groups = [item for item in library.ContentSequence if _code(item) == IMAGE_LIBRARY_GROUP]
    if len(groups) != 1:
        raise OutputError(
            f"The SR's image library has {len(groups)} groups; a uniform series gives exactly one."
        )
    group = groups[0]
    others = [item for item in group.ContentSequence if item.ValueType != "IMAGE"]
    existing = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID): item
        for item in group.ContentSequence
        if item.ValueType == "IMAGE"
    }
    if not existing:
        raise OutputError("The SR's image library has no image entry to complete it from.")
    template = next(iter(existing.values()))
    position_codes = {("DCM", code.value) for code in POSITION_CODES}
    shared = [None if _code(item) in position_codes else item for item in template.ContentSequence]
    if sum(item is None for item in shared) != len(POSITION_CODES):
        raise OutputError("The SR's image library entry has no ImagePositionPatient X/Y/Z descriptors.")
    entries = [existing.get(str(ds.SOPInstanceUID)) or _entry(ds, shared) for ds in sources]
    group.ContentSequence = hd.sr.ContentSequence([*others, *entries])
