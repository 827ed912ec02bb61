"""The Celery message of one job attempt: small, JSON only, paths relative to the shared folder.

No DICOM bytes travel through the broker: the message names the job's ``in/`` and ``out/`` folders
(relative to ``processing.celery.shared_dir``, which node and workers may mount at different paths),
the sha256 of the input manifest, the pipeline with the version the node expects, its parameters, and a
deadline after which a worker drops the message instead of running it (the node will have moved on).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dicomnode.errors import DistributedError
from dicomnode.jobs import JobSpec

TASK_NAME = "dicomnode.run_attempt"


@dataclass(frozen=True)
class JobMessage:
    job_id: str
    attempt: int
    pipeline: str
    pipeline_version: str
    params: dict[str, Any]
    input_dir: str
    output_dir: str
    manifest_sha256: str
    deadline: float  # epoch seconds
    study_uid: str = ""
    series_uid: str = ""
    rule: str = ""
    ruleset_hash: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    prior: dict[str, Any] = field(default_factory=dict)  # the comparison request (JobSpec.prior)

    @classmethod
    def for_spec(cls, spec: JobSpec, *, pipeline_version: str, manifest_sha256: str,
                 deadline: float) -> JobMessage:
        return cls(
            job_id=spec.job_id, attempt=spec.attempt, pipeline=spec.pipeline,
            pipeline_version=pipeline_version, params=dict(spec.params),
            input_dir=f"{spec.job_id}/in", output_dir=f"{spec.job_id}/out",
            manifest_sha256=manifest_sha256, deadline=deadline, study_uid=spec.study_uid,
            series_uid=spec.series_uid, rule=spec.rule, ruleset_hash=spec.ruleset_hash,
            profile=dict(spec.profile), prior=dict(spec.prior),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> JobMessage:
        if not isinstance(data, dict):
            raise DistributedError(f"A job message must be a JSON object, not {type(data).__name__}.")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DistributedError(f"The job message has unknown fields {unknown}.")
        try:
            message = cls(**data)
        except TypeError as exc:
            raise DistributedError(f"The job message is incomplete: {exc}.") from exc
        if not isinstance(message.attempt, int) or message.attempt < 1:
            raise DistributedError(f"The job message's attempt {message.attempt!r} is not a positive "
                                   "integer.")
        if message.input_dir != f"{message.job_id}/in" or message.output_dir != f"{message.job_id}/out":
            raise DistributedError(f"The job message's folders '{message.input_dir}', '{message.output_dir}' "
                                   f"are not those of job '{message.job_id}'.")
        return message

    def spec(self, input_files: list[str], output_dir: str, pipelines_path: str = "") -> JobSpec:
        """The :class:`JobSpec` a worker runs: inputs and outputs in its local scratch."""
        return JobSpec(
            job_id=self.job_id, pipeline=self.pipeline, params=dict(self.params),
            input_files=tuple(input_files), output_dir=output_dir, study_uid=self.study_uid,
            series_uid=self.series_uid, rule=self.rule, ruleset_hash=self.ruleset_hash,
            attempt=self.attempt, profile=dict(self.profile), prior=dict(self.prior),
            pipelines_path=pipelines_path,
        )
