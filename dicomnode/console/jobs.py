"""Pipeline jobs of a study as the console shows them: state, step timings, outputs, the SEG and SR.

Jobs are found from every trace the node keeps, so the page works whichever executor runs them:

* the router's decisions (``route_decisions.job_id``) and the console's own re-runs (audit ``operator``
  events with action ``rerun``);
* the jobs table (:meth:`JobStore.of_study`: series, pipeline, state, error, output folder, seconds);
* audit ``processed``/``failed`` events carrying the job id;
* the job folder ``<storage.path>/jobs/<job_id>/`` and its ``result.json``
  (:class:`dicomnode.jobs.JobResult`: ``output_files``; ``summary`` with the step timings under
  ``steps``/``timings``/``step_timings`` as ``{name: seconds}`` or ``[{"name", "seconds"}]``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.console.node import ConsoleNode
from dicomnode.jobs import JobResult
from dicomnode.outputs.package import CAPTURE_DIR, CAPTURE_FILE, DERIVED_DIR, KO_FILE, SEG_FILE, SR_FILE

log = logging.getLogger(__name__)

# the result package's stable names, so large derived series need not be read to be counted
_PACKAGE_KINDS = {SEG_FILE: "seg", SR_FILE: "sr", KO_FILE: "ko", DERIVED_DIR: "enhanced",
                  CAPTURE_FILE: "capture", CAPTURE_DIR: "capture"}


@dataclass
class JobView:
    job_id: str
    series_uid: str = ""
    pipeline: str = ""
    rule: str = ""
    state: str = "requested"
    error: str = ""
    steps: list[tuple[str, float]] = field(default_factory=list)
    seconds: float | None = None
    outputs: dict[str, int] = field(default_factory=dict)  # kind → files
    output_dir: Path | None = None
    seg: Path | None = None
    sr: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def parse_steps(value: Any) -> list[tuple[str, float]]:
    """Step timings from a result summary or a jobs row, in either documented shape."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return []
    steps: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for name, seconds in value.items():
            if isinstance(seconds, int | float):
                steps.append((str(name), float(seconds)))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                name = item.get("name") or item.get("step")
                seconds = item.get("seconds", item.get("duration"))
                if name is not None and isinstance(seconds, int | float):
                    steps.append((str(name), float(seconds)))
    return steps


def output_kind(path: Path) -> str:
    """``seg``, ``sr``, ``capture`` or ``enhanced`` (as the sender classifies results); ``other`` if
    unreadable."""
    from dicomnode.errors import SendError
    from dicomnode.send.results import result_kind

    try:
        return result_kind(path)
    except SendError:
        return "other"


def _read_result(view: JobView, jobs_dir: Path) -> None:
    folder = view.output_dir or jobs_dir / view.job_id
    if not folder.is_dir():
        return
    view.output_dir = folder
    result_file = folder / "result.json"
    files: list[Path] = []
    if result_file.is_file():
        try:
            result = JobResult.from_json(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("Cannot read %s: %s", result_file, exc)
        else:
            view.summary = dict(result.summary)
            if view.state in ("requested", "running", "queued"):
                view.state = "done" if result.ok else "failed"
            view.error = view.error or result.error
            files = [p if p.is_absolute() else folder / p for p in map(Path, result.output_files)]
            for key in ("steps", "timings", "step_timings"):
                if key in view.summary and not view.steps:
                    view.steps = parse_steps(view.summary[key])
            seconds = view.summary.get("seconds")
            if isinstance(seconds, int | float):
                view.seconds = float(seconds)
    if not files:
        files = sorted(folder.rglob("*.dcm"))
    for path in files:
        if not path.is_file():
            continue
        kind = _PACKAGE_KINDS.get(path.name) or _PACKAGE_KINDS.get(path.parent.name) or output_kind(path)
        view.outputs[kind] = view.outputs.get(kind, 0) + 1
        if kind == "seg" and view.seg is None:
            view.seg = path
        elif kind == "sr" and view.sr is None:
            view.sr = path
    if view.seconds is None and view.steps:
        view.seconds = sum(s for _, s in view.steps)


def _from_jobs_table(node: ConsoleNode, study_uid: str, views: dict[str, JobView]) -> None:
    assert node.jobs is not None
    for job in node.jobs.of_study(study_uid):
        view = views.setdefault(job.id, JobView(job.id))
        view.series_uid = job.series_uid or view.series_uid
        view.pipeline = job.pipeline or view.pipeline
        view.state = str(job.state or view.state)
        view.error = job.error or view.error or ""
        if job.spec.output_dir:
            view.output_dir = Path(job.spec.output_dir)
        if job.seconds is not None:
            view.seconds = float(job.seconds)


def study_jobs(
    node: ConsoleNode, study_uid: str, decisions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> list[JobView]:
    """Every job of the study, oldest request first (see the module docstring for the sources)."""
    views: dict[str, JobView] = {}
    for d in sorted(decisions, key=lambda d: d["id"]):
        if d.get("job_id"):
            views[d["job_id"]] = JobView(d["job_id"], d["series_uid"], d.get("pipeline") or "", d["rule"])
    for e in events:
        detail = e.get("detail") or {}
        if e["stage"] == "operator" and detail.get("action") == "rerun" and e.get("job_id"):
            views.setdefault(e["job_id"], JobView(
                e["job_id"], e.get("series_uid") or "", str(detail.get("pipeline", "")),
                str(detail.get("rule", "")),
            ))
    _from_jobs_table(node, study_uid, views)
    for e in events:
        job = views.get(e.get("job_id") or "")
        if job is None:
            continue
        detail = e.get("detail") or {}
        if e["stage"] == "processed":
            job.state = "done" if job.state in ("requested", "running", "queued") else job.state
            if isinstance(detail.get("seconds"), int | float):
                job.seconds = float(detail["seconds"])
        elif e["stage"] == "failed":
            job.state = "failed"
            job.error = job.error or str(detail.get("error", ""))
    for view in views.values():
        _read_result(view, node.config.storage.jobs_dir)
    return list(views.values())


def find_job(node: ConsoleNode, study_uid: str, job_id: str) -> JobView | None:
    decisions = [d for d in node.decisions.recent(500, study_uid) if d.get("job_id")]
    for job in study_jobs(node, study_uid, decisions, node.audit.events(study_uid)):
        if job.job_id == job_id:
            return job
    return None
