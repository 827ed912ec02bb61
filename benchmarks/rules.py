"""Routing-rule evaluation: 200 rules against a 500-instance series (target: < 50 ms).

The series is synthetic: the first header of the real abdominal CT in shared data (``ct-abdomen-20``),
cloned 500 times with per-instance InstanceNumber, SOPInstanceUID, ImagePositionPatient, SliceLocation
and ImageType. The 200 rules mix every operator, the ``any``/``all`` scopes (which look at all 500
instances), combinators and context fields; a few match. Times are medians of repeated runs.

    python benchmarks/rules.py [--rules 200] [--instances 500] [--repeat 15]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomnode.route.evaluate import EvalContext  # noqa: E402
from dicomnode.route.headers import HeaderCache, SeriesView  # noqa: E402
from dicomnode.route.ruleset import load_ruleset  # noqa: E402

SOURCE = REPO.parent / "shared" / "data" / "ct-abdomen-20" / "dicom"


def make_series(count: int) -> list[pydicom.Dataset]:
    first = pydicom.dcmread(sorted(SOURCE.glob("*.dcm"))[0], stop_before_pixels=True)
    out = []
    for i in range(count):
        ds = copy.deepcopy(first)
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{i + 1}"
        ds.SliceLocation = -766.5 + 2 * i
        ds.ImagePositionPatient = [-249.5, -437.5, -766.5 + 2 * i]
        if i == count - 1:
            ds.ImageType = ["DERIVED", "SECONDARY", "LOCALIZER"]
        out.append(ds)
    return out


def condition(i: int) -> dict:
    kinds = [
        {"tag": "Modality", "equals": ["CT", "MR", "PT", "US"][i % 4]},
        {"tag": "BodyPartExamined", "in": ["ABDOMEN", "CHEST", f"PART{i}", "PARTIALBODY"][: 1 + i % 4]},
        {"tag": "SeriesDescription", "regex": f"(?i)body|venous{i}"},
        {"tag": "SliceThickness", "range": [0.5, 1.0 + i % 5]},
        {"tag": "ImageType", "contains": "LOCALIZER", "scope": "any"},
        {"tag": "ImageType", "contains": "AXIAL", "scope": "all"},
        {"tag": "SliceLocation", "gt": -800 + i, "scope": "all"},
        {"tag": "ContrastBolusAgent", "empty": False},
        {"tag": "ProcedureCodeSequence[0].CodeValue", "equals": f"CODE{i}"},
        {"tag": '(0019,"SIEMENS CT VA0  COAD",92)', "ge": 0.5},
        {"tag": "(0018,1210)", "contains": "Br38f"},
        {"instances": {"min": 10 + i}},
        {"calling_ae": {"in": ["CT1", f"MOD{i}"]}},
        {"time": {"between": ["18:00", "07:00"]}},
        {"study_has_series": {"tag": "Modality", "equals": "PT"}},
        {"tag": "PatientName", "regex": "(?i)phantom"},
    ]
    picks = [kinds[(i + k * 5) % len(kinds)] for k in range(5)]
    return {"all": [picks[0], {"any": [picks[1], picks[2]]}, {"not": picks[3]}, picks[4]]}


def rules_file(count: int) -> str:
    rules = [
        {
            "name": f"rule-{i:03d}",
            "priority": i % 7,
            "when": condition(i),
            "then": {"pipeline": "liver-ct", "params": {"n": i}} if i % 3 else {"discard": True},
        }
        for i in range(count - 1)
    ]
    rules.append({"name": "fallback", "fallback": True, "then": {"discard": True}})
    return yaml.safe_dump(rules, sort_keys=False)


def timed_ms(fn, repeat: int) -> tuple[float, float]:
    """(median, best) wall time in ms; the best run shows the cost without other processes' noise."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    headers = make_series(args.instances)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rules"
        folder.mkdir()
        (folder / "bench.yaml").write_text(rules_file(args.rules))
        load_ms = timed_ms(lambda: load_ruleset(folder), 3)
        ruleset = load_ruleset(folder)

        def context() -> EvalContext:
            view = SeriesView("1.2.3", "1.2.3.4", (), tuple(headers))
            other = SeriesView("1.2.3", "1.2.3.5", (), tuple(headers[:5]))
            return EvalContext(view, series_in_study=2, calling_ae="CT1", study_series=lambda: [view, other])

        cold = timed_ms(lambda: ruleset.evaluate("series", context()), args.repeat)
        warm_ctx = context()
        ruleset.evaluate("series", warm_ctx)
        warm = timed_ms(lambda: ruleset.evaluate("series", warm_ctx), args.repeat)
        explained = timed_ms(lambda: ruleset.evaluate("series", context(), explain=True), args.repeat)
        fired = [r.name for r in ruleset.evaluate("series", context()).fired]

        files = Path(tmp) / "series"
        files.mkdir()
        for i, ds in enumerate(headers):
            ds.save_as(files / f"{i:04d}.dcm", enforce_file_format=True)
        paths = sorted(files.glob("*.dcm"))
        read_cold = timed_ms(lambda: SeriesView.from_files(paths, HeaderCache()), 3)
        cache = HeaderCache()
        SeriesView.from_files(paths, cache)
        read_warm = timed_ms(lambda: SeriesView.from_files(paths, cache), 3)

    print(f"Routing rules benchmark: {args.rules} rules × {args.instances}-instance series "
          f"(synthetic clones of the real ct-abdomen-20 header); {len(fired)} rules fired")
    print(f"{'step':<58}{'median ms':>12}{'best ms':>10}")
    print("-" * 80)
    rows = [
        ("load + validate the rule file (once per reload)", load_ms),
        ("evaluate all rules, fresh series (what routing does)", cold),
        ("evaluate all rules, values already extracted", warm),
        ("evaluate all rules with explanations (rules test)", explained),
        ("read 500 headers from disk (stop_before_pixels), cold", read_cold),
        ("read 500 headers, header cache warm", read_warm),
    ]
    for name, (median, best) in rows:
        print(f"{name:<58}{median:>12.2f}{best:>10.2f}")
    verdict = "PASS" if cold[0] < 50 else "FAIL"
    print("-" * 80)
    print(f"target: evaluation of a fresh series < 50 ms (median) → {verdict} ({cold[0]:.2f} ms); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
