"""The results preview of a processed series: thumbnails with the SEG's outlines, and its measurements."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.jobs import find_job, study_jobs
from dicomnode.console.preview import PLANES, Preview, sr_measurements, summary_measurements
from dicomnode.console.web import READ, Console, ConsoleDep
from dicomnode.errors import DicomNodeError

router = APIRouter(tags=["Result preview"], dependencies=READ)


def _rendered(console: Console, study_uid: str, job_id: str) -> Preview | None:
    job = find_job(console.node, study_uid, job_id)
    if job is None or job.seg is None:
        return None
    return console.previews.get(study_uid, job.series_uid, job.seg)


@router.get("/studies/{study_uid}/series/{series_uid}/preview", response_class=HTMLResponse)
def preview(request: Request, console: ConsoleDep, study_uid: str, series_uid: str,
            job: str = "") -> Response:
    node = console.node
    decisions = node.decisions.recent(500, study_uid)
    jobs = [j for j in study_jobs(node, study_uid, decisions, node.audit.events(study_uid))
            if j.series_uid == series_uid and j.seg is not None]
    chosen = next((j for j in jobs if j.job_id == job), jobs[-1] if jobs else None)
    if chosen is None:
        return console.render(request, "error.html", 404, title="No result",
                              message=f"Series '{series_uid}' has no processed result with a SEG.")
    error, result = "", None
    try:
        result = _rendered(console, study_uid, chosen.job_id)
    except DicomNodeError as exc:  # the page still shows the measurements
        error = str(exc)
    measurements, source = [], "SR" if chosen.sr else "result.json"
    try:
        measurements = sr_measurements(chosen.sr) if chosen.sr else summary_measurements(chosen.summary)
    except DicomNodeError as exc:
        error = error or str(exc)
    if not measurements and result is not None:
        measurements, source = result.volumes(), "SEG"
    return console.render(request, "preview.html", title="Result preview", active="Studies",
                          study_uid=study_uid, series_uid=series_uid, job=chosen, jobs=jobs,
                          result=result, planes=PLANES, measurements=measurements, error=error,
                          source=source)


@router.get("/preview/{study_uid}/{job_id}/{plane}.png")
def preview_png(console: ConsoleDep, study_uid: str, job_id: str, plane: str) -> Response:
    if plane not in PLANES:
        return Response(status_code=404)
    result = _rendered(console, study_uid, job_id)  # a rendering failure: the error handler answers
    if result is None:
        return Response(status_code=404)
    return Response(result.pngs[plane], media_type="image/png")
