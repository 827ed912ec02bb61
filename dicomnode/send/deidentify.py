"""De-identification for destinations with ``deidentify: true`` (PS3.15 Basic Application Level
Confidentiality Profile, with pydicom).

Pseudonyms are keyed hashes (HMAC-SHA256 with ``security.deidentification_secret``) of the original
values, so every instance of a study maps to the same study/series/frame-of-reference UIDs and the same
patient pseudonym, references between objects (SEG → source images, SR → SEG) stay consistent, and the
mapping cannot be reversed or recomputed without the secret. Images whose BurnedInAnnotation is YES are
refused: the profile cannot remove text burned into pixels.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Callable

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicomnode.errors import SendError
from dicomnode.send.confidentiality import BASIC_PROFILE

METHOD = "PS3.15 Basic Profile, keyed-hash pseudonyms (dicomnode)"  # LO: at most 64
_CODES = (("113100", "Basic Application Confidentiality Profile"),)
_DUMMY_BY_VR = {
    "PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000.000000",
    "AS": "000Y", "CS": "ANONYMIZED", "UI": "2.25.0",
}
_NUMERIC_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}


class DeidentificationRefused(SendError):
    """An instance cannot be de-identified safely (e.g. burned-in annotation); do not send it."""


def pseudonymous_uid(secret: bytes, uid: str) -> str:
    """``2.25.<128-bit integer>`` from HMAC-SHA256(secret, uid): stable, unique, irreversible."""
    digest = hmac.new(secret, f"uid:{uid}".encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(secret: bytes, kind: str, value: str) -> str:
    """A short stable pseudonym (16 hex digits) for an identifier of the given kind."""
    return hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16].upper()


class Deidentifier:
    """Applies the basic profile to datasets (a new copy each time; the input is not modified)."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise SendError("De-identification needs a non-empty security.deidentification_secret.")
        self._secret = secret.encode("utf-8")

    def deidentify(self, ds: Dataset) -> Dataset:
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise DeidentificationRefused(
                f"SOP instance '{ds.get('SOPInstanceUID', '?')}' has BurnedInAnnotation 'YES': burned-in "
                "text cannot be removed by the basic confidentiality profile, so it is not sent to a "
                "de-identifying destination."
            )
        original_patient_id = str(ds.get("PatientID", ""))
        out = copy.deepcopy(ds)
        patient = pseudonym(self._secret, "patient", original_patient_id)
        self._clean(out, patient)
        out.remove_private_tags()
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in _CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(codes)
        out.LongitudinalTemporalInformationModified = "REMOVED"
        if hasattr(ds, "file_meta"):
            out.file_meta = copy.deepcopy(ds.file_meta)
            if "SOPInstanceUID" in out:
                out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        return out

    def _clean(self, ds: Dataset, patient: str) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            if _is_curve_or_overlay(tag):
                del ds[tag]
                continue
            action = BASIC_PROFILE.get(keyword_for_tag(tag) or "")
            if action is None:
                if elem.VR == "SQ":
                    self._clean_items(elem, patient)
                continue
            if action == "X":
                del ds[tag]
            elif action == "Z":
                elem.value = Sequence([]) if elem.VR == "SQ" else None
            elif elem.VR == "SQ":  # D or U on a sequence: keep it, clean its items
                self._clean_items(elem, patient)
            elif action == "U":
                elem.value = self._map_value(elem, lambda v: pseudonymous_uid(self._secret, v))
            else:  # D
                elem.value = self._dummy(elem, patient)

    def _clean_items(self, elem: DataElement, patient: str) -> None:
        for item in elem.value:
            self._clean(item, patient)

    @staticmethod
    def _map_value(elem: DataElement, fn: Callable[[str], str]) -> object:
        if elem.value is None or elem.value == "":
            return elem.value
        if elem.VM > 1:
            return [fn(str(v)) for v in elem.value]
        return fn(str(elem.value))

    def _dummy(self, elem: DataElement, patient: str) -> object:
        keyword = keyword_for_tag(elem.tag)
        if keyword == "PatientID":
            return f"ANON{patient}"
        if keyword == "PatientName":
            return f"ANONYMOUS^{patient}"
        if elem.VR in _NUMERIC_VRS:
            return 0
        return _DUMMY_BY_VR.get(elem.VR, "ANONYMIZED")


def require_deidentifier(name: str, deidentify: bool, deidentifier: Deidentifier | None) -> None:
    """A destination with ``deidentify: true`` cannot be built without the secret's :class:`Deidentifier`."""
    if deidentify and deidentifier is None:
        raise SendError(
            f"Destination '{name}' has deidentify: true but no de-identification secret is configured "
            "(security.deidentification_secret)."
        )


def _is_curve_or_overlay(tag: BaseTag) -> bool:
    group, element = tag.group, tag.element
    return 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and element in (0x3000, 0x4000))
