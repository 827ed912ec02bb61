"""More receiver processes on the node's DICOM port (``node.receivers``), so receiving scales with cores.

The node's own :class:`~dicomnode.receive.listener.Listener` binds the port with ``SO_REUSEPORT``; the
:class:`ReceiverPool` then starts ``receivers - 1`` processes (``spawn``) that each bind the same port and
run a listener of their own: the kernel spreads new connections over all of them. Each process has its
own spool writer (the file and directory fsyncs happen there) and hands each stored instance's index row
to the main process, which commits it with the rows of its own and the other receivers' instances in one
group commit (one SQLite writer, no lock waits between processes) and answers when it is committed:
every Success is still sent only after that instance's file, directory entry and index row are durable.
The completion timers, routing and everything else stay in the main process.

What the receivers see reaches the main process over a pipe, and there the same observers as for the
node's own listener (metrics): accepted/refused associations, space checks, stored and failed instances.
An N-EVENT-REPORT (storage commitment) received by a receiver is handed to the main process's observers
and answered with their verdict.

A receiver that dies (kill -9, a crash) loses only what it had not acknowledged: its ``.part`` files are
removed by recovery at the next start. The pool starts a new one in its place. A receiver whose main
process is gone stops at once. Limits (``max_associations``, the pending and per-peer limits) apply per
process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from dicomnode.config import Config
from dicomnode.errors import ReceiveError
from dicomnode.receive.ingest import IndexRow, Ingest
from dicomnode.receive.listener import Listener

log = logging.getLogger(__name__)

JOURNAL_REPORT_SECONDS = 1.0  # how often a receiver reports its journal's backlog (the node's metrics)
START_TIMEOUT = 60.0  # seconds a new receiver may take to import the node and bind the port
RESTART_DELAY = 2.0  # a receiver that died within this of its start is restarted only after it


@dataclass
class _Receiver:
    number: int
    process: BaseProcess
    notify: Connection  # receiver → main: observer events
    requests: Connection  # receiver ⇄ main: N-EVENT-REPORTs and their verdicts
    lifeline: Connection  # main's end; the receiver stops when it closes
    index: Connection  # receiver ⇄ main: index rows and their outcome
    started: float
    index_lock: threading.Lock = field(default_factory=threading.Lock)  # replies come from pool threads


class ReceiverPool:
    """Starts, watches and stops the extra receivers of ``listener`` (none when ``receivers`` is 1)."""

    def __init__(self, config: Config, listener: Listener, ingest: Ingest) -> None:
        self.config = config
        self.listener = listener
        self.ingest = ingest
        self.count = config.node.receiver_count
        self._context = multiprocessing.get_context("spawn")
        self._receivers: dict[int, _Receiver] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._committers: ThreadPoolExecutor | None = None
        # each receiver's last journal report: (pending records, lag seconds, when it came (monotonic))
        self._backlogs: dict[int, tuple[int, float, float]] = {}
        self.restarts = 0

    def pids(self) -> list[int]:
        with self._lock:
            return [r.process.pid for r in self._receivers.values() if r.process.pid is not None]

    def start(self) -> None:
        """Start the receivers on the listener's port (call after ``listener.start()``; they bind it too)."""
        if self.count <= 1:
            return
        self._stopping.clear()
        port = self.listener.port
        # rows wait here for the group commit; as many threads as associations may wait at once
        self._committers = ThreadPoolExecutor(self.config.node.max_associations * (self.count - 1),
                                              thread_name_prefix="receiver-index")
        for number in range(1, self.count):
            self._spawn(number, port)
        self._monitor = threading.Thread(target=self._watch, args=(port,), name="receiver-pool", daemon=True)
        self._monitor.start()
        log.info("%d receiver processes share port %d with the node.", self.count - 1, port)

    def signal_stop(self) -> None:
        """Tell every receiver to stop accepting and finish its associations (returns at once)."""
        self._stopping.set()
        with self._lock:
            receivers = list(self._receivers.values())
        for receiver in receivers:
            with contextlib.suppress(OSError):
                receiver.lifeline.close()  # the receiver's cue: stop accepting, drain, exit

    def stop(self) -> None:
        """:meth:`signal_stop`, then wait for the receivers (killing one that takes too long)."""
        if self._monitor is None:
            return
        self.signal_stop()
        with self._lock:
            receivers = list(self._receivers.values())
        deadline = time.monotonic() + self.config.node.dimse_timeout + 10
        for receiver in receivers:
            receiver.process.join(max(0.1, deadline - time.monotonic()))
            if receiver.process.is_alive():
                log.warning("Receiver process %d did not stop in time; killing it.", receiver.process.pid)
                receiver.process.kill()
                receiver.process.join(5)
        self._monitor.join(10)
        self._monitor = None
        if self._committers is not None:
            self._committers.shutdown(wait=True)
            self._committers = None
        with self._lock:
            for receiver in self._receivers.values():
                for conn in (receiver.notify, receiver.requests, receiver.lifeline, receiver.index):
                    conn.close()
            self._receivers.clear()

    # -- the main process's side ------------------------------------------------------------------------
    def _spawn(self, number: int, port: int) -> None:
        notify_read, notify_write = self._context.Pipe(duplex=False)
        requests_main, requests_receiver = self._context.Pipe(duplex=True)
        lifeline_read, lifeline_write = self._context.Pipe(duplex=False)
        index_main, index_receiver = self._context.Pipe(duplex=True)
        ready = self._context.Event()
        pipes = _Pipes(notify_write, requests_receiver, lifeline_read, index_receiver)
        process = self._context.Process(
            target=run_receiver,
            args=(self.config, port, number, pipes, ready, bool(self.listener.on_event_report)),
            name=f"dicomnode-receiver-{number}",
            daemon=True,
        )
        process.start()
        for end in (notify_write, requests_receiver, lifeline_read, index_receiver):
            end.close()  # the receiver holds these now; EOF on ours means it is gone
        receiver = _Receiver(number, process, notify_read, requests_main, lifeline_write, index_main,
                             time.monotonic())
        with self._lock:
            self._receivers[number] = receiver
        if not ready.wait(START_TIMEOUT) or not process.is_alive():
            raise ReceiveError(
                f"Receiver process {number} did not start listening on port {port} within "
                f"{START_TIMEOUT:.0f} s (exit code {process.exitcode})."
            )

    def _watch(self, port: int) -> None:
        """Serve the receivers' pipes and restart a dead one; when stopping, serve them (a draining
        receiver still hands over index rows) until every receiver has exited."""
        while True:
            with self._lock:
                receivers = list(self._receivers.values())
            if self._stopping.is_set() and not receivers:
                return
            waitables: dict[Any, tuple[str, _Receiver]] = {}
            for receiver in receivers:
                waitables[receiver.process.sentinel] = ("exit", receiver)
                waitables[receiver.notify] = ("notify", receiver)
                waitables[receiver.requests] = ("request", receiver)
                waitables[receiver.index] = ("index", receiver)
            for ready in wait(list(waitables), timeout=0.5):
                kind, receiver = waitables[ready]
                if kind == "index":
                    self._take_rows(receiver)
                elif kind == "notify":
                    self._drain_notifications(receiver)
                elif kind == "request":
                    self._answer_request(receiver)
                elif self._stopping.is_set():
                    self._forget(receiver)
                    break
                else:
                    self._restart(receiver, port)
                    break

    def journal_backlog(self) -> tuple[int, float]:
        """(pending records, lag seconds) of the receivers' journals together, as each last reported
        (every :data:`JOURNAL_REPORT_SECONDS`): records summed, the oldest one's age."""
        now = time.monotonic()
        with self._lock:
            reports = list(self._backlogs.values())
        pending = sum(count for count, _lag, _at in reports)
        lag = max((lag + now - at for count, lag, at in reports if count), default=0.0)
        return pending, lag

    def _drain_notifications(self, receiver: _Receiver) -> None:
        try:
            while receiver.notify.poll():
                kind, *args = receiver.notify.recv()
                if kind == "journal":
                    with self._lock:
                        self._backlogs[receiver.number] = (int(args[0]), float(args[1]), time.monotonic())
                else:
                    self._publish(kind, *args)
        except (EOFError, OSError):
            return  # the receiver is gone; its sentinel tells the watcher

    def _take_rows(self, receiver: _Receiver) -> None:
        try:
            while receiver.index.poll():
                number, row = receiver.index.recv()
                assert self._committers is not None
                self._committers.submit(self._commit, receiver, number, row)
        except (EOFError, OSError):
            return

    def _commit(self, receiver: _Receiver, number: int, row: IndexRow) -> None:
        self.ingest.commit_row(row)
        with receiver.index_lock, contextlib.suppress(OSError):
            receiver.index.send((number, row.new, None if row.error is None else str(row.error)))

    def _publish(self, kind: str, *args: Any) -> None:
        observers: list[Any] = {
            "accepted": self.listener.on_accepted, "rejected": self.listener.on_rejected,
            "space": self.listener.on_space_checked, "stored": self.ingest.on_stored,
            "failed": self.ingest.on_failed,
        }.get(kind, [])
        for observer in observers:
            try:
                observer(*args)
            except Exception:  # an observer (metrics) must not stop the pool
                log.exception("Observer %r failed for a receiver's '%s' event.", observer, kind)

    def _answer_request(self, receiver: _Receiver) -> None:
        try:
            calling, class_uid, event_type, info = receiver.requests.recv()
        except (EOFError, OSError):
            return
        verdict: tuple[bool, str] = (True, "")
        try:
            for observer in self.listener.on_event_report:
                observer(calling, class_uid, event_type, info)
        except Exception as exc:  # the receiver answers 0x0110 and the peer reports again
            verdict = (False, str(exc))
        with contextlib.suppress(OSError):
            receiver.requests.send(verdict)

    def _forget(self, receiver: _Receiver) -> None:
        self._drain_notifications(receiver)  # what it reported before it exited still counts
        receiver.process.join(5)  # its sentinel is ready: this reaps it and sets the exit code
        for conn in (receiver.notify, receiver.requests, receiver.lifeline, receiver.index):
            conn.close()
        with self._lock:
            self._receivers.pop(receiver.number, None)
            self._backlogs.pop(receiver.number, None)  # a new one replays its journal and reports anew

    def _restart(self, receiver: _Receiver, port: int) -> None:
        self._forget(receiver)
        log.error("Receiver process %d (pid %s) exited with %s; starting a new one.", receiver.number,
                  receiver.process.pid, receiver.process.exitcode)
        if time.monotonic() - receiver.started < RESTART_DELAY:
            self._stopping.wait(RESTART_DELAY)
        if self._stopping.is_set():
            return
        self.restarts += 1
        try:
            self._spawn(receiver.number, port)
        except ReceiveError as exc:
            log.error("%s", exc)


# -- the receiver process's side -------------------------------------------------------------------------
@dataclass
class _Pipes:
    """A receiver's ends of its pipes to the main process."""

    notify: Connection
    requests: Connection
    lifeline: Connection
    index: Connection


class _Forwarder:
    """What a receiver hands to the main process: observer events, N-EVENT-REPORTs and index rows (each
    pipe shared by the connection threads)."""

    def __init__(self, pipes: _Pipes) -> None:
        self._notify = pipes.notify
        self._requests = pipes.requests
        self._index = pipes.index
        self._notify_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._numbers = itertools.count()
        self._waiting: dict[int, tuple[IndexRow, threading.Event]] = {}
        self._gone: str | None = None

    def index_row(self, row: IndexRow) -> None:
        """Have the main process commit ``row``; returns when it did (``row.new`` or ``row.error`` set)."""
        done = threading.Event()
        with self._index_lock:
            number = next(self._numbers)
            self._waiting[number] = (row, done)
            try:
                if self._gone is not None:
                    raise OSError(self._gone)
                self._index.send((number, row))
            except OSError as exc:
                self._waiting.pop(number, None)
                row.error = sqlite3.OperationalError(f"The main process cannot index the instance: {exc}.")
                return
        done.wait()

    def read_index_answers(self) -> None:
        """The thread that hands the main process's answers to the waiting connection threads."""
        try:
            while True:
                number, new, error = self._index.recv()
                with self._index_lock:
                    row, done = self._waiting.pop(number)
                row.new = new
                row.error = None if error is None else sqlite3.OperationalError(error)
                done.set()
        except (EOFError, OSError) as exc:
            with self._index_lock:
                self._gone = f"the main process is gone ({type(exc).__name__})"
                waiting, self._waiting = self._waiting, {}
            for row, done in waiting.values():
                row.error = sqlite3.OperationalError(self._gone)
                done.set()

    def send(self, kind: str, *args: Any) -> None:
        with self._notify_lock, contextlib.suppress(OSError):
            self._notify.send((kind, *args))

    def event_report(self, calling: str, class_uid: str, event_type: int, info: Any) -> None:
        with self._request_lock:
            try:
                self._requests.send((calling, class_uid, event_type, info))
                taken, reason = self._requests.recv()
            except (EOFError, OSError) as exc:
                raise ReceiveError(f"The main process cannot take the N-EVENT-REPORT: {exc}.") from exc
        if not taken:
            raise ReceiveError(reason)


def run_receiver(
    config: Config, port: int, number: int, pipes: _Pipes, ready: Any, forward_event_reports: bool
) -> None:
    """A receiver process: a listener with its own spool writer and index connection (see the module)."""
    from dicomnode.assemble.assembler import Assembler
    from dicomnode.database import Database
    from dicomnode.errors import SpoolError
    from dicomnode.heap import freeze_startup_heap
    from dicomnode.observability.logging import configure_logging
    from dicomnode.spool.index import SpoolIndex
    from dicomnode.spool.journal import open_journal
    from dicomnode.spool.recovery import replay_journal
    from dicomnode.spool.store import Spool

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when receivers stop
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(config.logging)
    database = Database(config.storage.database_path)
    journal = open_journal(config.storage, number)
    spool = Spool(config.storage.spool_dir, fsync=config.storage.fsync, journal=journal)
    index = SpoolIndex(database, spool.root)
    forwarder = _Forwarder(pipes)
    threading.Thread(target=forwarder.read_index_answers, name="receiver-index", daemon=True).start()
    if journal is not None:  # what a receiver that died before this one left (the main process indexes)
        def index_row(header: Any, path: Any, size: int, meta: dict[str, Any]) -> None:
            if not index.has(header.sop_instance_uid):
                forwarder.index_row(IndexRow(header, path, size, str(meta.get("ts", "")),
                                             str(meta.get("aet", "")), float(meta.get("at") or time.time())))

        replay_journal(journal, spool, index_row)
        try:
            journal.start()
        except SpoolError as exc:
            log.error("%s Receiver %d stores instances directly (file and folder fsync).", exc, number)
    # never used for rows (the main process indexes them) nor timers (the main process runs them)
    assembler = Assembler(database, index, config.completion, lambda _event: None)
    ingest = Ingest(spool, index, assembler, max_sequence_depth=config.node.max_sequence_depth,
                    max_inflated_bytes=config.node.max_inflated_mb * 1024 * 1024,
                    indexer=forwarder.index_row)
    storage = config.storage
    listener = Listener(config.node.model_copy(update={"port": port}), ingest,
                        lambda: spool.check_space(storage.min_free_mb, storage.max_used_percent))
    listener.on_accepted.append(lambda: forwarder.send("accepted"))
    listener.on_rejected.append(lambda reason: forwarder.send("rejected", reason))
    listener.on_space_checked.append(lambda full: forwarder.send("space", full))
    ingest.on_stored.append(lambda size: forwarder.send("stored", size))
    ingest.on_failed.append(lambda status: forwarder.send("failed", status))
    if forward_event_reports:
        listener.on_event_report.append(forwarder.event_report)

    def watch_main() -> None:
        with contextlib.suppress(EOFError, OSError):
            pipes.lifeline.recv()  # nothing is sent: this returns when the main process closes it or dies
        stop.set()

    freeze_startup_heap()
    listener.start()
    threading.Thread(target=watch_main, name="receiver-lifeline", daemon=True).start()
    ready.set()
    log.info("Receiver process %d listening on port %d.", number, port)
    while not stop.wait(JOURNAL_REPORT_SECONDS):
        if journal is not None and journal.running:  # the main process's metrics count it too
            forwarder.send("journal", *journal.backlog())
    listener.stop(drain_seconds=config.node.dimse_timeout)
    if journal is not None:
        journal.stop()  # every handed-over file made durable first
    database.close()
