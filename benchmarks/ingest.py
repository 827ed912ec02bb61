"""Ingest throughput: dcmtk storescu → (a) dcmtk storescp writing to disk, (b) ``dicomnode serve``.

    python benchmarks/ingest.py                     # 500 instances 512×512 int16, 3 reps, 1 and 4 assocs
    python benchmarks/ingest.py --instances 100 --reps 1

The instances are generated CT slices (tests/factories.py: a synthetic water phantom, Explicit VR LE,
~0.5 MB each). storescp runs with ``+B`` (bit-preserving, no fsync; ``--fork`` for concurrent
associations); dicomnode runs with its defaults (fsync of every file and directory before Success).
Every rep starts from an empty output folder. The table shows the median of the reps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.factories import ct_series  # noqa: E402

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ENV = dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_echo(port: int, ae: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the receiver exited with {proc.returncode}")
        echo = subprocess.run([ECHOSCU, "-aec", ae, "127.0.0.1", str(port)], capture_output=True, env=ENV)
        if echo.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"no C-ECHO answer on port {port}")


def send(folders: list[Path], port: int, ae: str) -> float:
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aec", ae, "127.0.0.1", str(port), "+sd", "+sp", "*.dcm", str(f)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        for f in folders
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def start_storescp(out: Path, port: int) -> subprocess.Popen:
    out.mkdir(parents=True)
    args = [STORESCP, "--fork", "+B", "-aet", "STORESCP", "-od", str(out), str(port)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)


def start_dicomnode(out: Path, port: int, fsync: bool = True) -> subprocess.Popen:
    out.mkdir(parents=True)
    config = out / "bench.yaml"
    config.write_text(
        f"node: {{ae_title: DICOMNODE, host: 127.0.0.1, port: {port}, max_associations: 16}}\n"
        f"storage: {{path: {out / 'data'}, fsync: {str(fsync).lower()}, min_free_mb: 0, "
        "max_used_percent: 100}\n"
        "completion: {series_quiet_seconds: 3600, study_quiet_seconds: 3600, content_quiet_seconds: 3600}\n"
        f"rules: {{path: {out / 'rules'}, watch: false}}\nmetrics: {{port: 0}}\nlogging: {{level: WARNING}}\n"
    )
    (out / "rules").mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "serve", "--config", str(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(out / "node.log", "wb"),  # noqa: SIM115
        env=ENV,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated association counts")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--no-fsync", action="store_true", help="run dicomnode with storage.fsync: false")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder (removed)")
    args = parser.parse_args()
    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is missing (apt-get install dcmtk)")

    work = Path(tempfile.mkdtemp(prefix="dicomnode-bench-", dir=args.workdir))
    try:
        files = ct_series(work / "src", slices=args.instances, rows=args.rows, cols=args.rows, seed="bench")
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"{len(files)} generated CT instances {args.rows}×{args.rows} int16 ({megabytes:.0f} MB), "
            f"{args.reps} rep(s), median shown, dicomnode fsync {'off' if args.no_fsync else 'on'}\n"
        )
        results: dict[tuple[str, int], float] = {}
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            folders = [work / f"c{concurrency}" / str(i) for i in range(concurrency)]
            for i, f in enumerate(files):
                target = folders[i % concurrency]
                target.mkdir(parents=True, exist_ok=True)
                os.link(f, target / f.name)
            for name, starter, ae in (
                ("storescp", start_storescp, "STORESCP"),
                ("dicomnode", start_dicomnode, "DICOMNODE"),
            ):
                times = []
                for rep in range(args.reps):
                    out = work / f"out-{name}-{concurrency}-{rep}"
                    port = free_port()
                    proc = starter(out, port)
                    try:
                        wait_echo(port, ae, proc)
                        times.append(send(folders, port, ae))
                    finally:
                        stop(proc)
                    shutil.rmtree(out, ignore_errors=True)
                results[(name, concurrency)] = statistics.median(times)

        print(f"{'receiver':<10} {'assocs':>6} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} {'ratio':>6}")
        for (name, concurrency), seconds in results.items():
            ratio = results[("storescp", concurrency)] / seconds
            print(
                f"{name:<10} {concurrency:>6} {seconds:>8.2f} {len(files) / seconds:>8.1f} "
                f"{megabytes / seconds:>7.1f} {ratio:>6.2f}"
            )
        print(
            "\nratio = dicomnode throughput / storescp throughput at the same concurrency (1.00 for storescp)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
