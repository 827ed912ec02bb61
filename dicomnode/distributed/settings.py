"""The effective Celery settings of a node or worker, resolved once from :class:`~dicomnode.config.Config`.

Defaults that depend on other options are filled in here (the shared folder defaults to
``<storage.path>/jobs``, the hard limit to ``processing.job_timeout_seconds``, the soft limit to 90 % of
the hard one), and the rules that keep Celery out of its known traps are checked at start-up:

* the broker is Redis (``redis://``, ``rediss://`` or ``unix://``);
* the broker's ``visibility_timeout`` is at least 10 x the largest hard time limit, so that Redis never
  re-delivers a message whose job is still legitimately running.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from dicomnode.config import Config
from dicomnode.errors import ConfigError

VISIBILITY_FACTOR = 10.0
SOFT_FRACTION = 0.9
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
URGENT = "urgent"


@dataclass(frozen=True)
class CelerySettings:
    broker_url: str
    shared_dir: Path
    scratch_dir: Path | None
    soft_seconds: float
    hard_seconds: float
    limits: Mapping[str, tuple[float, float]]  # pipeline -> (soft, hard)
    visibility_timeout: float
    lease_seconds: float
    reconcile_seconds: float
    max_memory_kb: int
    urgent_rules: frozenset[str]
    queue_prefix: str
    itk_threads: int = 1
    pipelines_path: str = ""  # the site's pipelines folder (the same path on node and workers)

    @classmethod
    def from_config(cls, config: Config) -> CelerySettings:
        p = config.processing
        c = p.celery
        if not p.broker_url:
            raise ConfigError("processing.broker_url is required for the celery executor "
                              "(e.g. 'redis://127.0.0.1:6379/0').")
        if not p.broker_url.startswith(REDIS_SCHEMES):
            raise ConfigError(f"processing.broker_url '{redact(p.broker_url)}' is not a Redis URL; the "
                              f"celery executor needs Redis ({', '.join(REDIS_SCHEMES)}).")
        hard = float(c.hard_time_limit_seconds or p.job_timeout_seconds)
        soft = float(c.soft_time_limit_seconds or SOFT_FRACTION * hard)
        if soft >= hard:
            raise ConfigError(f"processing.celery.soft_time_limit_seconds ({soft:g}) must be below the hard "
                              f"limit ({hard:g}).")
        limits = {name: (t.soft_seconds, t.hard_seconds) for name, t in c.time_limits.items()}
        settings = cls(
            broker_url=p.broker_url,
            shared_dir=Path(c.shared_dir) if c.shared_dir is not None else config.storage.jobs_dir,
            scratch_dir=Path(c.scratch_dir) if c.scratch_dir is not None else None,
            soft_seconds=soft,
            hard_seconds=hard,
            limits=MappingProxyType(limits),
            visibility_timeout=float(c.visibility_timeout_seconds),
            lease_seconds=float(c.lease_seconds),
            reconcile_seconds=float(c.reconcile_seconds),
            max_memory_kb=int(c.worker_max_memory_mb) * 1024,
            urgent_rules=frozenset(c.urgent_rules),
            queue_prefix=c.queue_prefix,
            itk_threads=p.itk_threads,
            pipelines_path=str(config.pipelines_folder),
        )
        settings.check_visibility()
        return settings

    @property
    def largest_hard(self) -> float:
        return max([self.hard_seconds, *(hard for _, hard in self.limits.values())])

    def check_visibility(self) -> None:
        """Refuse a visibility timeout that would let Redis hand a running job to a second worker."""
        needed = VISIBILITY_FACTOR * self.largest_hard
        if self.visibility_timeout < needed:
            raise ConfigError(
                f"processing.celery.visibility_timeout_seconds is {self.visibility_timeout:g} s but must be "
                f"at least {VISIBILITY_FACTOR:g} x the largest hard time limit ({self.largest_hard:g} s), "
                f"i.e. {needed:g} s; otherwise Redis re-delivers jobs that are still running."
            )

    def limits_for(self, pipeline: str) -> tuple[float, float]:
        """(soft, hard) time limit in seconds for ``pipeline``."""
        return self.limits.get(pipeline, (self.soft_seconds, self.hard_seconds))

    def queue_for(self, pipeline: str, rule: str = "") -> str:
        return self.queue_name(URGENT if rule and rule in self.urgent_rules else pipeline)

    def queue_name(self, name: str) -> str:
        return f"{self.queue_prefix}.{name}"

    def default_queues(self, pipelines: Iterable[str]) -> list[str]:
        """The urgent queue first, then one queue per pipeline (those named in the time limits too)."""
        names = sorted(set(pipelines) | set(self.limits))
        return [self.queue_name(URGENT), *(self.queue_name(n) for n in names)]


def redact(url: str) -> str:
    """The broker URL without its password (never echoed in errors)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
