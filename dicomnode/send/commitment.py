"""Storage Commitment Push Model (PS3.4 Annex J): the DIMSE messages the node exchanges with a PACS.

After a batch is stored at a destination with ``storage_commitment: true``, the node asks the PACS to
commit to keeping the instances: an N-ACTION-RQ (Action Type 1, "Request Storage Commitment") to the
well-known Storage Commitment SOP instance, carrying a Transaction UID and the Referenced SOP Sequence. The
PACS answers later with an N-EVENT-REPORT-RQ — on the same association or on one it opens to the node's
listener — with Event Type 1 (all committed) or 2 (some failed: Failed SOP Sequence with a Failure Reason).
This module builds and reads those data sets; the outbox keeps the states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID

from dicomnode.errors import SendError

STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")  # the well-known SOP Instance (PS3.4 J.3.5)
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type IDs
EVENT_SOME_FAILED = 2


@dataclass(frozen=True)
class CommitmentReport:
    """What a PACS reported for one transaction."""

    transaction_uid: str
    committed: tuple[str, ...]  # SOP Instance UIDs the PACS commits to keep
    failed: tuple[tuple[str, int], ...]  # (SOP Instance UID, Failure Reason)


def commitment_request(transaction_uid: str, references: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION-RQ data set: ``references`` are (SOP Class UID, SOP Instance UID) pairs."""
    if not references:
        raise SendError(f"A storage commitment request (transaction '{transaction_uid}') needs instances.")
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def parse_report(event_type: int, ds: Dataset | None) -> CommitmentReport:
    """Read an N-EVENT-REPORT-RQ's data set; raises :class:`SendError` naming what is missing."""
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise SendError(
            f"Storage commitment report with unknown Event Type ID {event_type} (expected 1 or 2)."
        )
    if ds is None or not ds.get("TransactionUID"):
        raise SendError("Storage commitment report without a Transaction UID.")
    committed = tuple(str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence", [])
                      if i.get("ReferencedSOPInstanceUID"))
    failed = tuple((str(i.ReferencedSOPInstanceUID), int(i.get("FailureReason", 0x0110)))
                   for i in ds.get("FailedSOPSequence", []) if i.get("ReferencedSOPInstanceUID"))
    return CommitmentReport(str(ds.TransactionUID), committed, failed)
