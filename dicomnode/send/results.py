"""Queueing a job's result objects for its destinations, filtered by each destination's viewer profile
(``destinations.<name>.profile``: send_seg, send_enhanced, send_sr, send_ko, secondary_capture)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dicomnode.config import Config, ViewerProfile
from dicomnode.errors import SendError
from dicomnode.send.outbox import Outbox

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"  # an SR-family SOP class, sent as its own kind
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def result_kind(path: Path) -> str:
    """``seg``, ``sr``, ``ko`` (key images), ``capture`` (a Secondary Capture, or any image with burned-in
    annotation: the NOT FOR DIAGNOSIS outline series) or ``enhanced`` (any other image)."""
    try:
        sop_class = str(read_file_meta_info(path).MediaStorageSOPClassUID)
        burned_in = dcmread(path, stop_before_pixels=True, specific_tags=["BurnedInAnnotation"]).get(
            "BurnedInAnnotation", "")
    except (OSError, InvalidDicomError, AttributeError) as exc:
        raise SendError(f"Cannot read the SOP class of result file '{path}': {exc}.") from exc
    if sop_class == SEGMENTATION:
        return "seg"
    if sop_class == KEY_OBJECT_SELECTION:
        return "ko"
    if sop_class.startswith(SR_PREFIX):
        return "sr"
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or str(burned_in).upper() == "YES":
        return "capture"
    return "enhanced"


def wanted(profile: ViewerProfile, kind: str) -> bool:
    return {"seg": profile.send_seg, "sr": profile.send_sr, "ko": profile.send_ko,
            "capture": profile.secondary_capture, "enhanced": profile.send_enhanced}[kind]


def enqueue_results(
    outbox: Outbox, config: Config, files: Sequence[Path | str], destinations: Sequence[str],
    job_id: str | None = None,
) -> dict[str, list[int]]:
    """Queue each result file for each destination whose profile wants that kind of object; returns the
    outbox ids per destination. Unknown destination names raise :class:`ConfigError`."""
    kinds = {Path(f): result_kind(Path(f)) for f in files}
    queued: dict[str, list[int]] = {}
    for name in destinations:
        profile = config.destination(name).profile
        chosen = [f for f, kind in kinds.items() if wanted(profile, kind)]
        queued[name] = outbox.enqueue(name, chosen, "result", job_id=job_id) if chosen else []
    return queued
