"""Events handed from one stage to the next (assembly → routing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SeriesReady:
    """A series is complete (quiet period passed, or its content proves it complete)."""

    study_uid: str
    series_uid: str
    instance_count: int
    generation: int  # 1 for the first completion, +1 each time late instances re-open the series
    reason: str  # "quiet" | "content" | "recovered"
    series_dir: Path  # <spool>/<StudyInstanceUID>/<SeriesInstanceUID>


@dataclass(frozen=True)
class StudyReady:
    """All series of a study are complete and the study quiet period has passed."""

    study_uid: str
    series_uids: tuple[str, ...]
    generation: int
    study_dir: Path  # <spool>/<StudyInstanceUID>
