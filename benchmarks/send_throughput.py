"""Send throughput of the C-STORE SCU (DicomDestination) to dcmtk storescp and Orthanc on loopback.

Real CT slices (../shared/data/ct-abdomen-20/dicom, 512×512) are copied with fresh UIDs to reach N
instances; every variant sends the same files over one association in the same process:
TCP_NODELAY on (ours) versus plain pynetdicom (Nagle on), and storescu as the reference.

    python benchmarks/send_throughput.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicomnode.config import DestinationConfig
from dicomnode.send.destination import DicomDestination

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "ct-abdomen-20" / "dicom"


class NagleDestination(DicomDestination):
    ae_class = AE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def make_files(directory: Path, n: int) -> list[Path]:
    sources = sorted(SOURCE.glob("*.dcm"))
    study = generate_uid()
    series = generate_uid()
    files = []
    for i in range(n):
        ds = dcmread(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = directory / f"{i:05d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed_send(cls: type[DicomDestination], port: int, aet: str, files: list[Path]) -> float:
    dest = cls("bench", DestinationConfig(ae_title=aet, host="127.0.0.1", port=port), "DICOMNODE")
    t0 = time.perf_counter()
    outcomes = dest.send(files)
    elapsed = time.perf_counter() - t0
    assert all(o.delivered for o in outcomes), [o.error for o in outcomes if not o.delivered][:3]
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    work = Path(tempfile.mkdtemp(prefix="send-bench-"))
    try:
        files = make_files(work, n)
        mb = sum(f.stat().st_size for f in files) / 1e6
        rows = []
        port = free_port()
        out = work / "storescp"
        out.mkdir()
        scp = start(["/usr/bin/storescp", "--aetitle", "STORESCP", "-od", str(out), str(port)], port,
                    work / "storescp.log")
        try:
            t = time.perf_counter()
            storescu = ["/usr/bin/storescu", "-aec", "STORESCP", "127.0.0.1", str(port)]
            subprocess.run([*storescu, *map(str, files)], check=True, capture_output=True,
                           env={**os.environ, "TCP_NODELAY": "1"})
            rows.append(("storescp", "dcmtk storescu (reference)", time.perf_counter() - t))
            rows.append(("storescp", "DicomDestination, TCP_NODELAY", timed_send(DicomDestination, port,
                                                                                  "STORESCP", files)))
            rows.append(("storescp", "plain pynetdicom AE (Nagle)", timed_send(NagleDestination, port,
                                                                               "STORESCP", files)))
        finally:
            stop(scp)
        orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if Path(orthanc).exists():
            http, dicom = free_port(), free_port()
            config = work / "orthanc.json"
            config.write_text(json.dumps({
                "StorageDirectory": str(work / "o-storage"), "IndexDirectory": str(work / "o-index"),
                "Plugins": [], "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                "StorageCompression": False}))
            proc = start([orthanc, str(config)], dicom, work / "orthanc.log")
            try:
                rows.append(("Orthanc", "DicomDestination, TCP_NODELAY",
                             timed_send(DicomDestination, dicom, "ORTHANC", files)))
            finally:
                stop(proc)
        print(f"{n} CT instances 512x512 ({mb:.0f} MB), one association, loopback, {os.cpu_count()} CPUs")
        print(f"{'peer':<10} {'sender':<34} {'seconds':>8} {'inst/s':>8} {'MB/s':>7}")
        for peer, sender, seconds in rows:
            print(f"{peer:<10} {sender:<34} {seconds:8.2f} {n / seconds:8.0f} {mb / seconds:7.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
