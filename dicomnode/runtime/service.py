"""The running node: config → database → spool → assembler → components → listener, and back down.

``start()``/``stop()`` are usable in process (tests); ``run_forever()`` (``dicomnode serve``) also
installs signal handlers: SIGTERM/SIGINT stop the node gracefully (stop accepting, let in-flight
associations finish, hand on queued events, stop components, close the database; exit status 0) and
SIGHUP calls the registered reload hooks.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Literal, Protocol

from dicomnode.assemble.assembler import Assembler, Event, QuietResolver
from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.errors import SpoolError
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.listener import Listener
from dicomnode.receive.receivers import ReceiverPool
from dicomnode.runtime.dispatch import EventDispatcher, ReadyHandler
from dicomnode.spool.index import SpoolIndex
from dicomnode.spool.journal import Journal, journal_folders, open_journal
from dicomnode.spool.recovery import index_replayed, recover, replay_journal
from dicomnode.spool.store import RECEIVE_SPARES, Spool

log = logging.getLogger(__name__)


class Component(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class Service:
    """One dicomnode instance: spool, index, assembler, dispatcher, ingest and listener, plus the components
    added before :meth:`start`. Build it with :func:`dicomnode.runtime.wiring.build_service`."""

    def __init__(
        self, config: Config, *, database: Database | None = None,
        quiet_resolver: QuietResolver | None = None, journal: Journal | None | Literal["config"] = "config",
    ) -> None:
        """The core stages on ``database`` (opened from the config when None); ``quiet_resolver`` gives a
        series' quiet period from the rules (the router's ``quiet_seconds_for``); ``journal`` is this
        process's receive journal (by default opened from ``storage.journal``; None: off)."""
        self.config = config
        self.database = database if database is not None else Database(config.storage.database_path)
        # this process's receive journal (None when off); receiver processes have their own
        self.journal = open_journal(config.storage, 0) if journal == "config" else journal
        self.spool = Spool(config.storage.spool_dir, fsync=config.storage.fsync, journal=self.journal,
                           spares=RECEIVE_SPARES)
        self.index = SpoolIndex(self.database, self.spool.root)
        self.assembler = Assembler(
            self.database, self.index, config.completion, self._emit, quiet_resolver=quiet_resolver
        )
        self.dispatcher = EventDispatcher(self.assembler)
        self.ingest = Ingest(
            self.spool, self.index, self.assembler, max_sequence_depth=config.node.max_sequence_depth,
            max_inflated_bytes=config.node.max_inflated_mb * 1024 * 1024,
        )
        self.listener = Listener(config.node, self.ingest, self.check_space)
        self.receivers = ReceiverPool(config, self.listener, self.ingest)  # node.receivers - 1 processes
        self._components: list[Component] = []
        self._started: list[Component] = []
        self._reload_hooks: list[Callable[[], None]] = []
        self._stop_requested = threading.Event()
        self._reload_requested = threading.Event()
        self._running = False

    # -- extension points -----------------------------------------------------------------------------
    def add_ready_handler(self, fn: ReadyHandler) -> None:
        """``fn(SeriesReady | StudyReady)`` runs on the dispatch thread for every completion."""
        self.dispatcher.handlers.append(fn)

    def add_component(self, obj: Component) -> None:
        """Started after the database/assembler (in order), stopped before them (in reverse order)."""
        self._components.append(obj)

    def add_reload_hook(self, fn: Callable[[], None]) -> None:
        """Called on SIGHUP (and by :meth:`reload`)."""
        self._reload_hooks.append(fn)

    def journal_backlog(self) -> tuple[int, float]:
        """(pending records, lag seconds) of every receiving process's journal: this process's own and
        the receiver processes' last reports (records summed, the oldest one's age)."""
        own = self.journal.backlog() if self.journal is not None else (0, 0.0)
        others = self.receivers.journal_backlog()
        return own[0] + others[0], max(own[1], others[1])

    def check_space(self) -> None:
        self.spool.check_space(self.config.storage.min_free_mb, self.config.storage.max_used_percent)

    def _emit(self, event: Event) -> None:
        self.dispatcher.put(event)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        self.dispatcher.start()
        self.assembler.start()
        try:
            for component in self._components:
                component.start()
                self._started.append(component)
            # the receiver processes join the port before any connection is served: until they listen,
            # every new association would land on this process (and compete with their start-up)
            self.listener.start(accept=self.receivers.count <= 1)
            self.receivers.start()
            self.listener.accept()
        except BaseException:
            self.stop()
            raise
        self._running = True

    def stop(self) -> None:
        """Stop accepting, finish in-flight associations, flush events, stop components, close the DB."""
        self.receivers.signal_stop()  # every process stops accepting at once, then each drains
        self.listener.stop(drain_seconds=self.config.node.dimse_timeout)
        self.receivers.stop()
        self.spool.close()  # (its spare files)
        if self.journal is not None:
            self.journal.stop()  # after the listeners: every handed-over file made durable first
        self.assembler.stop()
        self.dispatcher.stop()
        while self._started:
            component = self._started.pop()
            try:
                component.stop()
            except Exception:  # keep stopping the others; the failure is logged
                log.exception("Component %r failed to stop.", component)
        self.database.close()
        self._running = False

    def _recover(self) -> None:
        """Replay every receiving process's journal (also of receivers no longer configured, and when the
        journal is now off), then the spool recovery; then start this process's journal."""
        for folder in journal_folders(self.config.storage):
            journal = self.journal if self.journal is not None and folder == self.journal.directory else (
                Journal(folder))
            replay_journal(journal, self.spool, index_replayed(self.index))
        recover(self.spool, self.index)
        if self.journal is not None:
            try:
                self.journal.start()
            except SpoolError as exc:
                log.error("%s Instances are stored directly (file and folder fsync).", exc)

    def reload(self) -> None:
        for hook in list(self._reload_hooks):
            try:
                hook()
            except Exception:  # a failed reload keeps the previous state; the hook reports why
                log.exception("Reload hook %r failed.", hook)

    def run_forever(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully."""
        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, lambda *_: self._stop_requested.set()),
                (signal.SIGINT, lambda *_: self._stop_requested.set()),
                (signal.SIGHUP, lambda *_: self._reload_requested.set()),
            )
        }
        try:
            self.start()
            while not self._stop_requested.wait(0.2):
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    log.info("SIGHUP: reloading.")
                    self.reload()
            log.info("Stopping: no new associations; finishing in-flight transfers.")
        finally:
            if self._running:
                self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("Stopped.")
