"""Run one job: load the series, run its pipeline, write the result package and ``result.json``.

:func:`run_job` is the processing boundary used by the worker pool, ``dicomnode process`` and any other
executor: every :class:`~dicomnode.errors.DicomNodeError` (bad input, unknown pipeline, failed step,
result writing) becomes a failed :class:`JobResult` whose ``error`` names the problem; a bug (any other
exception) is logged with its traceback and reported the same way, so the caller always gets a result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.config import ViewerProfile
from dicomnode.errors import DicomNodeError, PipelineError
from dicomnode.imaging.guards import InputRefused
from dicomnode.imaging.step import StepOutput, StepValue, format_estimate, image_of
from dicomnode.jobs import JobResult, JobSpec
from dicomnode.pipelines.registry import PipelineSpec, check_steps, get_pipeline

if TYPE_CHECKING:
    from dicomnode.pipelines.steps import Step

log = logging.getLogger(__name__)


@dataclass
class StepTiming:
    name: str
    use: str
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0  # user + system time of all the process's threads (compare under load)


@dataclass
class PipelineRun:
    """What :func:`execute` produced: the context (step id → the step's value: an image or a
    :class:`~dicomnode.imaging.step.StepOutput`) and per-step timings."""

    context: dict[str, StepValue]
    timings: list[StepTiming] = field(default_factory=list)
    estimates: dict[str, str] = field(default_factory=dict)  # "<step>.<key>" → value the step estimated

    def record_estimates(self, name: str) -> None:
        """Copy the estimates of step ``name``'s output into :attr:`estimates` (the job summary's text)."""
        value = self.context.get(name)
        if isinstance(value, StepOutput):
            for key, estimate in value.estimates.items():
                self.estimates[f"{name}.{key}"] = format_estimate(estimate)

    def image(self, name: str) -> Any:  # noqa: ANN401 - SimpleITK.Image
        """The image of step ``name``'s output."""
        return image_of(self.context[name])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def execute(
    spec: PipelineSpec, image: Any, registry: Mapping[str, Step] | None = None  # noqa: ANN401 - sitk.Image
) -> PipelineRun:
    """Run the steps of ``spec`` on ``image`` (a float32 SimpleITK image in real units) with the steps of
    ``registry`` (default: :func:`~dicomnode.pipelines.steps.step_registry`)."""
    if registry is None:
        from dicomnode.pipelines.steps import step_registry

        registry = step_registry()
    run = PipelineRun(context={"image": image})
    # free each image after its last use (a 512x512x300 float32 image is 300 MB); keep what the segments
    # and the enhanced series are built from, and the last step's output
    keep = {seg.source for seg in spec.segments} | ({spec.enhanced} if spec.enhanced else set())
    keep |= {w.organ for w in spec.windows if w.organ}
    keep |= {spec.steps[-1].id} if spec.steps else set()
    last_use: dict[str, int] = {}
    for i, step in enumerate(spec.steps):
        for name in (*step.inputs, *(v for _, v in step.keyword_inputs)):
            last_use[name] = i
    for i, step in enumerate(spec.steps):
        declared = registry.get(step.use)
        if declared is None:
            raise PipelineError(f"Pipeline '{spec.name}' step '{step.id}' uses unknown step '{step.use}'.")
        args = [run.context[name] for name in step.inputs]
        kwargs = {key: run.context[name] for key, name in step.keyword_inputs}
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            run.context[step.id] = declared.run(args, kwargs, step.params)
        except TypeError as exc:
            raise PipelineError(f"Step '{step.id}' ({step.use}) was given bad parameters: {exc}.") from exc
        except DicomNodeError as exc:
            raise type(exc)(f"Step '{step.id}' ({step.use}) failed: {exc}") from exc
        del args, kwargs
        run.timings.append(StepTiming(step.id, step.use, time.perf_counter() - started, peak_rss_mb(),
                                      time.process_time() - cpu_started))
        run.record_estimates(step.id)
        for name in [n for n in run.context if n not in keep and last_use.get(n, -1) <= i]:
            del run.context[name]
        log.debug("step %s (%s) took %.2f s", step.id, step.use, run.timings[-1].seconds)
    return run


def present_values(array: np.ndarray) -> list[Any]:
    """The values above 0 in ``array``, ascending (only those voxels are sorted: ``np.unique`` of a whole
    512x512x300 label map takes about half a second)."""
    return list(np.unique(array[array > 0]))


def build_segments(spec: PipelineSpec, context: Mapping[str, StepValue], shape: tuple[int, ...]) -> list:
    """The pipeline's declared segments as :class:`~dicomnode.outputs.api.Segment` objects.

    The masks are the planes of one (segments, slices, rows, columns) bool array, in segment order: the SEG
    writer takes that array as it is instead of stacking a copy (:func:`dicomnode.outputs.seg.mask_stack`).
    """
    import SimpleITK as sitk

    from dicomnode.outputs.api import Segment

    arrays: dict[str, np.ndarray] = {}
    planned: list[tuple[Any, np.ndarray, Any, str]] = []  # (declaration, source array, value, label)
    for seg in spec.segments:
        if seg.source not in arrays:  # a view: the context keeps its image alive until the end
            array = sitk.GetArrayViewFromImage(image_of(context[seg.source]))
            if array.shape != shape:
                raise PipelineError(
                    f"Segment source '{seg.source}' has shape {array.shape}, not the source grid {shape}; "
                    "map it back with grid.to_source."
                )
            arrays[seg.source] = array
        array = arrays[seg.source]
        if seg.each:
            planned.extend((seg, array, value, seg.label.format(n=n + 1))
                           for n, value in enumerate(present_values(array)))
        else:
            planned.append((seg, array, seg.value, seg.label))
    masks = np.empty((len(planned), *shape), dtype=bool)
    segments = []
    for seg, array, value, label in planned:
        mask = masks[len(segments)]
        if value is not None:
            np.equal(array, value, out=mask)
        else:
            np.greater(array, 0, out=mask)
        if not seg.each and not mask.any():
            if seg.required:
                raise PipelineError(
                    f"The pipeline found no {seg.label.lower()} (segment '{seg.source}' is empty)."
                )
            continue
        segments.append(Segment(label, seg.structure, mask, seg.color, seg.category))
    return segments


def compact_segments(segments: list) -> list:
    """``segments`` (a subset, in order, of what :func:`build_segments` made) with their masks moved to the
    first planes of the shared stack, so that the SEG still takes it without a copy; other lists as they
    are. The planes of segments left out are overwritten."""
    if not segments:
        return segments
    owner = segments[0].mask.base
    if not isinstance(owner, np.ndarray) or owner.ndim != 4 or not owner.flags.c_contiguous:
        return segments
    start, stride = owner.__array_interface__["data"][0], owner.strides[0]
    planes = []
    for segment in segments:
        mask = segment.mask
        offset = mask.__array_interface__["data"][0] - start
        if mask.base is not owner or mask.shape != owner.shape[1:] or offset % stride:
            return segments
        planes.append(offset // stride)
    if planes != sorted(set(planes)):
        return segments
    out = []
    for j, (segment, i) in enumerate(zip(segments, planes, strict=True)):
        if i != j:  # j < i: a plane is moved only onto one already left behind
            owner[j] = owner[i]
            segment = replace(segment, mask=owner[j])
        out.append(segment)
    return out


def process_volume(spec: PipelineSpec, volume: Any, job: JobSpec) -> tuple[Any, dict[str, Any]]:  # noqa: ANN401
    """Run ``spec`` on a :class:`~dicomnode.imaging.volume.Volume`; return (ProcessedSeries, summary)."""
    import SimpleITK as sitk

    from dicomnode import __version__
    from dicomnode.imaging.assess import assess, head_feet_axis
    from dicomnode.imaging.guards import check_input
    from dicomnode.imaging.qc import QCFlag
    from dicomnode.outputs.api import ProcessedSeries, Provenance

    image = volume.to_sitk()
    accepted = check_input(spec.accepts, image, volume.modality, pipeline=spec.name,  # before any step
                           volumetric=bool(spec.steps))
    run = execute(spec, image)
    del image
    segments = build_segments(spec, run.context, volume.shape)
    found = {s.structure for s in segments}
    missing = [d for d in spec.segments if not d.each and d.structure not in found]
    axial_axis = head_feet_axis(volume.direction)
    report, _ = assess(volume.array, volume.spacing, segments, is_ct=volume.modality == "CT",
                       axial_axis=axial_axis, absent=[d.structure for d in missing])
    report = with_lesion_search_limits(report, spec, run.estimates)
    report = with_nodule_search_limits(report, spec, run.estimates)
    for warning in accepted.get("warnings", ()):  # about the whole image: every segment carries it
        report = report.warning_all(QCFlag.IMPLAUSIBLE_INTENSITY, warning)
    report = report.withhold(withheld_labels(spec, report)).with_not_found(
        not_found_reasons([d.label for d in missing], volume.shape, volume.spacing, axial_axis))
    for reason in report.not_found.values():
        log.info("job %s: %s", job.job_id, reason)
    segments = [replace(s, qc=report.segments.get(s.label))
                for s in compact_segments([s for s in segments if s.label not in report.withheld])]
    for label, verdict in report.withheld.items():
        log.warning("job %s: %s is withheld (QC fail: %s); the rest of the result is sent", job.job_id, label,
                    "; ".join(verdict.reasons) or ", ".join(verdict.flags))
    enhanced = None
    if spec.enhanced:
        enhanced = sitk.GetArrayFromImage(run.image(spec.enhanced)).astype(np.float32, copy=False)
    windows = resolve_windows(spec, run.context, enhanced if enhanced is not None else volume.array)
    run.context.clear()  # the package is written from the arrays above
    params = {**spec.parameters()}
    provenance = Provenance(
        pipeline=spec.name,
        pipeline_version=spec.version,
        params=params,
        params_hash=params_hash(params),
        node_version=str(__version__),
        steps=tuple(f"{s.id} ({s.use})" for s in spec.steps),
        rule=job.rule,
        ruleset_hash=job.ruleset_hash,
    )
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    summary = {
        "pipeline": spec.name,
        "pipeline_version": spec.version,
        "steps": [t.__dict__ for t in run.timings],
        "segments": {s.label: _segment_summary(s, voxel_ml) for s in segments},
        "qc": report.to_json(),
        "estimates": run.estimates,
        "input": accepted,
    }
    if enhanced is not None:
        summary["enhancement"] = enhancement_summary(spec, volume, enhanced, segments)
    processed = ProcessedSeries(
        sources=volume.datasets,
        segments=tuple(segments),
        provenance=provenance,
        enhanced=enhanced,
        image=volume.array,
        spacing=volume.spacing,
        window=spec.window,
        qc=report,
        windows=windows,
        enhanced_values=spec.enhanced_values,
    )
    return processed, summary


def not_found_reasons(labels: list[str], shape: tuple[int, ...], spacing: tuple[float, ...],
                      axial_axis: int | None) -> dict[str, str]:
    """One sentence per declared segment that was not found: no contour of it is sent, and the reader is
    told so (with the head-feet coverage of the images) instead of being left to assume it was not sought."""
    if axial_axis is not None:
        coverage = f"the images cover {shape[axial_axis] * spacing[axial_axis]:.0f} mm head to feet"
    else:
        coverage = "the images are oblique to the head-feet axis"
    return {label: f"{label} was not found in this image ({coverage}): no contour or volume of it is sent. "
                   f"If it lies within the images, the pipeline missed it." for label in labels}


# a lesion search whose threshold (k_sigma × the noise left after smoothing) rises above twice the usual
# floor (min_contrast 20 HU) cannot see lesions of ordinary contrast: a low-dose or very noisy scan
LESION_SEARCH_LIMIT_HU = 40.0


def with_lesion_search_limits(report: Any, spec: PipelineSpec, estimates: Mapping[str, str]) -> Any:  # noqa: ANN401
    """``report`` with the organ searched by each ``lesions.detect`` step whose threshold exceeded
    :data:`LESION_SEARCH_LIMIT_HU` at least ``warn`` ``low_contrast``, saying so: 'no lesion' there does not
    rule lesions out (a 30 HU-noise scan's 20-60 HU metastases were all missed with nothing said); and
    at least ``warn`` with one reason (and the flag :data:`~dicomnode.imaging.lesions.DOUBTFUL` names) for
    each round candidate the step dropped for what it touches or where it lies (its ``doubtful`` estimate:
    a 25 mm lesion beside the portal vein was dropped as a piece of it, with nothing said)."""
    from dicomnode.imaging.lesions import DOUBT_SEPARATOR, DOUBTFUL
    from dicomnode.imaging.qc import QCFlag, QCStatus

    segments = dict(report.segments)
    for step in spec.steps:
        if step.use != "lesions.detect":
            continue
        host = dict(step.keyword_inputs).get("organ") or (step.inputs[1] if len(step.inputs) > 1 else None)
        hosts = [d.label for d in spec.segments if d.source == host and not d.each and d.label in segments]
        # round candidates the search dropped for what they touch or where they lie: named, never silent
        doubtful = [d for d in estimates.get(f"{step.id}.doubtful", "").split(DOUBT_SEPARATOR) if d]
        for label in hosts:
            for doubt in doubtful:
                flag = next((QCFlag(f) for reason, (f, _) in DOUBTFUL.items()
                             if doubt.endswith(f"({reason})")), QCFlag.LOW_CONTRAST)
                segments[label] = segments[label].adding(QCStatus.WARN, [flag], [
                    f"In {label}, {doubt}; a lesion there is not ruled out."])
        try:
            threshold = float(estimates.get(f"{step.id}.threshold", "nan"))
        except ValueError:
            continue
        if not threshold > LESION_SEARCH_LIMIT_HU:
            continue
        median = estimates.get(f"{step.id}.organ_median", "")
        for label in hosts:
            segments[label] = segments[label].adding(
                QCStatus.WARN, [QCFlag.LOW_CONTRAST],
                [f"Lesions were looked for in {label} only where they differ from its "
                 f"{median} HU by more than {threshold:.0f} HU (the image's noise sets that threshold): "
                 "lesions of lower contrast are not found, and finding none does not rule them out."])
    return replace(report, segments=segments)


# the lungs a lung.nodules step searched, by the side its limits name (lung.search_limits)
LUNG_SIDES = {"lung-right": "right", "lung-left": "left"}


def with_nodule_search_limits(report: Any, spec: PipelineSpec, estimates: Mapping[str, str]) -> Any:  # noqa: ANN401
    """``report`` with each lung searched by a ``lung.nodules`` step at least ``warn`` ``search_limited``
    where there is a concrete reason to doubt 'no nodule' in it: its slices are too thick for the smallest
    nodule the search promises (``<step>.limit_<side>_slices``), or the search dropped a round candidate
    in a region it cannot cover (``<step>.doubt_<side>_<region>``: the band against the mediastinum, the
    apex and diaphragm). The reasons then name every such region of that lung (``limit_<side>_<region>``)
    and the size it cannot promise there, and each dropped candidate: a nodule missed there leaves a flag
    that explains it. Without a concrete reason the lung's verdict is left as it is — those regions exist
    in every chest, and a standing warning is one a reader learns to ignore; the regions stay in the
    step's estimates (``result.json``)."""
    from dicomnode.imaging.qc import QCFlag, QCStatus

    segments = dict(report.segments)
    for step in spec.steps:
        if step.use != "lung.nodules":
            continue
        for declared in spec.segments:
            side = LUNG_SIDES.get(declared.structure)
            if side is None or declared.each or declared.label not in segments:
                continue
            limits = [text for key, text in estimates.items() if key.startswith(f"{step.id}.limit_{side}_")]
            doubts = [text for key, text in estimates.items() if key.startswith(f"{step.id}.doubt_{side}_")]
            if f"{step.id}.limit_{side}_slices" in estimates or doubts:
                segments[declared.label] = segments[declared.label].adding(
                    QCStatus.WARN, [QCFlag.SEARCH_LIMITED], [*limits, *doubts])
    return replace(report, segments=segments)


def withheld_labels(spec: PipelineSpec, report: Any) -> list[str]:  # noqa: ANN401 - qc.QCReport
    """Labels of the segments declared ``on_qc_fail: withhold`` whose verdict is ``fail``."""
    from dicomnode.imaging.qc import QCStatus

    withholdable = {s.label for s in spec.segments if s.on_qc_fail == "withhold"}
    return [label for label, qc in report.segments.items()
            if label in withholdable and qc.status == QCStatus.FAIL]


def _segment_summary(segment: Any, voxel_ml: float) -> dict[str, Any]:  # noqa: ANN401 - api.Segment
    """Voxels and volume of a segment; a truncated one's volume is a lower bound (volume_is_lower_bound)."""
    from dicomnode.imaging.qc import QCFlag

    voxels = int(np.count_nonzero(segment.mask))
    truncated = segment.qc is not None and QCFlag.TRUNCATED in segment.qc.flags
    return {"voxels": voxels, "volume_ml": voxels * voxel_ml, "volume_is_lower_bound": truncated}


def resolve_windows(spec: PipelineSpec, context: dict[str, Any], image: np.ndarray) -> tuple:
    """The pipeline's VOI windows with organ centres/widths measured in ``image`` (real units)."""
    import SimpleITK as sitk

    from dicomnode.outputs.api import Window

    windows = []
    for w in spec.windows:
        center, width = w.center, w.width
        if w.organ is not None:
            organ = sitk.GetArrayViewFromImage(image_of(context[w.organ])) > 0
            occupied = np.flatnonzero(organ.any(axis=(1, 2)))  # the organ's slab: the same values, in order
            slab = slice(int(occupied[0]), int(occupied[-1]) + 1) if occupied.size else slice(0, 0)
            values = image[slab][organ[slab]]
            if values.size == 0:
                log.warning("Window %s: organ '%s' is empty; the window is left out.", w.explanation, w.organ)
                continue
            low, median, high = np.percentile(values, [1, 50, 99])
            center = float(median) if center is None else center
            width = max(1.2 * float(high - low), 1.0) if width is None else width
        windows.append(Window(round(float(center), 1), round(float(width), 1), w.explanation))  # type: ignore[arg-type]
    return tuple(windows)


def enhancement_summary(spec: PipelineSpec, volume: Any, enhanced: np.ndarray, segments: list) -> dict:  # noqa: ANN401
    """What the enhancement did to each organ segment (``result.json`` ``enhancement``): mean, SD, CNR
    against the surrounding ring and edge 10-90 % width, before and after; the values' meaning."""
    from dicomnode.imaging.enhance import enhancement_report

    organs = {s.label: enhancement_report(volume.array, enhanced, s.mask, volume.spacing)
              for s in segments if s.category == "organ" and s.mask.any()}
    unit = "HU" if volume.modality == "CT" else "signal"
    if spec.enhanced_values != "quantitative":
        unit = "display"
    return {"values": spec.enhanced_values, "unit": unit, "organs": organs}


def run_job(spec: JobSpec, profile: ViewerProfile | None = None) -> JobResult:
    """Load ``spec.input_files``, run ``spec.pipeline`` with ``spec.params``, write the result objects
    (what ``profile``, else ``spec.profile``, else the default viewer profile asks for) and
    ``result.json`` into ``spec.output_dir``; never raises for a job that fails."""
    from dicomnode.imaging.volume import load_series
    from dicomnode.outputs.package import write_result_package

    started = time.perf_counter()
    output_dir = Path(spec.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        pipeline = get_pipeline(spec.pipeline, spec.pipelines_path or None).with_params(spec.params)
        check_steps(pipeline)
        if not pipeline.steps:  # forward: nothing to compute, the node sends the source series
            result = JobResult(spec.job_id, True, (), {"pipeline": pipeline.name, "seconds": 0.0})
        else:
            volume = load_series(spec.input_files)
            processed, summary = process_volume(pipeline, volume, spec)
            prior_files: list[Path] = []
            prior_evidence: tuple = ()
            if spec.prior:  # comparison with the patient's prior study (never fails the job)
                from dicomnode.compare.prior import compare_with_prior

                outcome = compare_with_prior(spec, pipeline, volume, processed, output_dir)
                summary["comparison"], prior_files = outcome.block, outcome.files
                prior_evidence = outcome.evidence
            if profile is None and spec.profile:
                profile = ViewerProfile(**spec.profile)
            files = write_result_package(processed, output_dir, profile, features=pipeline.sr_features,
                                         comparison=summary.get("comparison"), prior_evidence=prior_evidence)
            files = [*files, *prior_files]
            summary["seconds"] = time.perf_counter() - started
            summary["peak_rss_mb"] = peak_rss_mb()
            result = JobResult(spec.job_id, True, tuple(str(f) for f in files), summary)
    except InputRefused as exc:  # the same input is refused again: not worth a retry
        log.warning("Job %s (%s) refused its input: %s", spec.job_id, spec.pipeline, exc)
        result = JobResult(spec.job_id, False, summary={"refused": True}, error=str(exc))
    except DicomNodeError as exc:
        log.warning("Job %s (%s) failed: %s", spec.job_id, spec.pipeline, exc)
        result = JobResult(spec.job_id, False, error=str(exc))
    except Exception as exc:  # a bug: report it as the job's failure, with the traceback in the log
        log.exception("Job %s (%s) crashed", spec.job_id, spec.pipeline)
        result = JobResult(spec.job_id, False, error=f"Internal error in pipeline '{spec.pipeline}': "
                                                     f"{type(exc).__name__}: {exc}")
    try:
        result.write(output_dir)
    except OSError as exc:
        log.error("Cannot write result.json of job %s into %s: %s", spec.job_id, output_dir, exc)
    return result
