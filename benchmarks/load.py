"""Load and memory: N concurrent dcmtk storescu associations × M instances against ``dicomnode serve``.

    python benchmarks/load.py                                   # 8 associations × 500 instances, 3 rounds
    python benchmarks/load.py --associations 8 --instances 100 --rounds 1      # reduced size

Each association sends its own series (distinct UIDs each round) of small generated CT slices
(tests/factories.py, 64×64 int16 by default, ~10 KB each: the per-instance cost of receiving, fsync and
indexing dominates, not the pixel bytes; use --rows/--cols 512 for full-size slices). Rounds run back to
back so the node is under load for as long as asked. The node runs with its defaults (fsync on) and the
rules in --rules (default: none, so completed series are recorded as unrouted; pass a rules folder to
have pipelines running during the load).

Every --sample seconds the node's resident memory (RSS, its worker processes included) and the index
count are sampled; at the end the index count, the instances storescu reported sent and the files on disk
must be equal (the script exits 1 otherwise) and a table is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.factories import ct_series  # noqa: E402
from tests.support import free_port  # noqa: E402

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
ENV = dict(os.environ, TCP_NODELAY="1")


def start_node(root: Path, rules: Path | None) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    rules_dir = rules or (root / "rules")
    rules_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "node": {"host": "127.0.0.1", "port": port, "max_associations": 32},
        "storage": {"path": str(root / "data"), "min_free_mb": 256},
        "completion": {"series_quiet_seconds": 5, "study_quiet_seconds": 10},
        "rules": {"path": str(rules_dir), "watch": False},
        "metrics": {"port": 0},
        "logging": {"format": "json", "level": "WARNING"},
    }
    config_path = root / "dicomnode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(root / "node.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "dicomnode", "serve", "--config", str(config_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=ENV | {"PYTHONPATH": str(REPO_ROOT)},
                            cwd=root)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dicomnode serve exited with {proc.returncode}; see {root / 'node.log'}")
        if subprocess.run([ECHOSCU, "-aec", "DICOMNODE", "127.0.0.1", str(port)], capture_output=True,
                          env=ENV).returncode == 0:
            return proc, port, root / "data"
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("dicomnode serve did not answer C-ECHO within 60 s")


def rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def indexed(data: Path) -> int:
    db = data / "dicomnode.sqlite3"
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM spool_instances").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def sample(proc: psutil.Process, data: Path, every: float, stop: threading.Event,
           out: list[tuple[float, float, int]]) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - t0, rss_mb(proc), indexed(data)))
        stop.wait(every)


def send_round(folders: list[Path], port: int) -> tuple[int, int, float]:
    """Run one storescu per folder concurrently; (instances answered Success, failures, seconds)."""
    start = time.perf_counter()
    procs = [subprocess.Popen([STORESCU, "-v", "-aec", "DICOMNODE", "127.0.0.1", str(port), "+sd", "+sp",
                               "*.dcm", str(f)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=ENV) for f in folders]
    ok = failed = 0
    for p in procs:
        _, err = p.communicate()
        ok += len(re.findall(r"Received Store Response \(Success\)", err))
        failed += len(re.findall(r"Received Store Response \((?!Success)", err))
        if p.returncode != 0:
            print(f"storescu exited {p.returncode}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
    return ok, failed, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--instances", type=int, default=500, help="instances per association per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--rules", type=Path, default=None, help="rules folder (pipelines run under load)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dicomnode-load-") as tmp:
        root = Path(tmp)
        print(f"generating {args.rounds} × {args.associations} × {args.instances} CT instances "
              f"{args.rows}×{args.cols} …", flush=True)
        rounds: list[list[Path]] = []
        for r in range(args.rounds):
            rounds.append([])
            for a in range(args.associations):
                folder = root / "in" / f"r{r}" / f"a{a}"
                ct_series(folder, seed=f"load-{r}-{a}", slices=args.instances, rows=args.rows, cols=args.cols)
                rounds[-1].append(folder)
        size_mb = sum(p.stat().st_size for p in (root / "in").rglob("*.dcm")) / 2**20
        node, port, data = start_node(root / "node", args.rules)
        ps = psutil.Process(node.pid)
        samples: list[tuple[float, float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(ps, data, args.sample, stop, samples), daemon=True)
        sampler.start()
        sent = failed = 0
        seconds = 0.0
        try:
            for number, folders in enumerate(rounds, 1):
                ok, bad, took = send_round(folders, port)
                sent, failed, seconds = sent + ok, failed + bad, seconds + took
                print(f"round {number}: {ok} stored, {bad} failed in {took:.1f} s "
                      f"({ok / took:.0f} instances/s)", flush=True)
            time.sleep(args.sample * 2)  # a last sample after the load
        finally:
            stop.set()
            sampler.join()
            node.send_signal(signal.SIGTERM)
            code = node.wait(120)
        files = len(list((data / "spool").glob("*/*/*.dcm")))
        count = indexed(data)

    print()
    print(f"{'t (s)':>7} {'RSS (MB)':>9} {'indexed':>8}")
    step = max(1, len(samples) // 25)
    for t, rss, n in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(f"{t:7.1f} {rss:9.1f} {n:8d}")
    expected = args.rounds * args.associations * args.instances
    first = [r for _, r, n in samples if n > 0][:1] or [samples[0][1]]
    print()
    print(f"{'instances generated':<28} {expected} ({size_mb:.0f} MB)")
    print(f"{'answered Success':<28} {sent}")
    print(f"{'failed responses':<28} {failed}")
    print(f"{'indexed':<28} {count}")
    print(f"{'files on disk':<28} {files}")
    print(f"{'throughput':<28} {sent / seconds:.0f} instances/s over {seconds:.0f} s, "
          f"{args.associations} concurrent associations")
    print(f"{'RSS first/peak/last (MB)':<28} {first[0]:.0f} / {max(r for _, r, _ in samples):.0f} / "
          f"{samples[-1][1]:.0f}")
    print(f"{'node exit status':<28} {code}")
    lossless = sent == expected and count == sent and files == sent and failed == 0
    print("OK: index count = sent count = files on disk" if lossless else "FAIL: counts differ")
    return 0 if lossless and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
