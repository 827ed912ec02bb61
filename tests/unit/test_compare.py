"""Comparison plumbing: which jobs ask for a prior, the request they carry, the retry of a comparison the
source could not answer, the priors config checks, and the matching of findings across time points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.compare.findings import Finding, longest_axial_diameter, match_findings
from dicomnode.compare.prior import PriorRequest
from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.errors import ConfigError
from dicomnode.jobs import JobResult, JobSpec
from dicomnode.runtime.processing import Processing


class _Executor:
    def __init__(self) -> None:
        self.submitted: list[JobSpec] = []

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def submit(self, spec: JobSpec, on_done) -> None:  # noqa: ANN001
        self.submitted.append(spec)


def _config(tmp_path: Path, **priors: object) -> Config:
    return Config.model_validate({
        "storage": {"path": str(tmp_path / "data")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "priors": {"enabled": True, "source": "pacs", "rules": ["liver"], "retry_minutes": 0.001, **priors},
    })


def _spec(rule: str, tmp_path: Path, job_id: str = "job-1") -> JobSpec:
    return JobSpec(job_id, "liver-ct", {}, ("a.dcm",), str(tmp_path / "jobs" / job_id), rule=rule,
                   destinations=("pacs",))


def test_jobs_of_listed_rules_carry_the_prior_request_and_unavailable_comparisons_run_again(
    tmp_path: Path
) -> None:
    executor = _Executor()
    processing = Processing(_config(tmp_path), Database(tmp_path / "db.sqlite3"), executor=executor)
    processing.start()
    processing.submit(_spec("other", tmp_path, "job-0"))
    processing.submit(_spec("liver", tmp_path))
    plain, compared = executor.submitted
    assert plain.prior == {}
    request = PriorRequest.from_json(compared.prior)
    assert request.source_name == "pacs" and request.source["ae_title"] == "PACS"
    assert request.method == "c-get"
    assert request.spool_dir.endswith("spool")

    result = JobResult("job-1", True, (), {"comparison": {"status": "unavailable", "reason": "down"}})
    processing._on_done(result)
    import time

    deadline = time.monotonic() + 5
    while len(executor.submitted) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    retry = executor.submitted[2]
    assert retry.job_id == "job-1-cmp1" and retry.prior == compared.prior
    assert Path(retry.output_dir).name == "job-1-cmp1"
    processing.stop()


def _wait_for(condition, seconds: float = 5.0) -> None:  # noqa: ANN001
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_pending_comparison_retry_survives_a_restart_and_attempts_are_bounded(tmp_path: Path) -> None:
    """The retry is in the node database: a node stopped before it was due runs it after its restart; after
    three unavailable retries the comparison is given up, with the reason recorded."""
    from dicomnode.compare.retries import ComparisonRetries, RetryState

    config = _config(tmp_path, retry_minutes=0.02)  # 1.2 s
    executor = _Executor()
    first = Processing(config, Database(tmp_path / "db.sqlite3"), executor=executor)
    first.start()
    first.submit(_spec("liver", tmp_path))
    first._on_done(JobResult("job-1", True, (), {"comparison": {"status": "unavailable", "reason": "down"}}))
    first.stop()  # before the retry is due: a restart
    assert [s.job_id for s in executor.submitted] == ["job-1"]
    stored = ComparisonRetries(Database(tmp_path / "db.sqlite3")).get("job-1")
    assert stored.state == RetryState.PENDING and stored.reason == "down"
    assert stored.spec.job_id == "job-1-cmp1"

    executor = _Executor()
    second = Processing(config, Database(tmp_path / "db.sqlite3"), executor=executor)
    second.start()
    _wait_for(lambda: "job-1-cmp1" in [s.job_id for s in executor.submitted])
    assert "job-1-cmp1" in [s.job_id for s in executor.submitted]
    retries = second.comparison_retries
    # (marked running just after the submission)
    _wait_for(lambda: retries.get("job-1").state == RetryState.RUNNING)
    assert retries.get("job-1").state == RetryState.RUNNING
    for n in (1, 2, 3):  # every retry still unavailable
        second._on_done(JobResult(f"job-1-cmp{n}", True, (),
                                  {"comparison": {"status": "unavailable", "reason": f"down {n}"}}))
        if n < 3:
            _wait_for(lambda n=n: f"job-1-cmp{n + 1}" in [s.job_id for s in executor.submitted])
    second.stop()
    given_up = retries.get("job-1")
    assert given_up.state == RetryState.GIVEN_UP
    assert given_up.reason == "Comparison still unavailable after 3 retries: down 3"
    assert [s.job_id for s in executor.submitted].count("job-1-cmp3") == 1
    assert "job-1-cmp4" not in [s.job_id for s in executor.submitted]


def test_a_retry_that_compares_ends_the_schedule(tmp_path: Path) -> None:
    from dicomnode.compare.retries import ComparisonRetries, RetryState

    retries = ComparisonRetries(Database(tmp_path / "db.sqlite3"))
    spec = _spec("liver", tmp_path)
    retries.unavailable(spec, "down", 0.0, 3)
    (due,) = retries.due()
    retries.started(due)
    retries.finished(due.spec, "compared")
    assert retries.get("job-1").state == RetryState.DONE and retries.due() == []


def test_a_retry_whose_job_ended_before_it_was_marked_running_keeps_the_newer_state(tmp_path: Path) -> None:
    """The retry loop submits, then marks the retry running: a job that was unavailable again in between
    has scheduled the next retry, which must stay pending (else the schedule is stuck 'running')."""
    from dicomnode.compare.retries import ComparisonRetries, RetryState

    retries = ComparisonRetries(Database(tmp_path / "db.sqlite3"))
    retries.unavailable(_spec("liver", tmp_path), "down", 0.0, 3)
    (due,) = retries.due()
    retries.unavailable(due.spec, "down again", 0.0, 3)  # job-1-cmp1 ended first
    retries.started(due)
    after = retries.get("job-1")
    assert (after.state, after.attempts, after.reason) == (RetryState.PENDING, 1, "down again")
    assert [r.spec.job_id for r in retries.due()] == ["job-1-cmp2"]


def test_priors_need_a_configured_source(tmp_path: Path) -> None:
    from dicomnode.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("priors: {enabled: true, source: archive}\n")
    with pytest.raises(ConfigError, match="priors.source 'archive' is not a configured destination"):
        load_config(path, environ={})


def _finding(label: str, volume: float, centre: tuple[float, float, float], category: str = "lesion",
             diameter: float = 12.0) -> Finding:
    return Finding(label, category, volume, 50.0, diameter, centre)


def test_lesions_match_by_position_and_are_named_new_gone_grown_or_stable() -> None:
    prior = [_finding("Liver", 1500.0, (0, 0, 0), "organ"), _finding("Lesion 1", 2.0, (10, 10, 10)),
             _finding("Lesion 2", 1.0, (-40, 0, 0)), _finding("Lesion 3", 1.0, (0, 60, 0))]
    current = [_finding("Liver", 1480.0, (1, 1, 1), "organ"), _finding("Lesion 1", 4.0, (-38, 2, 0)),
               _finding("Lesion 2", 2.1, (12, 9, 10)), _finding("Lesion 3", 0.5, (80, 80, 80))]
    by_label = {m.label: m for m in match_findings(prior, current)}
    assert by_label["Liver"].status == "compared"
    assert by_label["Lesion 2"].prior.label == "Lesion 1" and by_label["Lesion 2"].status == "stable"
    assert by_label["Lesion 1"].prior.label == "Lesion 2" and by_label["Lesion 1"].status == "grown"
    assert by_label["Lesion 3"].status == "new" and by_label["Lesion 3 (prior)"].status == "gone"
    # with the registration's mapping, a prior lesion is looked for where it is now
    moved = {m.label: m for m in match_findings(prior, current, {"Lesion 3": (80, 80, 80)})}
    assert moved["Lesion 3"].status == "shrunk" and "Lesion 3 (prior)" not in moved


def test_longest_axial_diameter_of_a_disc_and_a_bar() -> None:
    disc = np.zeros((3, 64, 64), bool)
    yy, xx = np.ogrid[:64, :64]
    disc[1] = (yy - 32) ** 2 + (xx - 32) ** 2 <= 20**2
    assert longest_axial_diameter(disc, (2.0, 0.5, 0.5)) == pytest.approx(20.5, abs=0.6)
    bar = np.zeros((1, 10, 50), bool)
    bar[0, 4, 5:45] = True
    assert longest_axial_diameter(bar, (1.0, 1.0, 2.0)) == pytest.approx(80.0, abs=2.1)


def test_a_series_the_node_asked_to_c_move_is_not_routed_again(tmp_path: Path) -> None:
    """The comparison records its C-MOVE; the router records that series as ignored, with the reason, and
    routes any other series as usual; an old request no longer counts."""
    from dicomnode.compare.retrieves import TTL_SECONDS, PendingRetrieves
    from dicomnode.route.router import Router
    from tests.unit.test_route_ownership import decisions, make_node, spool

    config, db, plain, calls = make_node(tmp_path)
    clock = [1000.0]
    retrieves = PendingRetrieves(db, clock=lambda: clock[0])
    router = Router(config, db, plain.book, submit_job=calls.submit_job, forward=calls.forward,
                    retrieved_for=retrieves.requested_by)
    moved = spool(config, number=1, seed="prior")
    retrieves.expect(moved.study_uid, moved.series_uid, "job-7", "pacs")
    router.on_ready(moved)
    (row,) = decisions(db)
    assert (row["action"], row["state"], row["series_uid"]) == ("ignored", "done", moved.series_uid)
    assert "retrieved by C-MOVE for the prior comparison of job job-7" in row["explanation"]
    assert calls.jobs == [] and calls.forwards == []
    router.on_ready(spool(config, number=2, seed="new"))  # not asked for: routed
    assert len(calls.jobs) == 1
    clock[0] += TTL_SECONDS + 1
    assert retrieves.requested_by(moved.series_uid) is None
    db.close()


def test_prior_lesions_are_carried_into_the_current_patient_coordinates_by_registration() -> None:
    """The prior is the real CT moved 8 mm, -6 mm, 2 mm and turned 3 degrees: a prior lesion's centroid lands
    on the same anatomy in the current coordinates (within 1.5 mm; left as it was, it would be ~10 mm off)."""
    import SimpleITK as sitk

    from dicomnode.compare.prior import _carry
    from tests.variants import real_case

    current, _ = real_case()
    motion = sitk.Euler3DTransform()
    motion.SetCenter(current.TransformContinuousIndexToPhysicalPoint([n / 2 for n in current.GetSize()]))
    motion.SetRotation(0.0, 0.0, np.deg2rad(3.0))
    motion.SetTranslation((8.0, -6.0, 2.0))
    prior = sitk.Resample(current, current, motion, sitk.sitkLinear, -1024.0)  # prior(p) = current(motion(p))

    class Series:
        def __init__(self, image: sitk.Image) -> None:
            self.image = image

        def to_sitk(self) -> sitk.Image:
            return self.image

    points = [prior.TransformContinuousIndexToPhysicalPoint(ijk) for ijk in ((300, 250, 10), (150, 300, 5))]
    lesions = [Finding(f"Lesion {n}", "lesion", 1.0, -10.0, 12.0, tuple(p)) for n, p in enumerate(points, 1)]
    carried = _carry([*lesions, Finding("Liver", "organ", 1500.0, 100.0, 200.0, (0.0, 0.0, 0.0))],
                     Series(prior), Series(current))
    assert set(carried) == {"Lesion 1", "Lesion 2"}
    for lesion in lesions:
        truth = np.array(motion.TransformPoint(lesion.centroid))
        assert np.linalg.norm(np.array(carried[lesion.label]) - truth) < 1.5, (lesion.label, carried)
