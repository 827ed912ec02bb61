"""What a pipeline hands to the result writers (SEG, derived series, SR, captures).

Arrays are on the source grid in sorted-slice order: axis 0 follows the source datasets as sorted by
position along the slice normal (the same order as ``ProcessedSeries.sources``), axes 1/2 are rows/columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import Dataset

from dicomnode.imaging.qc import QCReport, SegmentQC


@dataclass(frozen=True)
class Segment:
    label: str  # shown to the radiologist: "Liver", "Lung", "Left lung", "Lesion 1"
    structure: str  # coded-concept key (outputs.codes): liver, spleen, lung, lung-left, brain, neoplasm, ...
    mask: np.ndarray  # bool, shape (slices, rows, columns)
    color: tuple[int, int, int] = (255, 0, 0)  # display colour, RGB 0-255
    category: str = "organ"  # organ | lesion | tissue
    qc: SegmentQC | None = None  # the pipeline's verdict on this segment (None: not assessed)


@dataclass(frozen=True)
class Window:
    """One VOI window of a derived series (WindowCenter/Width + WindowCenterWidthExplanation)."""

    center: float
    width: float
    explanation: str = ""


#: What the enhanced series' pixel values mean: ``quantitative`` keeps the source's units (HU for CT:
#: only quantitative-safe processing); ``display`` values are for viewing only (RescaleType US).
ENHANCED_VALUES = ("quantitative", "display")


@dataclass(frozen=True)
class Provenance:
    pipeline: str
    pipeline_version: str
    params: dict[str, Any]
    params_hash: str  # sha256 of the canonical JSON of params (see outputs.uids)
    node_version: str
    steps: tuple[str, ...] = ()  # human-readable step names, in order (DerivationDescription)
    rule: str = ""
    ruleset_hash: str = ""


@dataclass(frozen=True)
class ProcessedSeries:
    sources: tuple[Dataset, ...]  # source datasets sorted as the volume's slices (pixel data may be omitted)
    segments: tuple[Segment, ...]
    provenance: Provenance
    enhanced: np.ndarray | None = None  # float, real units (HU for CT), shape (slices, rows, columns)
    image: np.ndarray | None = None  # the source volume in real units, same shape (for quantification)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (slice, row, column) spacing in mm
    window: tuple[float, float] | None = None  # (centre, width): one window, when ``windows`` is empty
    windows: tuple[Window, ...] = ()  # VOI windows of the enhanced series, the default (organ) window first
    enhanced_values: str = "quantitative"  # one of ENHANCED_VALUES
    measurements: dict[str, dict[str, float]] = field(default_factory=dict)  # per segment label
    qc: QCReport | None = None  # verdicts per segment label (also in result.json)
