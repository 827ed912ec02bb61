"""The processing boundary: a job carries paths and parameters (JSON-serialisable), never live objects.

The local process pool, ``dicomnode process`` and a distributed executor all call
:func:`dicomnode.pipelines.runner.run_job` with a :class:`JobSpec` and get a :class:`JobResult` back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    pipeline: str
    params: dict[str, Any]
    input_files: tuple[str, ...]  # the source series' DICOM files
    output_dir: str  # where the result objects (.dcm) and result.json are written
    study_uid: str = ""
    series_uid: str = ""
    rule: str = ""  # the routing rule that asked for this job
    ruleset_hash: str = ""
    destinations: tuple[str, ...] = ()
    attempt: int = 1
    # what the job's destinations' viewers need (ViewerProfile fields); empty = the defaults
    profile: dict[str, Any] = field(default_factory=dict)
    on_qc_fail: str = ""  # the rule's policy for results whose QC failed ("hold"/"send"; "" = destination's)
    # comparison with a prior study (dicomnode.compare.prior.PriorRequest as JSON); empty = none
    prior: dict[str, Any] = field(default_factory=dict)
    pipelines_path: str = ""  # the site's pipelines folder (config pipelines.path); empty = shipped only

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        data["input_files"] = tuple(data.get("input_files", ()))
        data["destinations"] = tuple(data.get("destinations", ()))
        return cls(**data)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    ok: bool
    output_files: tuple[str, ...] = ()  # DICOM objects to send (SEG, derived images, SR, captures)
    summary: dict[str, Any] = field(default_factory=dict)  # measurements, step timings, ...
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        data = json.loads(text)
        data["output_files"] = tuple(data.get("output_files", ()))
        return cls(**data)

    def write(self, directory: Path) -> Path:
        path = Path(directory) / "result.json"
        path.write_text(self.to_json(), encoding="utf-8")
        return path
