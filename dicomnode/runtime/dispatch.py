"""Hands completion events to the registered handlers on one worker thread.

Events are queued in process and delivered in order. A handler that raises is logged with the event's
identifiers and never stops the worker. Every line written while an event is handled carries its
``study_uid``/``series_uid``. After the handlers have run the event is marked handed on in
``assembly_events``; an event superseded meanwhile (its series re-opened or completed again) is dropped,
because the newer generation will be delivered instead.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable

from dicomnode.assemble.assembler import Assembler, Event
from dicomnode.events import SeriesReady
from dicomnode.observability.logging import log_context

log = logging.getLogger(__name__)

ReadyHandler = Callable[[Event], None]
_STOP = object()


def describe(event: Event) -> str:
    if isinstance(event, SeriesReady):
        return (
            f"series {event.series_uid} of study {event.study_uid} generation {event.generation} "
            f"({event.instance_count} instances, {event.reason})"
        )
    return f"study {event.study_uid} generation {event.generation} ({len(event.series_uids)} series)"


class EventDispatcher:
    def __init__(self, assembler: Assembler) -> None:
        self.assembler = assembler
        self.handlers: list[ReadyHandler] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dicomnode-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop; the rest stay pending in SQLite."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "Event handlers still busy after %.0f s; undelivered events are re-emitted on restart.",
                timeout,
            )
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self.deliver(item)  # type: ignore[arg-type]
            except sqlite3.Error:
                log.exception(
                    "Could not record the hand-on of %s; it is re-emitted on restart.", describe(item)
                )  # type: ignore[arg-type]

    def deliver(self, event: Event) -> None:
        """Run the handlers on ``event``; every line they write carries its ``study_uid``/``series_uid``."""
        with log_context(study_uid=event.study_uid, series_uid=getattr(event, "series_uid", None)):
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        if not self.assembler.is_current(event):
            log.info("Dropped superseded completion: %s.", describe(event))
            return
        kind = "Series" if isinstance(event, SeriesReady) else "Study"
        suffix = "" if self.handlers else " (no handler registered)"
        log.info("%s ready%s: %s.", kind, suffix, describe(event))
        for handler in list(self.handlers):
            try:
                handler(event)
            except Exception:  # a faulty handler must not stop the node; logged with identifiers
                log.exception(
                    "Handler %r failed on %s.", getattr(handler, "__qualname__", handler), describe(event)
                )
        self.assembler.mark_handed_on(event)
