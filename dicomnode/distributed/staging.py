"""The shared job folder: what the node hands to workers and what they hand back, with sha256 manifests.

Layout under the shared folder (NFS/NAS in production, mounted at the same ``shared_dir`` option on
the node and the workers; the node's SQLite database is never there)::

    <job_id>/attempt                      the attempt the node currently wants (a hint for workers)
    <job_id>/in/00001-<name>.dcm ...      the source series, staged by the node
    <job_id>/in/manifest.json             {"files": [{"name", "sha256", "size"}, ...]}
    <job_id>/out/attempt-<n>.<token>.claim   a worker started attempt n (JSON: worker, pid, time)
    <job_id>/out/attempt-<n>.<token>.tmp/    a worker writing attempt n
    <job_id>/out/attempt-<n>/             committed: result objects, manifest.json, result.json (last)
    <job_id>/out/attempt-<n>.failed       the worker's parent process saw attempt n die (time limit, crash)

A worker commits by renaming its ``.tmp`` folder to ``attempt-<n>``; a second copy of the same attempt
finds the name taken and discards its own. The node accepts a committed folder only if every output file
matches the output manifest and the manifest matches the hash recorded in ``result.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from dicomnode.errors import DistributedError
from dicomnode.jobs import JobResult

MANIFEST = "manifest.json"
RESULT = "result.json"
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (fsynced unless it is only a hint)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class JobLayout:
    """Paths of one job inside the shared folder."""

    shared_dir: Path
    job_id: str

    def __post_init__(self) -> None:
        if not _JOB_ID_RE.match(self.job_id):
            raise DistributedError(f"Job id '{self.job_id}' cannot name a folder in the shared job area.")

    @property
    def root(self) -> Path:
        return self.shared_dir / self.job_id

    @property
    def in_dir(self) -> Path:
        return self.root / "in"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def attempt_file(self) -> Path:
        return self.root / "attempt"

    def committed(self, attempt: int) -> Path:
        return self.out_dir / f"attempt-{attempt}"

    def temporary(self, attempt: int, token: str) -> Path:
        return self.out_dir / f"attempt-{attempt}.{token}.tmp"

    def claim(self, attempt: int, token: str) -> Path:
        return self.out_dir / f"attempt-{attempt}.{token}.claim"

    def claims(self, attempt: int) -> list[Path]:
        return sorted(self.out_dir.glob(f"attempt-{attempt}.*.claim"))

    def failed(self, attempt: int) -> Path:
        return self.out_dir / f"attempt-{attempt}.failed"

    def wanted_attempt(self) -> int:
        """The attempt the node currently wants (0 when unknown)."""
        try:
            return int(self.attempt_file.read_text().strip())
        except (OSError, ValueError):
            return 0


# --- the node's side: staging the input -------------------------------------------------------------------
def stage_inputs(layout: JobLayout, files: list[str], attempt: int) -> str:
    """Put the source series into ``in/`` with its manifest (hard links when on the same filesystem)
    and record ``attempt``; returns the manifest's sha256. Reuses a complete earlier staging."""
    layout.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(layout.attempt_file, f"{attempt}\n".encode(), durable=False)  # a hint for workers
    names = [f"{i:05d}-{Path(f).name}" for i, f in enumerate(files, 1)]
    manifest_path = layout.in_dir / MANIFEST
    if manifest_path.exists():
        data = manifest_path.read_bytes()
        try:
            listed = [entry["name"] for entry in json.loads(data)["files"]]
        except (ValueError, KeyError, TypeError):
            listed = []
        if listed == names:
            return sha256_bytes(data)
    if layout.in_dir.exists():
        shutil.rmtree(layout.in_dir)
    layout.in_dir.mkdir(parents=True)
    entries = []
    for source, name in zip(files, names, strict=True):
        target = layout.in_dir / name
        try:
            os.link(source, target)
        except OSError:
            try:
                shutil.copyfile(source, target)
            except OSError as exc:
                raise DistributedError(f"Cannot stage '{source}' into '{layout.in_dir}': {exc}.") from exc
        entries.append({"name": name, "sha256": sha256_file(target), "size": target.stat().st_size})
    data = canonical({"files": entries})
    write_atomic(manifest_path, data)
    fsync_dir(layout.in_dir)
    return sha256_bytes(data)


# --- the worker's side: reading the input, committing the output ----------------------------------------
def copy_verified(layout: JobLayout, manifest_hash: str, scratch: Path) -> list[str]:
    """Copy ``in/`` to ``scratch`` verifying the manifest's hash and every file's sha256."""
    manifest_path = layout.in_dir / MANIFEST
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise DistributedError(f"The input manifest '{manifest_path}' cannot be read: {exc}.") from exc
    if sha256_bytes(data) != manifest_hash:
        raise DistributedError(f"The input manifest '{manifest_path}' has sha256 {sha256_bytes(data)}, "
                               f"not {manifest_hash} as the job message says.")
    scratch.mkdir(parents=True, exist_ok=True)
    copied = []
    for entry in json.loads(data)["files"]:
        source, target = layout.in_dir / entry["name"], scratch / entry["name"]
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
        except OSError as exc:
            raise DistributedError(f"Cannot copy input '{source}' to scratch: {exc}.") from exc
        if digest.hexdigest() != entry["sha256"]:
            raise DistributedError(f"Input file '{source}' has sha256 {digest.hexdigest()}, not "
                                   f"{entry['sha256']} as in its manifest.")
        copied.append(str(target))
    return copied


def commit_attempt(layout: JobLayout, attempt: int, token: str, result: JobResult) -> bool:
    """Copy ``result``'s files into ``out/attempt-<n>.<token>.tmp/``, write the output manifest, then
    ``result.json`` last, and rename the folder to ``attempt-<n>``. False when that attempt was already
    committed (by a duplicate delivery); the temporary folder is then removed."""
    tmp = layout.temporary(attempt, token)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    entries, names = [], []
    for source in result.output_files:
        name = Path(source).name
        target = tmp / name
        shutil.copyfile(source, target)
        entries.append({"name": name, "sha256": sha256_file(target), "size": target.stat().st_size})
        names.append(name)
    manifest = canonical({"files": entries})
    (tmp / MANIFEST).write_bytes(manifest)
    summary = {**result.summary, "manifest_sha256": sha256_bytes(manifest)}
    committed = replace(result, output_files=tuple(names), summary=summary)
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    write_atomic(tmp / RESULT, committed.to_json().encode("utf-8"))
    fsync_dir(tmp)
    try:
        os.rename(tmp, layout.committed(attempt))
    except OSError:  # ENOTEMPTY/EEXIST: another delivery of this attempt committed first
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    fsync_dir(layout.out_dir)
    return True


# --- the node's side: reading a committed result -----------------------------------------------------------
def read_committed(folder: Path) -> JobResult:
    """The :class:`JobResult` of a committed attempt folder, its output files as absolute paths inside
    it, after checking every file against the output manifest (DistributedError when anything differs)."""
    try:
        result = JobResult.from_json((folder / RESULT).read_text(encoding="utf-8"))
        manifest = (folder / MANIFEST).read_bytes()
        entries = {e["name"]: e["sha256"] for e in json.loads(manifest)["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DistributedError(f"The result folder '{folder}' is incomplete or unreadable: {exc}.") from exc
    expected = result.summary.get("manifest_sha256")
    if sha256_bytes(manifest) != expected:
        raise DistributedError(f"The output manifest of '{folder}' has sha256 {sha256_bytes(manifest)}, not "
                               f"{expected} as its result.json says.")
    files = []
    for name in result.output_files:
        if name not in entries or Path(name).name != name:
            raise DistributedError(f"Result file '{name}' of '{folder}' is not in its output manifest.")
        path = folder / name
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise DistributedError(f"Result file '{path}' cannot be read: {exc}.") from exc
        if actual != entries[name]:
            raise DistributedError(f"Result file '{path}' has sha256 {actual}, not {entries[name]} as in "
                                   "its output manifest.")
        files.append(str(path))
    return replace(result, output_files=tuple(files))


def adopt(folder: Path, destination: Path) -> Path:
    """Move a verified committed folder to ``destination`` (node-local) unless it is already inside it."""
    if folder.resolve().is_relative_to(destination.resolve()):
        return folder
    target = destination / folder.name
    destination.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    return target
