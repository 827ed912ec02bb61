"""Provenance carried by every result object: node version, pipeline, parameters hash, rule, rule-set hash.

It is written three ways so that any viewer or script can find it:
- ContributingEquipmentSequence (standard): one "Processing Equipment" item per result;
- a private block with the private creator ``DICOMNODE 1.0`` in group 0x0077;
- in the SR, as the TID 4019 algorithm identification (name, version, parameters as TEXT items).
"""

from __future__ import annotations

from highdicom.base_content import ContributingEquipment
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from dicomnode.outputs.api import Provenance

PRIVATE_CREATOR = "DICOMNODE 1.0"
PRIVATE_GROUP = 0x0077
MANUFACTURER = "dicomnode"

#: private element offset → (keyword, VR); values are the Provenance fields.
PRIVATE_ELEMENTS: dict[int, tuple[str, str]] = {
    0x01: ("node_version", "LO"),
    0x02: ("pipeline", "LO"),
    0x03: ("pipeline_version", "LO"),
    0x04: ("params_hash", "LO"),
    0x05: ("rule", "LO"),
    0x06: ("ruleset_hash", "LO"),
}


def provenance_items(provenance: Provenance) -> list[tuple[str, str]]:
    """(name, value) pairs in a fixed order; empty values are kept out."""
    items = [
        ("node_version", provenance.node_version),
        ("pipeline", provenance.pipeline),
        ("pipeline_version", provenance.pipeline_version),
        ("params_hash", provenance.params_hash),
        ("rule", provenance.rule),
        ("ruleset_hash", provenance.ruleset_hash),
    ]
    return [(k, v) for k, v in items if v]


def provenance_description(provenance: Provenance) -> str:
    """One line (≤ 1024 chars, ST) naming every provenance value."""
    return "; ".join(f"{k}={v}" for k, v in provenance_items(provenance))[:1024]


def contributing_equipment(provenance: Provenance) -> ContributingEquipment:
    """The ContributingEquipmentSequence item that describes this node's processing."""
    return ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=provenance.pipeline[:64],
        software_versions=[provenance.node_version[:64], provenance.pipeline_version[:64] or "0"],
        contribution_description=provenance_description(provenance),
    )


def apply_provenance(dataset: Dataset, provenance: Provenance, *, equipment: bool = True) -> None:
    """Add the contributing-equipment item (unless the builder already did) and the private block."""
    if equipment:
        items = list(dataset.get("ContributingEquipmentSequence", []))
        items.append(contributing_equipment(provenance))
        dataset.ContributingEquipmentSequence = DicomSequence(items)
    block = dataset.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    values = dict(provenance_items(provenance))
    for offset, (keyword, vr) in PRIVATE_ELEMENTS.items():
        if keyword in values:
            block.add_new(offset, vr, values[keyword][:64])


def read_provenance(dataset: Dataset) -> dict[str, str]:
    """The provenance values in a result object's private block (empty when it has none)."""
    try:
        block = dataset.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return {}
    found = {}
    for offset, (keyword, _vr) in PRIVATE_ELEMENTS.items():
        if offset in block:
            found[keyword] = str(block[offset].value)
    return found
