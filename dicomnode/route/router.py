"""The router: turns completed series/studies into recorded decisions and calls the injected actions.

Callbacks (injected, so the executor and the outbox stay behind small interfaces)::

    submit_job(spec: JobSpec, *, priority: int) -> object      # a pipeline run for a matched rule
    forward(files: Sequence[Path], destinations: Sequence[str], reason: str) -> object   # originals

Each fired rule is recorded in ``route_decisions`` before its action runs and marked ``done`` or
``failed`` (with the error) afterwards; ``discard`` and action-less rules are only recorded. A series no
rule (not even a fallback) matched is recorded with action ``unrouted``. Study-level rules are evaluated
on :class:`StudyReady` only when the rule set has some.

The node's own outputs (:mod:`dicomnode.route.ownership`) are never routed to a pipeline: only series rules
with ``own_outputs: forward`` apply to them; otherwise the decision is recorded as ``ignored`` with the
reason. Study rules see the study without its own-output series; a study that changed only by them (its other
instances were routed already) is ``ignored`` as well. A series the node itself asked a PACS to C-MOVE for a
comparison with a prior study (``retrieved_for``: series UID → the job that asked) is ``ignored`` too, and so
is a study all of whose series are such.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.errors import DicomNodeError, RuleError
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.jobs import JobSpec
from dicomnode.route.decisions import Decision, DecisionLog, DecisionState, RecordedDecision
from dicomnode.route.evaluate import EvalContext, rule_holds
from dicomnode.route.headers import HeaderCache, SeriesView, dicom_files
from dicomnode.route.ownership import GeneratedBy, series_own_output, study_own_outputs
from dicomnode.route.ruleset import LoadedRule, RuleSet
from dicomnode.route.watcher import RuleBook
from dicomnode.spool.index import SpoolIndex

log = logging.getLogger(__name__)


class SubmitJob(Protocol):
    def __call__(self, spec: JobSpec, *, priority: int) -> object: ...


class Forward(Protocol):
    def __call__(self, files: Sequence[Path], destinations: Sequence[str], reason: str) -> object: ...


def log_job_request(spec: JobSpec, *, priority: int) -> None:
    """Default ``submit_job`` until a pipeline executor is connected: the request is only logged."""
    log.warning(
        "No pipeline executor connected: job %s (pipeline %s, rule %s, priority %d) for series %s is "
        "recorded but not run.", spec.job_id, spec.pipeline, spec.rule, priority, spec.series_uid,
    )


def log_forward_request(files: Sequence[Path], destinations: Sequence[str], reason: str) -> None:
    """Default ``forward`` until the outbox is connected: the request is only logged."""
    log.warning(
        "No outbox connected: forwarding %d files to %s (%s) is recorded but not sent.",
        len(files), ", ".join(destinations), reason,
    )


def job_id_for(level: str, study_uid: str, series_uid: str, generation: int, rule: str) -> str:
    """Deterministic, so a re-delivered event asks for the same job (executors can deduplicate)."""
    key = f"{level}\0{study_uid}\0{series_uid}\0{generation}\0{rule}".encode()
    return hashlib.sha256(key).hexdigest()[:24]


class Router:
    """Consumes :class:`SeriesReady`/:class:`StudyReady` (``on_ready``) and resolves quiet periods."""

    def __init__(
        self,
        config: Config,
        database: Database,
        book: RuleBook,
        *,
        submit_job: SubmitJob = log_job_request,
        forward: Forward = log_forward_request,
        header_cache: HeaderCache | None = None,
        clock: Callable[[], float] = time.time,
        generated_by: GeneratedBy | None = None,
        retrieved_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.book = book
        self.decisions = DecisionLog(database, clock)
        self.index = SpoolIndex(database, config.storage.spool_dir)
        self.submit_job = submit_job
        self.forward = forward
        self.generated_by = generated_by  # series UID → the node's job that generated it (outbox)
        self.retrieved_for = retrieved_for  # series UID → the job that C-MOVEd it here (compare.retrieves)
        self.headers = header_cache or HeaderCache()
        self.clock = clock
        self.spool_root = config.storage.spool_dir
        self.jobs_dir = config.storage.jobs_dir
        self.called_ae = config.node.ae_title if config.node.require_called_aet else None
        self._quiet_lock = threading.Lock()
        self._quiet: dict[tuple[str, str], tuple[str, float | None, float, int]] = {}

    # -- events ---------------------------------------------------------------------------------------
    def on_ready(self, event: SeriesReady | StudyReady) -> list[RecordedDecision]:
        if isinstance(event, SeriesReady):
            return self.route_series(event)
        return self.route_study(event)

    def route_series(self, event: SeriesReady) -> list[RecordedDecision]:
        ruleset = self.book.current
        if self.retrieved_for is not None and (job := self.retrieved_for(event.series_uid)):
            return self._retrieved("series", ruleset, event.study_uid, event.series_uid, event.generation,
                                   f"series {event.series_uid} was retrieved by C-MOVE for the prior "
                                   f"comparison of job {job}")
        try:
            files = dicom_files(event.series_dir)
            if not files:
                raise RuleError(f"Series folder '{event.series_dir}' holds no instances.")
            view = SeriesView.from_files(
                files, self.headers,
                study_uid=event.study_uid, series_uid=event.series_uid,
            )
            ctx = self._context(view, event.study_uid, event.series_uid, event.series_dir.parent)
            ctx.own_output = series_own_output(view, self.generated_by)
        except DicomNodeError as exc:
            return self._unroutable(
                "series", event.study_uid, event.series_uid, event.generation, ruleset, exc
            )
        return self._decide("series", ruleset, ctx, event.generation)

    def route_study(self, event: StudyReady) -> list[RecordedDecision]:
        ruleset = self.book.current
        if ruleset is None or not ruleset.has_level("study"):
            return []
        if self.retrieved_for is not None and event.series_uids:
            jobs = {self.retrieved_for(uid) for uid in event.series_uids}
            if None not in jobs:
                return self._retrieved("study", ruleset, event.study_uid, "", event.generation,
                                       f"every series of study {event.study_uid} was retrieved by C-MOVE for "
                                       f"the prior comparison of job {', '.join(sorted(map(str, jobs)))}")
        try:
            views = [
                SeriesView.from_files(
                    dicom_files(event.study_dir / uid), self.headers,
                    study_uid=event.study_uid, series_uid=uid,
                )
                for uid in event.series_uids
            ]
            others, own = study_own_outputs(views, self.generated_by)
            subject = SeriesView.combine(others, event.study_uid)
            ctx = self._context(subject, event.study_uid, None, event.study_dir, others)
            ctx.own_output = self._study_own_output(event.study_uid, subject, own)
        except DicomNodeError as exc:
            return self._unroutable("study", event.study_uid, "", event.generation, ruleset, exc)
        return self._decide("study", ruleset, ctx, event.generation)

    def _study_own_output(
        self, study_uid: str, subject: SeriesView, own: Sequence[tuple[SeriesView, str]]
    ) -> str | None:
        """Why a study event is only about the node's own outputs (None: it has something new to route)."""
        if not own:
            return None
        first = own[0][1]
        if not subject.instance_count:
            return f"every series of the study is an output of this node ({len(own)}; first: {first})"
        routed = self.decisions.routed_instance_counts(study_uid, "study")
        if subject.instance_count in routed:
            return (
                f"the study changed only by {len(own)} series of this node's own outputs (first: {first}); "
                f"its other {subject.instance_count} instances were routed already"
            )
        return None

    # -- quiet period ---------------------------------------------------------------------------------
    def quiet_seconds_for(self, study_uid: str, series_uid: str) -> float | None:
        """The ``quiet_seconds`` of the first matching series rule that sets one (``None``: the default).

        Evaluated on the instances received so far, at most every 2 s per series and only again when
        more instances arrived (the assembler asks every check interval).
        """
        ruleset = self.book.current
        if ruleset is None or not any(
            r.rule.then.quiet_seconds is not None for r in ruleset.ordered("series")
        ):
            return None
        key, now = (study_uid, series_uid), self.clock()
        with self._quiet_lock:
            cached = self._quiet.get(key)
        if cached is not None and cached[0] == ruleset.sha256 and now - cached[2] < 2.0:
            return cached[1]
        series_dir = self.spool_root / study_uid / series_uid
        files = dicom_files(series_dir)
        if not files:
            return None
        if cached is not None and cached[0] == ruleset.sha256 and cached[3] == len(files):
            value = cached[1]
        else:
            value = None
            try:
                view = SeriesView.from_files(files, self.headers, study_uid=study_uid, series_uid=series_uid)
                ctx = self._context(view, study_uid, series_uid, series_dir.parent)
                for loaded in ruleset.evaluate("series", ctx).fired:
                    if loaded.rule.then.quiet_seconds is not None:
                        value = loaded.rule.then.quiet_seconds
                        break
            except DicomNodeError as exc:
                log.warning("Quiet period of series %s: rules not evaluated (%s).", series_uid, exc)
        with self._quiet_lock:
            if len(self._quiet) > 10000:
                self._quiet.clear()
            self._quiet[key] = (ruleset.sha256, value, now, len(files))
        return value

    # -- internals ------------------------------------------------------------------------------------
    def _context(
        self,
        subject: SeriesView,
        study_uid: str,
        series_uid: str | None,
        study_dir: Path,
        study_views: Sequence[SeriesView] | None = None,
    ) -> EvalContext:
        calling_ae, received_at = self._arrival(study_uid, series_uid)
        try:
            series_dirs = sorted(p for p in study_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            series_dirs = []

        def load_study() -> list[SeriesView]:
            if study_views is not None:
                return list(study_views)
            return [
                SeriesView.from_files(dicom_files(d), self.headers, study_uid=study_uid, series_uid=d.name)
                for d in series_dirs
            ]

        return EvalContext(
            subject=subject,
            series_in_study=len(study_views) if study_views is not None else max(len(series_dirs), 1),
            calling_ae=calling_ae,
            called_ae=self.called_ae,
            received_at=received_at,
            study_series=load_study,
        )

    def _arrival(self, study_uid: str, series_uid: str | None) -> tuple[str | None, datetime]:
        """The sender's AE title (most instances) and the last receive time, from the spool index."""
        senders = self.index.senders(study_uid, series_uid)
        if not senders:
            return None, datetime.fromtimestamp(self.clock())
        last = max(at for _, _, at in senders)
        return senders[0][0] or None, datetime.fromtimestamp(last)

    def _decide(
        self, level: str, ruleset: RuleSet | None, ctx: EvalContext, generation: int
    ) -> list[RecordedDecision]:
        subject = ctx.subject
        series_uid = subject.series_uid if level == "series" else ""
        if ruleset is None:
            reason = "no valid rule set is loaded: " + (self.book.last_error.splitlines()[0] or "none")
            return self._unroutable(level, subject.study_uid, series_uid, generation, None, reason)
        evaluation = ruleset.evaluate(level, ctx)
        decisions = [
            self._decision(level, ruleset, loaded, ctx, generation, series_uid) for loaded in evaluation.fired
        ]
        if not decisions and ctx.own_output:
            return self._ignored(level, ruleset, ctx, generation, series_uid, evaluation.held_if_not_own(ctx))
        if not decisions:
            decisions = [Decision(
                level, subject.study_uid, series_uid, generation, "", "", ruleset.sha256, "unrouted",
                instance_count=subject.instance_count, explanation="no rule matched and no fallback applies",
            )]
            log.info("%s %s matched no rule (rules %s).", level.capitalize(), series_uid or subject.study_uid,
                     ruleset.version)
        recorded = self.decisions.record(decisions)
        policies = {loaded.rule.name: loaded.rule.then.on_qc_fail for loaded in evaluation.fired}
        for item in recorded:
            self._execute(item, subject.files, policies.get(item.decision.rule) or "")
        return recorded

    def _decision(
        self, level: str, ruleset: RuleSet, loaded: LoadedRule, ctx: EvalContext, generation: int,
        series_uid: str,
    ) -> Decision:
        rule, action = loaded.rule, loaded.rule.then
        _, why = rule_holds(rule, ctx, explain=True)
        return Decision(
            level=level, study_uid=ctx.subject.study_uid, series_uid=series_uid, generation=generation,
            rule=rule.name, rule_file=Path(loaded.file).name, ruleset_hash=ruleset.sha256,
            action=action.kind, pipeline=action.pipeline, params=dict(action.params),
            destinations=tuple(action.send_to), priority=rule.priority, fallback=rule.fallback,
            quiet_seconds=action.quiet_seconds,
            job_id=job_id_for(level, ctx.subject.study_uid, series_uid, generation, rule.name)
            if action.pipeline else None,
            instance_count=ctx.subject.instance_count,
            explanation="\n".join(
                ([f"own output forwarded as the rule asks (own_outputs: forward): {ctx.own_output}"]
                 if ctx.own_output else []) + (why.lines() if why else [])),
        )

    def _execute(self, item: RecordedDecision, files: Sequence[Path], on_qc_fail: str = "") -> None:
        d = item.decision
        subject = d.series_uid or d.study_uid
        try:
            if d.pipeline:
                assert d.job_id is not None
                spec = JobSpec(
                    job_id=d.job_id, pipeline=d.pipeline, params=dict(d.params),
                    input_files=tuple(str(f) for f in files), output_dir=str(self.jobs_dir / d.job_id),
                    study_uid=d.study_uid, series_uid=d.series_uid, rule=d.rule, ruleset_hash=d.ruleset_hash,
                    destinations=d.destinations, pipelines_path=str(self.config.pipelines_folder),
                    on_qc_fail=on_qc_fail,
                )
                self.submit_job(spec, priority=d.priority)
            if d.action in ("forward", "pipeline+forward"):
                reason = f"rule {d.rule} (rules {d.ruleset_hash[:12]})"
                self.forward(list(files), list(d.destinations), reason)
        except Exception as exc:  # the action's failure becomes the decision's state (stage boundary)
            self.decisions.mark(item.id, DecisionState.FAILED, f"{type(exc).__name__}: {exc}")
            log.error("Rule %s on %s %s: action %s failed: %s", d.rule, d.level, subject, d.action, exc)
            return
        self.decisions.mark(item.id, DecisionState.DONE)
        log.info(
            "Routed %s %s by rule %s (rules %s): %s%s%s.", d.level, subject, d.rule or "-",
            d.ruleset_hash[:12] or "-", d.action, f" {d.pipeline}" if d.pipeline else "",
            f" → {', '.join(d.destinations)}" if d.destinations else "",
        )

    def _ignored(
        self, level: str, ruleset: RuleSet, ctx: EvalContext, generation: int, series_uid: str,
        would_match: Sequence[str],
    ) -> list[RecordedDecision]:
        """Record that the node's own output was not routed, with the reason (the decision is done)."""
        subject = ctx.subject
        reason = f"{ctx.own_output}. Own outputs are never routed to a pipeline"
        if would_match:
            reason += f" (rules whose conditions hold: {', '.join(would_match)})"
        reason += "; a series rule with own_outputs: forward forwards them."
        decision = Decision(
            level, subject.study_uid, series_uid, generation, "", "", ruleset.sha256, "ignored",
            instance_count=subject.instance_count, explanation=reason,
        )
        recorded = self.decisions.record([decision])
        for item in recorded:
            self.decisions.mark(item.id, DecisionState.DONE)
        log.info("%s %s ignored: %s", level.capitalize(), series_uid or subject.study_uid, reason)
        return recorded

    def _retrieved(
        self, level: str, ruleset: RuleSet | None, study_uid: str, series_uid: str, generation: int, why: str,
    ) -> list[RecordedDecision]:
        """Record that a series the node asked for (prior comparison, C-MOVE) is not routed as a new one."""
        reason = f"{why}; the comparison processes it, it is not routed as new (priors.method: c-move)"
        decision = Decision(level, study_uid, series_uid, generation, "", "",
                            ruleset.sha256 if ruleset else "", "ignored", explanation=reason)
        recorded = self.decisions.record([decision])
        for item in recorded:
            self.decisions.mark(item.id, DecisionState.DONE)
        log.info("%s %s ignored: %s", level.capitalize(), series_uid or study_uid, reason)
        return recorded

    def _unroutable(
        self, level: str, study_uid: str, series_uid: str, generation: int, ruleset: RuleSet | None,
        error: object,
    ) -> list[RecordedDecision]:
        decision = Decision(
            level, study_uid, series_uid, generation, "", "", ruleset.sha256 if ruleset else "", "unrouted",
            explanation=str(error),
        )
        recorded = self.decisions.record([decision])
        for item in recorded:
            self.decisions.mark(item.id, DecisionState.FAILED, str(error))
        log.error("%s %s could not be routed: %s", level.capitalize(), series_uid or study_uid, error)
        return recorded
