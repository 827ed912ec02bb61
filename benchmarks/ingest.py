"""Ingest throughput: dcmtk storescu → (a) dcmtk storescp writing to disk, (b) ``dicomnode serve``.

    python benchmarks/ingest.py                     # 500 instances 512×512 int16, 3 reps, 1 and 4 assocs
    python benchmarks/ingest.py --instances 100 --reps 1 --big-gb 0.5
    python benchmarks/ingest.py --quick --reps 5    # only storescp vs dicomnode receivers: auto, journal on
    python benchmarks/ingest.py --quick --baseline /path/to/checkout-before   # the same, interleaved with
                                                    # the node run from another checkout ("base" rows)
    python benchmarks/ingest.py --quick --reps 1 --profile /tmp/prof   # py-spy shares of the node's time

After the ratio table: the attack line (a C-ECHO and a 20-instance storescu while 80 idle/garbage
connections are held open: the legitimate peer's wall time) and the node's peak RSS growth while it
receives one object of ``--big-gb`` GB (a multi-frame Secondary Capture whose pixel data is a sparse file;
0 skips it).

The instances are generated CT slices (tests/factories.py: a synthetic water phantom, Explicit VR LE,
~0.5 MB each). storescp runs with ``+B`` (bit-preserving, no fsync; ``--fork`` for concurrent
associations); dicomnode runs with its defaults (every instance durable before Success: one commit into
the receive journal), as ``dicomnode -j`` with ``storage.journal.enabled: false`` (fsync of every file and
directory before Success; ``--journal`` picks), and with more than one association also with
``node.receivers`` (``--receivers``). Each rep runs every receiver and the two floors (the durability work
alone, see the table's footnote) one after the other, from empty output folders; ratios are taken within a
rep and the table shows medians over the reps. Each rep starts with another receiver and every receiver
starts after a ``sync`` (storescp fsyncs nothing: the next receiver would otherwise pay for writing back
its files). Each rep's own figures (instances/s, ratio to storescp, the
node's CPU per instance over all its processes, the load average) are printed as it ends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
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


def start_dicomnode(
    out: Path, port: int, fsync: bool = True, receivers: str = "1", journal: bool = True,
    root: Path = REPO_ROOT,
) -> subprocess.Popen:
    """``dicomnode serve`` of the checkout at ``root`` (this one by default) on ``port``."""
    out.mkdir(parents=True)
    config = out / "bench.yaml"
    config.write_text(
        f"node: {{ae_title: DICOMNODE, host: 127.0.0.1, port: {port}, max_associations: 16, "
        f"receivers: {receivers}}}\n"
        f"storage: {{path: {out / 'data'}, fsync: {str(fsync).lower()}, min_free_mb: 0, "
        f"max_used_percent: 100, journal: {{enabled: {str(journal).lower()}}}}}\n"
        "completion: {series_quiet_seconds: 3600, study_quiet_seconds: 3600, content_quiet_seconds: 3600}\n"
        f"rules: {{path: {out / 'rules'}, watch: false}}\nmetrics: {{port: 0}}\nlogging: {{level: WARNING}}\n"
    )
    (out / "rules").mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "serve", "--config", str(config)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=open(out / "node.log", "wb"),  # noqa: SIM115
        env=dict(ENV, PYTHONPATH=str(root)),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children so far (0 when psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    try:
        process = psutil.Process(pid)
        total = 0.0
        for each in [process, *process.children(recursive=True)]:
            times = each.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def _floor(folders: list[Path], out: Path, durable: Callable[[int, int], None] | None,
           fsync_folder: bool) -> float:
    """Seconds to write every file of ``folders`` as the spool does, one thread per folder: each file is
    written to a ``.part`` in 256 KB pieces, ``durable(fd, size)`` makes it durable (None: nothing), it is
    linked into its folder, the ``.part`` unlinked, and (``fsync_folder``) the folder fsynced."""
    data = [[f.read_bytes() for f in sorted(folder.glob("*.dcm"))] for folder in folders]
    tmp, final = out / ".tmp", out / "study" / "series"
    tmp.mkdir(parents=True, exist_ok=True)
    final.mkdir(parents=True, exist_ok=True)

    def write(number: int, blobs: list[bytes]) -> None:
        for i, blob in enumerate(blobs):
            part, name = tmp / f"{number}-{i}.part", final / f"{number}-{i}.dcm"
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for start in range(0, len(blob), 256 * 1024):
                    os.write(fd, blob[start : start + 256 * 1024])
                if durable is not None:
                    durable(fd, len(blob))
            finally:
                os.close(fd)
            os.link(part, name)
            part.unlink()
            if fsync_folder:
                folder = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(data)) as pool:
        for future in [pool.submit(write, n, blobs) for n, blobs in enumerate(data)]:
            future.result()
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def disk_floor(folders: list[Path], out: Path, fsync: bool) -> float:
    """Seconds to durably write every file of ``folders`` as the spool does without the journal: the
    ``.part`` fsynced, linked, the folder fsynced."""
    return _floor(folders, out, (lambda fd, _size: os.fsync(fd)) if fsync else None, fsync)


def journal_floor(folders: list[Path], out: Path) -> float:
    """Seconds for the journal's durability work alone, one thread per folder: write the .part, copy it
    into a pre-written segment file at its own offset, one fdatasync, link it into its folder (the
    syncer's later fsyncs of the spool files are not counted, as they are not waited for)."""
    sizes = [f.stat().st_size for folder in folders for f in folder.glob("*.dcm")]
    out.mkdir(parents=True)
    slot = max(sizes) + 8192
    segment_size = slot * len(sizes)
    segment = os.open(out / "segment", os.O_RDWR | os.O_CREAT, 0o600)
    zeros = bytes(1 << 20)
    for start in range(0, segment_size, 1 << 20):
        os.pwrite(segment, zeros, start)
    os.fsync(segment)
    offsets = iter(range(0, segment_size, slot))

    def durable(fd: int, size: int) -> None:
        os.copy_file_range(fd, segment, size, 0, next(offsets))
        os.fdatasync(segment)

    try:
        return _floor(folders, out, durable, fsync_folder=False)
    finally:
        os.close(segment)


def _ratio(reference: list[float], seconds: list[float]) -> float:
    """Median over reps of reference time / time (a throughput ratio)."""
    return statistics.median(a / b for a, b in zip(reference, seconds, strict=True))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def attack_case(work: Path, files: list[Path]) -> str:
    """Wall time of echoscu + a 20-instance storescu with 80 bad connections held open."""
    port = free_port()
    out = work / "out-attack"
    proc = start_dicomnode(out, port)
    held: list[socket.socket] = []
    try:
        wait_echo(port, "DICOMNODE", proc)
        folder = work / "attack-src"
        folder.mkdir()
        for f in files[:20]:
            os.link(f, folder / f.name)
        payloads = [b"", b"\x01", b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00\x00\x00\x01\x00"]
        for i in range(80):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if payloads[i % 4]:
                sock.sendall(payloads[i % 4])
            held.append(sock)
        start = time.perf_counter()
        echo = subprocess.run([ECHOSCU, "-aec", "DICOMNODE", "127.0.0.1", str(port)], capture_output=True,
                              env=ENV, timeout=120)
        seconds = send([folder], port, "DICOMNODE") if echo.returncode == 0 else float("nan")
        total = time.perf_counter() - start
        return (f"attack: 80 idle/garbage connections held; echoscu rc={echo.returncode}, 20-instance "
                f"storescu {seconds:.2f} s, both {total:.2f} s (target < 10 s)")
    finally:
        for sock in held:
            sock.close()
        stop(proc)
        shutil.rmtree(out, ignore_errors=True)


def big_object(work: Path, gigabytes: float) -> Path:
    """A multi-frame 16-bit Secondary Capture of about ``gigabytes`` GB; the pixel data is a sparse hole."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = max(1, int(gigabytes * 1e9 / (512 * 512 * 2)))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BIG", "OT"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    path = work / "big" / "big.dcm"
    path.parent.mkdir()
    ds.save_as(path, enforce_file_format=True)
    length = frames * 512 * 512 * 2
    with open(path, "ab") as handle:
        handle.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        handle.truncate(handle.tell() + length)
    return path


def big_case(work: Path, gigabytes: float) -> str:
    path = big_object(work, gigabytes)
    port = free_port()
    out = work / "out-big"
    proc = start_dicomnode(out, port)
    try:
        wait_echo(port, "DICOMNODE", proc)
        before = peak_rss_mb(proc.pid)
        seconds = send([path.parent], port, "DICOMNODE")
        after = peak_rss_mb(proc.pid)
        stored = list((out / "data" / "spool").glob("*/*/*.dcm"))
        size = stored[0].stat().st_size / 1e9 if stored else 0.0
        return (f"big object: {path.stat().st_size / 1e9:.2f} GB sent, {size:.2f} GB stored in "
                f"{seconds:.1f} s; node peak RSS {before:.0f} MB before, {after:.0f} MB after "
                f"(growth {after - before:.0f} MB, target < 100 MB)")
    finally:
        stop(proc)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(path.parent, ignore_errors=True)


# where an association thread's sample goes: the first of these found in its stack (py-spy raw format)
PROFILE_SHARES = (
    ("index commit", ("IndexWriterLock.held", "Ingest.commit_row", "Ingest._commit", "_Forwarder.index_row")),
    ("record commit", ("Journal.commit",)), ("journal record", ("Journal.append",)),
    ("link/close", ("Spool._publish", "PartFile.close", "_series_dir")), ("open .part", ("open_part",)),
    ("write .part", ("PartFile.write",)), ("dataset walker", ("walker.py",)),
    ("waiting for the sender", ("wire.py",)), ("command/response", ("command.py", "_reply")),
    ("reports to the node", ("_Forwarder.send",)),
)


def start_profilers(pid: int, folder: Path, label: str) -> list[subprocess.Popen]:
    """py-spy on ``pid`` and its receiver processes (raw stacks with idle time, per thread)."""
    import psutil

    pids = [pid] + [c.pid for c in psutil.Process(pid).children()
                    if "resource_tracker" not in " ".join(c.cmdline())]
    folder.mkdir(parents=True, exist_ok=True)
    spies = [subprocess.Popen(["py-spy", "record", "--pid", str(each), "--idle", "--threads", "--nonblocking",
                               "--rate", "200", "--format", "raw", "-o", str(folder / f"{label}-{n}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for n, each in enumerate(pids)]
    time.sleep(2)  # py-spy attaches
    return spies


def stop_profilers(spies: list[subprocess.Popen]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()


def profile_shares(files: list[Path]) -> str:
    """The association threads' time by what they did, in % (from py-spy raw files)."""
    counts: dict[str, int] = {}
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not frames[0].split(": ", 1)[-1].startswith("dicom-") or "_accept_loop" in stack:
                continue  # not an association thread
            share = next((name for name, keys in PROFILE_SHARES
                          if any(key in frame for key in keys for frame in frames)), "other")
            counts[share] = counts.get(share, 0) + int(count)
    total = sum(counts.values()) or 1
    return ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in
                     sorted(counts.items(), key=lambda item: -item[1]))


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
    parser.add_argument("--receivers", default="1,auto",
                        help="node.receivers values to run with more than one association (comma-separated)")
    parser.add_argument("--journal", default="on,off",
                        help="storage.journal.enabled values to run (comma-separated; off rows end in -j)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder (removed)")
    parser.add_argument("--big-gb", type=float, default=2.0, help="size of the big object (0: skip)")
    parser.add_argument("--no-attack", action="store_true", help="skip the attack line")
    parser.add_argument("--quick", action="store_true",
                        help="storescp against dicomnode with receivers: auto and the journal only, 1 and 4 "
                             "associations, no floors, attack line or big object")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of dicomnode (e.g. a worktree of the code before): its node "
                             "runs in every rep too, as the 'base ...' rows")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy every dicomnode process while it receives (raw stacks into this folder) "
                             "and print its association threads' shares; slows the node down")
    args = parser.parse_args()
    if args.profile is not None and shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    if args.quick:
        args.receivers, args.journal, args.no_attack, args.big_gb = "auto", "on", True, 0.0
    if args.baseline is not None and not (args.baseline / "dicomnode" / "__main__.py").exists():
        raise SystemExit(f"--baseline '{args.baseline}' is not a dicomnode checkout")
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
        fsync = not args.no_fsync
        receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
        journals = [j.strip() == "on" for j in args.journal.split(",") if j.strip()]
        rows: list[tuple[str, int, float, float, float]] = []  # name, assocs, seconds, vs storescp, vs floor
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            folders = [work / f"c{concurrency}" / str(i) for i in range(concurrency)]
            for i, f in enumerate(files):
                target = folders[i % concurrency]
                target.mkdir(parents=True, exist_ok=True)
                os.link(f, target / f.name)
            candidates: list[tuple[str, Callable[[Path, int], subprocess.Popen], str]] = [
                ("storescp", start_storescp, "STORESCP")]
            roots = [("", REPO_ROOT)] + ([("base ", args.baseline)] if args.baseline else [])
            for count in receivers if concurrency > 1 else receivers[:1]:
                for journal in journals:
                    for prefix, root in roots:
                        name = prefix + ("dicomnode" if count == "1" else f"dicomnode r={count}")
                        name += "" if journal else " -j"
                        candidates.append((name, partial(start_dicomnode, fsync=fsync, receivers=count,
                                                         journal=journal, root=root.resolve()), "DICOMNODE"))
            # the reps interleave the receivers (and the disk floor), so that the other load on the machine
            # weighs on all of them alike; ratios are taken within a rep, then the median
            times: dict[str, list[float]] = {name: [] for name, _, _ in candidates}
            if not args.quick:
                times["disk floor"] = []
                times["journal floor"] = []
            for rep in range(args.reps):
                line: list[str] = []
                # each rep starts with another receiver, so that none always runs right after storescp
                # (whose files are still being written back when it stops: it fsyncs nothing)
                first = rep % len(candidates)
                cpus: dict[str, float] = {}
                for name, starter, ae in candidates[first:] + candidates[:first]:
                    out = work / f"out-{name.replace(' ', '_')}-{concurrency}-{rep}"
                    port = free_port()
                    proc = starter(out, port)
                    try:
                        wait_echo(port, ae, proc)
                        label = f"{name.replace(' ', '_').replace('=', '')}-{concurrency}-{rep}"
                        spies = (start_profilers(proc.pid, args.profile, label)
                                 if args.profile is not None and name != "storescp" else [])
                        cpu = cpu_seconds(proc.pid)
                        times[name].append(send(folders, port, ae))
                        cpus[name] = cpu_seconds(proc.pid) - cpu
                        stop_profilers(spies)
                    finally:
                        stop(proc)
                    shutil.rmtree(out, ignore_errors=True)
                    os.sync()  # the next receiver does not pay for writing back this one's files
                if not args.quick:
                    floor = work / f"floor-{concurrency}-{rep}"
                    times["disk floor"].append(disk_floor(folders, floor, fsync))
                    times["journal floor"].append(journal_floor(folders, floor.with_name(f"j{floor.name}")))
                for name, _, _ in candidates:
                    figures = f"{name} {len(files) / times[name][-1]:.0f}/s"
                    if name != "storescp":
                        figures += (f" ({times['storescp'][-1] / times[name][-1]:.2f}, "
                                    f"CPU {cpus[name] / len(files) * 1000:.2f} ms)")
                    line.append(figures)
                load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
                print(f"rep {rep + 1}, {concurrency} assoc(s), load {load}: " + "; ".join(line), flush=True)
            for name, seconds in times.items():
                median = statistics.median(seconds)
                rows.append((name, concurrency, median, _ratio(times["storescp"], seconds),
                             _ratio(times["disk floor"], seconds) if "disk floor" in times else float("nan")))

        print(f"\n{'receiver':<20} {'assocs':>6} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} {'ratio':>6} "
              f"{'÷floor':>6}")
        for name, concurrency, seconds, ratio, floor_ratio in rows:
            print(
                f"{name:<20} {concurrency:>6} {seconds:>8.2f} {len(files) / seconds:>8.1f} "
                f"{megabytes / seconds:>7.1f} {ratio:>6.2f} {floor_ratio:>6.2f}"
            )
        print(
            "\nratio = throughput / storescp's at the same concurrency, in the same rep (median over reps);\n"
            "÷floor = throughput / the disk floor's: the same files written by `assocs` threads doing only\n"
            "the node's durability work per file (write a .part, fsync it, link it into its folder, fsync\n"
            "the folder): what a receiver that fsyncs each new file before Success can reach on this disk\n"
            "now (dicomnode -j: storage.journal off does this). journal floor: the receive journal's work\n"
            "alone (write the .part, copy it into a pre-written segment, one fdatasync, link it; the\n"
            "syncer's batched fsyncs behind are not waited for): the ceiling of the default dicomnode row.\n"
            "dicomnode r=N: node.receivers N (receiver processes sharing the port); base: the --baseline\n"
            "checkout's node, interleaved with this one's in every rep. (CPU in the rep lines: the node's\n"
            "user + system CPU over all its processes per instance, while receiving.)"
        )
        if args.profile is not None:
            print("\npy-spy, association threads' time (all reps):")
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                for name in {row[0] for row in rows if row[1] == concurrency and row[0] != "storescp"
                             and "floor" not in row[0]}:
                    prefix = f"{name.replace(' ', '_').replace('=', '')}-{concurrency}-"
                    found = [f for f in args.profile.glob(prefix + "*.txt")
                             if f.name[len(prefix):].split("-")[0].isdigit()]
                    print(f"  {name}, {concurrency} assoc(s): {profile_shares(found)}")
        if not args.no_attack:
            print(attack_case(work, files))
        if args.big_gb > 0:
            print(big_case(work, args.big_gb))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
