"""Deterministic UIDs for result objects, so that a rerun replaces (never duplicates) what the PACS holds.

A UID is derived from (source series UID, pipeline, parameters hash, object kind, index): the same inputs
always give the same UID, any change of pipeline or parameters gives new ones.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydicom.uid import UID, generate_uid

from dicomnode.errors import OutputError

#: UID root used for derived objects (pydicom's registered root for generated UIDs).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."

#: Object kinds; each result object and series gets its own namespace.
KINDS = (
    "seg-series", "seg",
    "derived-series", "derived",
    "sr-series", "sr",
    "capture-series", "capture",
    "tracking",
    "ko-series", "ko",
)


def canonical_json(params: Any) -> str:
    """The canonical JSON of ``params``: sorted keys, no whitespace, non-JSON values as strings."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def params_hash(params: Any) -> str:
    """sha256 (hex) of the canonical JSON of the pipeline parameters."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


def derived_uid(
    source_series_uid: str,
    pipeline: str,
    params_digest: str,
    kind: str,
    index: int = 0,
    *,
    prefix: str = UID_PREFIX,
) -> UID:
    """A UID that depends only on its arguments (``kind`` is one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise OutputError(f"UID kind '{kind}' is unknown (known: {', '.join(KINDS)}).")
    if not source_series_uid:
        raise OutputError("Cannot derive result UIDs: the source Series Instance UID is empty.")
    entropy = [str(source_series_uid), pipeline, params_digest, kind, str(int(index))]
    return generate_uid(prefix=prefix, entropy_srcs=entropy)


class UIDFactory:
    """Binds the source series, pipeline and parameters hash: ``uids("seg")``, ``uids("derived", 3)``."""

    def __init__(self, source_series_uid: str, pipeline: str, params_digest: str, prefix: str = UID_PREFIX):
        self.source_series_uid = source_series_uid
        self.pipeline = pipeline
        self.params_digest = params_digest
        self.prefix = prefix

    def __call__(self, kind: str, index: int = 0) -> UID:
        return derived_uid(
            self.source_series_uid, self.pipeline, self.params_digest, kind, index, prefix=self.prefix
        )
