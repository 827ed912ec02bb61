"""More receiver processes on the node's DICOM port (``node.receivers``), so receiving scales with cores.

The node's own :class:`~dicomnode.receive.listener.Listener` binds the port with ``SO_REUSEPORT``; the
:class:`ReceiverPool` then starts ``receivers - 1`` processes (``spawn``) that each bind the same port and
run a listener of their own: the kernel spreads new connections over all of them. Each process has its
own spool writer and journal (the fsyncs happen there) and its own index connection: it commits the
rows of its instances itself, with those of its other associations in one group commit, and the
processes' transactions take turns on a lock file (:class:`~dicomnode.receive.ingest.IndexWriterLock`;
SQLite's WAL lets several processes write one at a time). Every Success is still sent only after that
instance's journal record (or file and directory) is durable and its index row committed, so neither a
kill -9 of the receiver nor of the main process loses an acknowledged instance. The row is committed with
the assembler's series/study update in the same transaction, so the main process's completion timers
find each instance in the database as if its own listener had received it. The completion timers,
routing and everything else stay in the main process.

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
import logging
import multiprocessing
import select
import selectors
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
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
    started: float


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
        with self._lock:
            for receiver in self._receivers.values():
                for conn in (receiver.notify, receiver.requests, receiver.lifeline):
                    conn.close()
            self._receivers.clear()

    # -- the main process's side ------------------------------------------------------------------------
    def _spawn(self, number: int, port: int) -> None:
        notify_read, notify_write = self._context.Pipe(duplex=False)
        requests_main, requests_receiver = self._context.Pipe(duplex=True)
        lifeline_read, lifeline_write = self._context.Pipe(duplex=False)
        ready = self._context.Event()
        pipes = _Pipes(notify_write, requests_receiver, lifeline_read)
        process = self._context.Process(
            target=run_receiver,
            args=(self.config, port, number, pipes, ready, bool(self.listener.on_event_report)),
            name=f"dicomnode-receiver-{number}",
            daemon=True,
        )
        process.start()
        for end in (notify_write, requests_receiver, lifeline_read):
            end.close()  # the receiver holds these now; EOF on ours means it is gone
        receiver = _Receiver(number, process, notify_read, requests_main, lifeline_write, time.monotonic())
        with self._lock:
            self._receivers[number] = receiver
        if not ready.wait(START_TIMEOUT) or not process.is_alive():
            raise ReceiveError(
                f"Receiver process {number} did not start listening on port {port} within "
                f"{START_TIMEOUT:.0f} s (exit code {process.exitcode})."
            )

    def _watch(self, port: int) -> None:
        """Serve the receivers' pipes and restart a dead one; when stopping, serve them (a draining
        receiver still reports) until every receiver has exited.

        One selector, made again only when the receivers change: ``multiprocessing.connection.wait`` (and
        ``Connection.poll``) build and tear down a selector on every call, and this thread wakes for each
        instance a receiver stores (measured: a twentieth of the node's CPU while receiving)."""
        selector = selectors.DefaultSelector()
        watched: list[int] = []
        try:
            while True:
                with self._lock:
                    receivers = list(self._receivers.values())
                if self._stopping.is_set() and not receivers:
                    return
                if [id(r) for r in receivers] != watched:
                    selector.close()
                    selector = selectors.DefaultSelector()
                    for receiver in receivers:
                        selector.register(receiver.process.sentinel, selectors.EVENT_READ, ("exit", receiver))
                        selector.register(receiver.notify, selectors.EVENT_READ, ("notify", receiver))
                        selector.register(receiver.requests, selectors.EVENT_READ, ("request", receiver))
                    watched = [id(r) for r in receivers]
                for key, _events in selector.select(timeout=0.5):
                    kind, receiver = key.data
                    if kind == "notify":
                        self._drain_notifications(receiver)
                    elif kind == "request":
                        self._answer_request(receiver)
                    elif self._stopping.is_set():
                        self._forget(receiver)
                        break
                    else:
                        self._restart(receiver, port)
                        break
        finally:
            selector.close()

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
        try:  # (readable when called; select() for more: Connection.poll() builds a selector per call)
            while True:
                kind, *args = receiver.notify.recv()
                if kind == "journal":
                    with self._lock:
                        self._backlogs[receiver.number] = (int(args[0]), float(args[1]), time.monotonic())
                else:
                    self._publish(kind, *args)
                if not select.select([receiver.notify], [], [], 0)[0]:
                    return
        except (EOFError, OSError, ValueError):  # (ValueError: select() on a closed pipe)
            return  # the receiver is gone; its sentinel tells the watcher

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
        for conn in (receiver.notify, receiver.requests, receiver.lifeline):
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


class _Forwarder:
    """What a receiver hands to the main process: observer events and N-EVENT-REPORTs (each pipe shared
    by the connection threads)."""

    def __init__(self, pipes: _Pipes) -> None:
        self._notify = pipes.notify
        self._requests = pipes.requests
        self._notify_lock = threading.Lock()
        self._request_lock = threading.Lock()

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
    """A receiver process: a listener with its own spool writer, journal and index writer (see the
    module)."""
    from dicomnode.assemble.assembler import Assembler
    from dicomnode.database import Database
    from dicomnode.errors import SpoolError
    from dicomnode.heap import freeze_startup_heap
    from dicomnode.observability.logging import configure_logging
    from dicomnode.spool.index import SpoolIndex
    from dicomnode.spool.journal import open_journal
    from dicomnode.spool.recovery import replay_journal
    from dicomnode.spool.store import RECEIVE_SPARES, Spool

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when receivers stop
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(config.logging)
    database = Database(config.storage.database_path)
    journal = open_journal(config.storage, number)
    spool = Spool(config.storage.spool_dir, fsync=config.storage.fsync, journal=journal,
                  spares=RECEIVE_SPARES)
    index = SpoolIndex(database, spool.root)
    forwarder = _Forwarder(pipes)
    # records each instance's series/study in the index transaction; its timers (and so its events) run
    # in the main process only
    assembler = Assembler(database, index, config.completion, lambda _event: None)
    ingest = Ingest(spool, index, assembler, max_sequence_depth=config.node.max_sequence_depth,
                    max_inflated_bytes=config.node.max_inflated_mb * 1024 * 1024)
    if journal is not None:  # what a receiver that died before this one left
        def index_row(header: Any, path: Any, size: int, meta: dict[str, Any]) -> None:
            if not index.has(header.sop_instance_uid):
                row = IndexRow(header, path, size, str(meta.get("ts", "")), str(meta.get("aet", "")),
                               float(meta.get("at") or time.time()))
                ingest.commit_row(row)
                if row.error is not None:  # the file is durable: the next start's recovery indexes it
                    log.error("Receiver %d could not index the replayed instance '%s': %s.", number,
                              header.sop_instance_uid, row.error)

        replay_journal(journal, spool, index_row)
        try:
            journal.start()
        except SpoolError as exc:
            log.error("%s Receiver %d stores instances directly (file and folder fsync).", exc, number)
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
    spool.close()  # (its spare files)
    if journal is not None:
        journal.stop()  # every handed-over file made durable first
    database.close()
