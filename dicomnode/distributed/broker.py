"""What the node and the workers read from, and tell each other through, the Redis broker — besides the
Celery messages themselves.

* Events: a worker publishes ``{"event": "claimed"|"committed"|"failed", "job_id", "attempt", "worker"}``
  on ``<queue_prefix>.events`` so the node's collector looks at that job at once. Events are hints: a
  lost one only delays the collector until its next full scan of the shared folder.
* Queue depth: the length of each queue's Redis list (kombu keeps one list per queue and priority step).
* Presence: the task ids of every message still waiting in a queue or delivered but unacknowledged
  (kombu's ``unacked`` hash), so the reconciler can tell a message that vanished (Redis flushed or
  restarted without its append-only file) from one that is merely waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable

import redis

log = logging.getLogger(__name__)

PRIORITY_SEPARATOR = "\x06\x16"  # kombu.transport.redis: queue key of priority step p > 0 is name + sep + p
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"
BROKER_ERRORS = (redis.RedisError, OSError)


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def _task_id(raw: bytes | str) -> str | None:
    """The Celery task id of one kombu message as stored in Redis (a queue entry or an unacked entry)."""
    try:
        data = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if isinstance(data, list) and data:  # unacked: [message, exchange, routing_key]
        data = data[0]
    if not isinstance(data, dict):
        return None
    headers = data.get("headers") or {}
    task_id = headers.get("id") or (data.get("properties") or {}).get("correlation_id")
    return str(task_id) if task_id else None


class Broker:
    """A small Redis client for the node's and the workers' side channels."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.channel = f"{prefix}.events"
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def publish(self, event: str, job_id: str, attempt: int, worker: str = "") -> None:
        """Best effort: the collector's full scans find what a lost event would have announced."""
        payload = json.dumps({"event": event, "job_id": job_id, "attempt": attempt, "worker": worker})
        try:
            self.client.publish(self.channel, payload)
        except BROKER_ERRORS as exc:
            log.warning("Cannot publish the %s event of job %s attempt %d: %s", event, job_id, attempt, exc)

    def queue_depth(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages waiting per queue (raises a broker error when Redis cannot be reached)."""
        pipe = self.client.pipeline(transaction=False)
        names = list(queues)
        for queue in names:
            for key in queue_keys(queue):
                pipe.llen(key)
        counts = pipe.execute()
        steps = len(PRIORITY_STEPS)
        return {q: int(sum(counts[i * steps:(i + 1) * steps])) for i, q in enumerate(names)}

    def present_task_ids(self, queues: Iterable[str]) -> set[str]:
        """Task ids of messages waiting in ``queues`` or delivered and not yet acknowledged."""
        found: set[str] = set()
        for queue in queues:
            for key in queue_keys(queue):
                for raw in self.client.lrange(key, 0, -1):
                    task_id = _task_id(raw)
                    if task_id:
                        found.add(task_id)
        for raw in self.client.hvals(UNACKED_KEY):
            task_id = _task_id(raw)
            if task_id:
                found.add(task_id)
        return found

    def listen(self, on_event: Callable[[dict], None], stopping: threading.Event, retry: float = 1.0) -> None:
        """Call ``on_event`` for each event until ``stopping`` is set; reconnects after broker errors."""
        while not stopping.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                while not stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        event = json.loads(message["data"])
                    except (ValueError, TypeError):
                        log.warning("Ignoring a malformed worker event: %r", message["data"][:200])
                        continue
                    if isinstance(event, dict):
                        on_event(event)
            except BROKER_ERRORS as exc:
                log.debug("Worker event subscription interrupted (%s); reconnecting.", exc)
                stopping.wait(retry)
            finally:
                with contextlib.suppress(*BROKER_ERRORS):
                    pubsub.close()

    def close(self) -> None:
        self.client.close()
