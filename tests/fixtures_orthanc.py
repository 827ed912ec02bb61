"""Real DICOM peers for sending tests: Orthanc (a PACS with a REST API), dcmtk storescp (plain and TLS),
and a pynetdicom Storage SCP answering chosen statuses. Each runs on free loopback ports with a
throwaway directory and is stopped by PID in the fixture's finalizer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests.support import dcmtk, free_port, require_tool

ORTHANC_AET = "ORTHANC"


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before opening port {port}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (by PID; only the process we started)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _orthanc_binary() -> str:
    found = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()), "Orthanc"
    )
    return require_tool(found)


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Orthanc:
    """One Orthanc instance; ``stop()`` and ``start()`` again keep its ports and storage."""

    def __init__(self, workdir: Path, aet: str = ORTHANC_AET, *, dicomweb: bool = False,
                 users: dict[str, str] | None = None, extra: dict[str, object] | None = None) -> None:
        import httpx

        self.binary = _orthanc_binary()
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.proc: subprocess.Popen[bytes] | None = None
        # no keep-alive: Orthanc closes idle connections, and a reused one fails with "Server disconnected"
        self._http = httpx.Client(
            base_url=self.url, timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0),
            auth=next(iter(users.items())) if users else None,
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps({
            "Name": "dicomnode-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            **(extra or {}),
        }, indent=2))

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        log = (self.workdir / "orthanc.log").open("ab")
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen([self.binary, str(self.config_path)], stdout=log, stderr=log, env=env)
        wait_for_port(self.dicom_port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._http.get("/system").status_code == 200:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer REST on {self.url} within {timeout} s")

    def stop(self, grace: float = 2.0) -> None:
        stop_process(self.proc, grace)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """The end of a test: SIGKILL at once (its storage is thrown away; Orthanc takes 3–5 s to exit on
        SIGTERM, which ``stop`` waits out for 2 s) and close the REST client."""
        if self.running:
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(10)  # type: ignore[union-attr]
        self.proc = None
        self._http.close()

    # -- REST helpers ----------------------------------------------------------------------------
    def get_json(self, path: str) -> object:
        response = self._http.get(path)
        response.raise_for_status()
        return response.json()

    def lookup(self, uid: str) -> list[dict[str, str]]:
        response = self._http.post("/tools/lookup", content=uid)
        response.raise_for_status()
        return list(response.json())

    def instances_of_study(self, study_uid: str) -> list[dict[str, object]]:
        """The instances of the study (each with ``ID``, ``MainDicomTags`` and ``ParentSeries``)."""
        studies = [r for r in self.lookup(study_uid) if r["Type"] == "Study"]
        if not studies:
            return []
        return list(self.get_json(f"/studies/{studies[0]['ID']}/instances"))  # type: ignore[arg-type]

    def series_of_study(self, study_uid: str) -> list[dict[str, object]]:
        studies = [r for r in self.lookup(study_uid) if r["Type"] == "Study"]
        if not studies:
            return []
        return list(self.get_json(f"/studies/{studies[0]['ID']}/series"))  # type: ignore[arg-type]

    def simplified_tags(self, instance_id: str) -> dict[str, object]:
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))  # type: ignore[arg-type]

    def instance_file(self, instance_id: str) -> bytes:
        response = self._http.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        return response.content

    def count_instances(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])  # type: ignore[index]


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@dataclass
class StoreSCP:
    """A dcmtk storescp writing what it receives to ``directory``."""

    port: int
    aet: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())


@pytest.fixture
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., StoreSCP]]:
    """Factory: ``storescp()`` plain, ``storescp(tls=(key, cert, ca))`` with TLS requiring a client
    certificate signed by ``ca``."""
    started: list[StoreSCP] = []

    def start(aet: str = "STORESCP", tls: tuple[Path, Path, Path] | None = None) -> StoreSCP:
        binary = dcmtk("storescp")
        workdir = tmp_path_factory.mktemp("storescp")
        out = workdir / "received"
        out.mkdir()
        scp = StoreSCP(free_port(), aet, out)
        cmd = [binary, "--aetitle", aet, "--output-directory", str(out)]
        if tls is not None:
            key, cert, ca = tls
            cmd += ["+tls", str(key), str(cert), "+cf", str(ca), "--require-peer-cert"]
        cmd.append(str(scp.port))
        log = (workdir / "storescp.log").open("ab")
        scp.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "TCP_NODELAY": "1"})
        started.append(scp)
        wait_for_port(scp.port, 10, scp.proc)
        return scp

    try:
        yield start
    finally:
        for scp in started:
            stop_process(scp.proc, grace=1.0)


@dataclass
class StatusSCP:
    """A pynetdicom Storage SCP on loopback answering ``status_for(dataset)`` to each C-STORE."""

    port: int
    aet: str
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs, in arrival order
    contexts: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, TS) proposed


@pytest.fixture
def status_scp() -> Iterator[Callable[..., StatusSCP]]:
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    servers: list[object] = []
    lock = threading.Lock()

    def start(status_for: Callable[[object], int], aet: str = "STATUSSCP",
              sop_classes: list[str] | None = None, require_calling_aet: list[str] | None = None,
              ) -> StatusSCP:
        scp = StatusSCP(free_port(), aet)

        def on_store(event: object) -> int:
            ds = event.dataset  # type: ignore[attr-defined]
            status = status_for(ds)
            with lock:
                scp.received.append(str(ds.SOPInstanceUID))
            return status

        def on_request(event: object) -> None:
            for cx in event.assoc.requestor.requested_contexts:  # type: ignore[attr-defined]
                scp.contexts.append((str(cx.abstract_syntax), str(cx.transfer_syntax[0])))

        ae = AE(ae_title=aet)
        ae.require_calling_aet = require_calling_aet or []
        for cx in AllStoragePresentationContexts:
            if sop_classes is None or cx.abstract_syntax in sop_classes:
                ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(Verification)
        server = ae.start_server(("127.0.0.1", scp.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_REQUESTED, on_request)])
        servers.append(server)
        return scp

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PKI:
    """A throwaway CA with a server certificate (localhost, 127.0.0.1) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, name: str = "test") -> PKI:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: rsa.RSAPrivateKey, path: Path) -> Path:
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        return path

    def write_cert(c: x509.Certificate, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca_name).public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False))
        return builder.sign(ca_key, hashes.SHA256()), k

    server, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = leaf(f"{name} client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return PKI(
        ca=write_cert(ca_cert, directory / "ca.pem"),
        server_cert=write_cert(server, directory / "server.pem"),
        server_key=write_key(server_key, directory / "server.key"),
        client_cert=write_cert(client, directory / "client.pem"),
        client_key=write_key(client_key, directory / "client.key"),
    )


# -- reading result objects back (SEG voxel counts, TID 1500 volumes) --------------------------------------
VOLUMES = ("118565006", "G-D705")  # SNOMED CT Volume (and its retired SRT code)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def seg_voxels(seg: Dataset) -> tuple[dict[int, int], float]:
    """Voxels per segment and the voxel volume in mm³ (pixel spacing × spacing between frame planes)."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    counts: dict[int, int] = {}
    positions = []
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        # with a single segment the identification may be shared by every frame
        identification = group.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(np.count_nonzero(frame))
        positions.append([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    orientation = np.array(
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float
    )
    normal = np.cross(orientation[:3], orientation[3:])
    heights = sorted({round(float(np.dot(normal, p)), 3) for p in positions})
    spacing = float(np.min(np.diff(heights))) if len(heights) > 1 else float(measures.SliceThickness)
    row, col = (float(v) for v in measures.PixelSpacing)
    return counts, row * col * spacing


def sr_volumes(sr: Dataset) -> dict[int, tuple[float, str]]:
    """Segment number → (volume, unit) of every volumetric measurement group of a TID 1500 report."""
    volumes: dict[int, tuple[float, str]] = {}

    def walk(items: list[Dataset]) -> None:
        for item in items:
            children = list(item.get("ContentSequence", []))
            segment = None
            volume = None
            for child in children:
                if "ReferencedSOPSequence" in child:
                    ref = child.ReferencedSOPSequence[0]
                    if ref.ReferencedSOPClassUID == SEGMENTATION_STORAGE and "ReferencedSegmentNumber" in ref:
                        segment = int(ref.ReferencedSegmentNumber)
                if child.get("ValueType") == "NUM" and child.ConceptNameCodeSequence[0].CodeValue in VOLUMES:
                    measured = child.MeasuredValueSequence[0]
                    volume = (float(measured.NumericValue),
                              str(measured.MeasurementUnitsCodeSequence[0].CodeValue))
            if segment is not None and volume is not None:
                volumes[segment] = volume
            walk(children)

    walk(list(sr.ContentSequence))
    return volumes
