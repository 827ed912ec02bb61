"""Operator actions from the console; each is recorded in the audit trail (stage ``operator``) with the
user's name before it returns.

* **re-run**: a recorded pipeline decision is submitted again through the router's ``submit_job`` as a new
  job (``<job id>-r<unix time>``; outputs have deterministic UIDs, so the PACS replaces, never duplicates);
* **re-send**: everything the outbox delivered (or gave up on) for the study is queued again for its
  destination; entries waiting for a retry are retried now; pending ones are left alone;
* **discard**: the study's pending and dead deliveries are dropped (nothing more is sent for it; entries
  being sent right now finish). The spool files stay until retention removes them;
* queue **retry** / **retry failed** / **purge** (the ``dicomnode queue`` commands).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from dicomnode.console.node import ConsoleNode
from dicomnode.console.studies import study_outbox
from dicomnode.errors import ConsoleError, PipelineError
from dicomnode.jobs import JobSpec
from dicomnode.send.outbox import PENDING, Origin, OutboxItem, OutboxState

log = logging.getLogger(__name__)


class Actions:
    def __init__(self, node: ConsoleNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.clock = clock

    def _audit(self, action: str, user: str, study_uid: str, **detail: object) -> None:
        job_id = detail.pop("job_id", None)
        series_uid = detail.pop("series_uid", None)
        self.node.audit.record("operator", study_uid, series_uid=str(series_uid or "") or None,
                               job_id=str(job_id or "") or None,
                               detail={"action": action, "user": user, **detail})
        log.info("Console user %s: %s on study %s %s", user, action, study_uid, detail or "",
                 extra={"study_uid": study_uid})

    def rerun(self, study_uid: str, decision_id: int, user: str) -> str:
        """Submit the pipeline of decision ``decision_id`` again; returns the new job id."""
        row = self.node.decisions.get(decision_id, study_uid)
        if row is None or not row["pipeline"]:
            raise ConsoleError(
                f"Decision {decision_id} of study '{study_uid}' ran no pipeline; nothing to re-run.")
        submit = self.node.submit_job
        if submit is None:
            raise ConsoleError("No pipeline executor is connected to this console (it is not running inside "
                               "the node); nothing was submitted.")
        if row["series_uid"]:
            files = self.node.index.series_files(study_uid, row["series_uid"])
        else:
            files = [f for s in self.node.index.series_of(study_uid)
                     for f in self.node.index.series_files(study_uid, s.series_uid)]
        if not files:
            raise ConsoleError(f"The instances of study '{study_uid}' are no longer in the spool.")
        base = row["job_id"] or f"decision{decision_id}"
        job_id = f"{base}-r{int(self.clock())}"
        spec = JobSpec(
            job_id=job_id, pipeline=row["pipeline"], params=dict(row["params"]),
            input_files=tuple(str(f) for f in files),
            output_dir=str(self.node.config.storage.jobs_dir / job_id), study_uid=study_uid,
            series_uid=row["series_uid"], rule=row["rule"], ruleset_hash=row["ruleset_hash"],
            destinations=tuple(row["destinations"]),
            pipelines_path=str(self.node.config.pipelines_folder),
        )
        previous = self._previous_spec(row["job_id"])
        if previous is not None:  # the rule's policies travel with the job (on_qc_fail, prior comparison)
            spec = replace(spec, on_qc_fail=previous.on_qc_fail, prior=previous.prior)
        self._audit("rerun", user, study_uid, job_id=job_id, series_uid=row["series_uid"],
                    pipeline=row["pipeline"], rule=row["rule"], decision=decision_id,
                    previous_job=row["job_id"])
        submit(spec, priority=int(row["priority"] or 0))
        return job_id

    def _previous_spec(self, job_id: str | None) -> JobSpec | None:
        """The spec the decision's job ran with, when the jobs table still has it."""
        if not job_id or self.node.jobs is None:
            return None
        try:
            return self.node.jobs.get(job_id).spec
        except PipelineError:  # the job was forgotten (retention): the decision alone is re-run
            return None

    def resend(self, study_uid: str, user: str, destination: str | None = None) -> int:
        """Queue the study's delivered/dead objects again (retry the failed ones now); returns how many."""
        latest: dict[tuple[str, str], OutboxItem] = {}
        for item in study_outbox(self.node, study_uid):
            if destination and item.destination != destination:
                continue
            latest[(item.destination, item.sop_instance_uid)] = item
        if not latest:
            where = f" and destination '{destination}'" if destination else ""
            raise ConsoleError(f"Nothing was queued for study '{study_uid}'{where}; nothing to re-send.")
        groups: dict[tuple[str, Origin, str | None], list[Path]] = {}
        retried = 0
        missing = []
        for item in latest.values():
            if item.state == OutboxState.FAILED:
                self.node.outbox.retry(item.id)
                retried += 1
            elif item.state not in PENDING:
                path = item.file_path
                if not path.is_file():
                    missing.append(str(path))
                    continue
                key = (item.destination, item.origin, item.job_id)
                groups.setdefault(key, []).append(path)
        if missing:
            raise ConsoleError(f"{len(missing)} file(s) to re-send are gone (e.g. '{missing[0]}'); "
                               "nothing was queued.")
        queued = 0
        for (dest, origin, job_id), files in groups.items():
            queued += len(self.node.outbox.enqueue(dest, files, origin, job_id=job_id))
        self._audit("resend", user, study_uid, destination=destination or "all", queued=queued,
                    retried=retried)
        return queued + retried

    def discard(self, study_uid: str, user: str) -> int:
        """Drop the study's pending and dead deliveries; returns how many entries were removed."""
        removed = sum(self.node.outbox.purge(state, study_uid=study_uid)
                      for state in (OutboxState.QUEUED, OutboxState.FAILED, OutboxState.DEAD))
        self._audit("discard", user, study_uid, outbox_entries_removed=removed)
        return removed

    def retry(self, item_id: int, user: str) -> None:
        item = self.node.outbox.retry(item_id)
        if item.study_uid:
            self._audit("retry", user, item.study_uid, outbox_id=item_id, destination=item.destination)

    def retry_failed(self, destination: str | None, user: str) -> int:
        count = self.node.outbox.retry_failed(destination or None)
        log.info("Console user %s: retried %d failed/dead outbox entries (%s).", user, count,
                 destination or "all destinations")
        return count

    def purge(self, state: str | None, destination: str | None, user: str) -> int:
        count = self.node.outbox.purge(state or None, destination or None)
        log.info("Console user %s: purged %d outbox entries (state %s, destination %s).", user, count,
                 state or "sent+dead", destination or "all")
        return count

