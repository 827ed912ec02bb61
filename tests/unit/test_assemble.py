"""Assembly: quiet-period and content completion, study completion, late instances, restart re-emission."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.assemble import Assembler, InstanceFacts, content_evidence
from dicomnode.config import CompletionConfig
from dicomnode.database import Database
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.spool import InstanceHeader, SpoolIndex

STUDY = "1.2.3"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, tmp_path: Path, **completion: float) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.config = CompletionConfig(
            **(
                {"series_quiet_seconds": 30, "study_quiet_seconds": 60, "content_quiet_seconds": 5}
                | completion
            )
        )
        self.events: list[SeriesReady | StudyReady] = []
        self.database = Database(tmp_path / "db.sqlite3")
        self.index = SpoolIndex(self.database, tmp_path / "spool")
        self.assembler = self.new_assembler()

    def new_assembler(self, resolver=None) -> Assembler:
        return Assembler(
            self.database,
            self.index,
            self.config,
            self.events.append,
            quiet_resolver=resolver,
            clock=self.clock,
        )

    def receive(
        self, series: str, number: int, *, position: float | None = None, declared: int | None = None
    ) -> None:
        header = InstanceHeader(
            sop_instance_uid=f"{series}.{number}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_uid=STUDY,
            series_uid=series,
            instance_number=number,
            acquisition_number=1,
            images_in_acquisition=declared,
            slice_position=position,
        )
        with self.database.transaction() as conn:
            path = self.index.root / STUDY / series / f"{header.sop_instance_uid}.dcm"
            if self.index.add(header, path=path, size=1, transfer_syntax="", calling_aet="T", conn=conn):
                self.assembler.on_instance(header, conn)

    def after(self, seconds: float) -> list[SeriesReady | StudyReady]:
        self.clock.now += seconds
        before = len(self.events)
        self.assembler.tick()
        return self.events[before:]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_series_completes_once_after_the_quiet_period_then_the_study(h: Harness) -> None:
    for n in (1, 3, 7):  # gaps: no content evidence
        h.receive("1.2.3.1", n, position=2.0 * n)
    assert h.after(29) == []
    (event,) = h.after(1.5)
    assert isinstance(event, SeriesReady)
    assert (event.series_uid, event.instance_count, event.generation, event.reason) == (
        "1.2.3.1",
        3,
        1,
        "quiet",
    )
    assert event.series_dir == h.index.root / STUDY / "1.2.3.1"
    assert h.after(100) == [StudyReady(STUDY, ("1.2.3.1",), 1, h.index.root / STUDY)]
    assert h.after(100) == []


def test_duplicates_do_not_reopen(h: Harness) -> None:
    h.receive("1.2.3.1", 1)
    h.after(31)
    h.receive("1.2.3.1", 1)
    assert [e for e in h.after(100) if isinstance(e, SeriesReady)] == []


def test_declared_count_completes_at_the_next_check(h: Harness) -> None:
    for n in (1, 2, 3):
        h.receive("1.2.3.2", n, declared=4)
    assert h.after(0.5) == []
    h.receive("1.2.3.2", 4, declared=4)
    (event,) = h.after(0.5)
    assert event.reason == "content" and event.instance_count == 4


def test_contiguous_numbers_with_even_spacing_shorten_the_wait(h: Harness) -> None:
    for n in range(1, 6):
        h.receive("1.2.3.3", n, position=-2.5 * n)
    assert h.after(4) == []
    (event,) = h.after(1.5)
    assert event.reason == "content"


def test_uneven_spacing_waits_for_the_quiet_period(h: Harness) -> None:
    for n, z in zip(range(1, 6), (0.0, 2.0, 4.0, 7.0, 9.0), strict=True):
        h.receive("1.2.3.4", n, position=z)
    assert h.after(10) == []
    assert [e.reason for e in h.after(21)] == ["quiet"]


def test_late_instance_reopens_and_gives_a_new_generation(h: Harness) -> None:
    h.receive("1.2.3.5", 1)
    assert [e.generation for e in h.after(31)] == [1]
    h.receive("1.2.3.5", 2)
    assert h.after(10) == []
    (event,) = h.after(21)
    assert (event.generation, event.instance_count) == (2, 2)


def test_restart_re_emits_only_what_was_not_handed_on(h: Harness) -> None:
    h.receive("1.2.3.6", 1)
    h.receive("1.2.3.7", 1)
    first, second = h.after(31)
    h.assembler.mark_handed_on(first)
    # "restart": a new assembler on the same database
    h.events.clear()
    restarted = h.new_assembler()
    restarted.start()
    restarted.stop()
    assert h.events == [SeriesReady(STUDY, "1.2.3.7", 1, 1, "recovered", h.index.root / STUDY / "1.2.3.7")]
    assert second.series_uid == "1.2.3.7"
    rows = h.database.conn.execute(
        "SELECT series_uid, emit_count FROM assembly_events ORDER BY id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [("1.2.3.6", 1), ("1.2.3.7", 2)]


def test_superseded_event_is_not_current(h: Harness) -> None:
    h.receive("1.2.3.8", 1)
    (event,) = h.after(31)
    assert h.assembler.is_current(event)
    h.receive("1.2.3.8", 2)
    assert not h.assembler.is_current(event)


def test_quiet_resolver_overrides_the_default(h: Harness) -> None:
    h.assembler = h.new_assembler(resolver=lambda study, series: 5.0 if series == "1.2.3.9" else None)
    h.receive("1.2.3.9", 1)
    h.receive("1.2.3.10", 1)
    assert [e.series_uid for e in h.after(6)] == ["1.2.3.9"]


def test_reconcile_opens_series_found_by_recovery(h: Harness) -> None:
    header = InstanceHeader("1.2.3.11.1", "1.2", STUDY, "1.2.3.11")
    h.index.add(
        header, path=h.index.root / STUDY / "1.2.3.11" / "x.dcm", size=1, transfer_syntax="", calling_aet=""
    )
    assert h.assembler.reconcile() == 1
    assert [e.series_uid for e in h.after(31)] == ["1.2.3.11"]


def _facts(numbers, positions, declared=None, acquisitions=None):
    acquisitions = acquisitions or [1] * len(numbers)
    return [
        InstanceFacts(n, a, declared, None, p)
        for n, p, a in zip(numbers, positions, acquisitions, strict=True)
    ]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (_facts([1, 2, 3], [0, 2, 4], declared=3), "declared"),
        (_facts([1, 2, 3], [0, 2, 4], declared=3, acquisitions=[1, 1, 2]), "contiguous"),
        (_facts([1, 2], [0, 2], declared=3), None),
        (_facts([1, 2, 3], [0, 2, 4]), "contiguous"),
        (_facts([3, 1, 2], [4, 0, 2]), "contiguous"),
        (_facts([2, 3, 4], [0, 2, 4]), None),  # does not start at 1
        (_facts([1, 2, 4], [0, 2, 6]), None),  # gap
        (_facts([1, 2, 3], [0, 0, 0]), None),  # repeated positions
        (_facts([1, 2, 3], [0, 2, None]), None),  # missing geometry
        (_facts([1, 2], [0, 2]), None),  # too few
        ([], None),
    ],
)
def test_content_evidence(facts, expected) -> None:
    assert content_evidence(facts) == expected
