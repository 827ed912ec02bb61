"""Holding the rule set in force and replacing it safely: on file change (:class:`RuleWatcher`) and SIGHUP.

:class:`RuleBook` keeps the current :class:`RuleSet`. :meth:`RuleBook.reload` loads the folder again; an
invalid new set is refused with a logged error naming file, line, rule and reason, and the previous set
stays in force. Swapping is a single reference assignment, so a routing decision in progress finishes with
the set it started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from dicomnode.route.ruleset import RuleSet, RuleSetError, fingerprint, load_for_config

log = logging.getLogger(__name__)


def folder_fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, mtime_ns, size) of every file under ``folder`` (pipelines and their models)."""
    out = []
    try:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file():
                stat = path.stat()
                out.append((str(path.relative_to(folder)), stat.st_mtime_ns, stat.st_size))
    except OSError:
        return ()
    return tuple(out)


class RuleBook:
    """The rule set in force (``None`` while no valid set was ever loaded)."""

    def __init__(self, folder: Path, loader: Callable[[], RuleSet], also: tuple[Path, ...] = ()) -> None:
        self.folder = Path(folder)
        self.also = tuple(Path(p) for p in also)  # more folders whose changes reload (site pipelines)
        self._loader = loader
        self._lock = threading.Lock()
        self._current: RuleSet | None = None
        self.last_error: str = ""

    @classmethod
    def for_config(cls, config: object) -> RuleBook:
        return cls(
            config.rules.path, lambda: load_for_config(config),  # type: ignore[attr-defined]
            (config.pipelines_folder,),  # type: ignore[attr-defined]
        )

    @property
    def current(self) -> RuleSet | None:
        return self._current

    def reload(self) -> bool:
        """Load the folder again; True if a new set is now in force. Never raises for an invalid set."""
        with self._lock:
            try:
                new = self._loader()
            except RuleSetError as exc:
                self.last_error = str(exc)
                kept = self._current.version if self._current else "none (nothing is routed)"
                log.error("Rule set in %s refused; keeping version %s. %s", self.folder, kept, exc)
                return False
            self.last_error = ""
            old = self._current
            if old is not None and old.sha256 == new.sha256:
                return False
            self._current = new
            log.info(
                "Rule set version %s in force: %d rules from %d files in %s (was %s).",
                new.version, len(new.rules), len(new.files), self.folder, old.version if old else "none",
            )
            return True


class RuleWatcher:
    """Polls the rule files' names, sizes and modification times and reloads the book when they change."""

    def __init__(self, book: RuleBook, interval: float = 1.0) -> None:
        self.book = book
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[tuple[tuple[str, int, int], ...], ...] = ()

    def start(self) -> None:
        self._seen = self._fingerprint()
        if self.book.current is None and not self.book.last_error:
            self.book.reload()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dicomnode-rule-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def poll(self) -> bool:
        """Reload if the files changed since the last poll; True if a new set came into force."""
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        return self.book.reload()

    def _fingerprint(self) -> tuple[tuple[tuple[str, int, int], ...], ...]:
        return (fingerprint(self.book.folder), *(folder_fingerprint(f) for f in self.book.also))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the watcher must survive anything a file system can do; logged
                log.exception("Rule watcher failed while checking %s.", self.book.folder)
