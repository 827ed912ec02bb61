"""Logging set-up for the CLI: JSON lines or readable text, identifiers on every line, PHI redacted.

Only the CLI calls :func:`configure_logging` (``dicomnode serve`` and friends); library code just uses
``logging.getLogger(__name__)``.

Context. Every line carries the identifiers of the work it belongs to: the association, calling AE, study,
series, instance, job, pipeline, rule and destination. Stages set them for a block of work with
:func:`log_context` (a ``contextvars`` context, so it follows threads' own work and asyncio tasks) or per
call with ``extra={"study_uid": …}``. Inside such a block a stage that reads a patient's identity
registers it with :func:`register_phi`; it stays registered until the block ends::

    with log_context(calling_aet=aet, sop_uid=sop_uid):
        header = parse_dataset(...)
        register_phi(header.patient_name, header.patient_id)
        log.info("Stored %s", sop_uid)

(:func:`phi_values` does the same as a block of its own.)

PHI. Unless ``logging.include_phi`` is true, the formatters installed by :func:`configure_logging` write
``[REDACTED]`` in place of patient names, IDs and birth dates: ``extra`` fields with PHI names,
``PatientName=…``/``'PatientID': '…'`` style text, pydicom element dumps of group 0010 (``(0010,0010)
Patient's Name PN: '…'``), and every literal value registered for the current work — in the message, its
arguments and tracebacks alike. The record itself is left as it was (other handlers see it unchanged).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from dicomnode.config import LoggingConfig

REDACTED = "[REDACTED]"

#: The identifiers a line may carry, in the order text lines show them.
CONTEXT_FIELDS = (
    "association", "calling_aet", "study_uid", "series_uid", "sop_uid", "job_id", "pipeline", "rule",
    "destination",
)
_SHORT = {"association": "assoc", "calling_aet": "aet", "study_uid": "study", "series_uid": "series",
          "sop_uid": "sop", "job_id": "job", "pipeline": "pipeline", "rule": "rule", "destination": "dest"}

#: Attribute keywords whose values are PHI in logs (patient identity and demographics).
PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "OtherPatientIDsSequence", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientBirthTime", "IssuerOfPatientID", "ReferringPhysicianName",
)
_PHI_EXTRA = {k.lower() for k in PHI_KEYWORDS} | {
    "patient_name", "patient_id", "patient_birth_date", "patient", "other_patient_ids",
}

_KW = "|".join(PHI_KEYWORDS)
_PATTERNS = (
    # 'PatientName': 'Doe^John'  /  "PatientID": "123"   (dict and JSON reprs)
    re.compile(rf"""(?P<k>['"](?:{_KW})['"]\s*:\s*)(?P<v>'[^']*'|"[^"]*"|[^,}}\s]+)"""),
    # PatientName=Doe^John  PatientID: 123  patient_id='x'
    re.compile(rf"""(?P<k>\b(?:{_KW}|patient_name|patient_id|patient_birth_date)\s*[=:]\s*)"""
               r"""(?P<v>'[^']*'|"[^"]*"|[^\s,;)\]}]+)""", re.IGNORECASE),
    # pydicom element dumps: (0010,0010) Patient's Name     PN: 'Doe^John'  (whole patient group 0010)
    re.compile(r"""(?P<k>\(0010,\s?[0-9A-Fa-f]{4}\)[^\n:]*?:\s*)(?P<v>[^\n]*)"""),
    # dcmdump style: (0010,0010) PN [Doe^John]
    re.compile(r"""(?P<k>\(0010,[0-9A-Fa-f]{4}\)\s+[A-Z]{2}\s+)(?P<v>\[[^\]\n]*\])"""),
)

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_EMPTY: Mapping[str, Any] = MappingProxyType({})
# Per-task/thread context values; a ContextVar holds no shared mutable state (each context its own map).
_context: ContextVar[Mapping[str, Any]] = ContextVar("dicomnode_log_context", default=_EMPTY)
_phi: ContextVar[tuple[str, ...]] = ContextVar("dicomnode_log_phi", default=())
_HANDLER_MARK = "_dicomnode_handler"


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add identifiers (see :data:`CONTEXT_FIELDS`) to every log line written inside the block."""
    merged = dict(_context.get())
    merged.update({k: str(v) for k, v in fields.items() if v is not None and v != ""})
    token = _context.set(MappingProxyType(merged))
    phi_token = _phi.set(_phi.get())  # PHI registered inside the block is forgotten when it ends
    try:
        yield
    finally:
        _phi.reset(phi_token)
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


def register_phi(*values: Any) -> None:
    """Redact these patient values (name, ID, birth date) in every line until the enclosing
    :func:`log_context` (or :func:`phi_values`) block ends."""
    found: list[str] = list(_phi.get())
    for value in values:
        text = str(value).strip() if value is not None else ""
        if len(text) < 3:  # too short to replace safely (would mangle ordinary numbers)
            continue
        found.append(text)
        if "^" in text:  # 'Doe^John' is also written 'Doe John' / 'Doe, John'
            parts = [p for p in text.split("^") if p]
            found += [" ".join(parts), ", ".join(parts)]
    _phi.set(tuple(sorted(set(found), key=len, reverse=True)))


@contextmanager
def phi_values(*values: Any) -> Iterator[None]:
    """Register this work's patient values (name, ID, birth date) so that no log line inside shows them."""
    token = _phi.set(_phi.get())
    register_phi(*values)
    try:
        yield
    finally:
        _phi.reset(token)


def redact(text: str, values: tuple[str, ...] = ()) -> str:
    """``text`` with patient names/IDs/birth dates replaced by ``[REDACTED]``."""
    for value in values:
        text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group("k") + REDACTED, text)
    return text


class ContextFilter(logging.Filter):
    """Copies the current :func:`log_context` identifiers onto each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def redacted_record(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` without PHI in the message, its arguments, PHI-named extras or the traceback."""
    values = _phi.get()
    copy = logging.makeLogRecord(vars(record))
    copy.msg, copy.args = redact(record.getMessage(), values), None
    for key in list(vars(copy)):
        if key.lower() in _PHI_EXTRA:
            setattr(copy, key, REDACTED)
    exc_text = record.exc_text
    if record.exc_info and not exc_text:
        exc_text = logging.Formatter().formatException(record.exc_info)
    copy.exc_info, copy.exc_text = None, redact(exc_text, values) if exc_text else None
    if record.stack_info:
        copy.stack_info = redact(record.stack_info, values)
    return copy


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message, identifiers, extras;
    PHI redacted unless ``include_phi``."""

    def __init__(self, *, include_phi: bool = False) -> None:
        super().__init__()
        self.include_phi = include_phi

    def format(self, record: logging.LogRecord) -> str:
        if not self.include_phi:
            record = redacted_record(record)
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exception"] = record.exc_text
        if record.stack_info:
            body["stack"] = record.stack_info
        return json.dumps(body, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO  dicomnode.receive: Stored … [study=… series=…]``; PHI redacted
    unless ``include_phi``."""

    def __init__(self, *, include_phi: bool = False) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        self.include_phi = include_phi

    def format(self, record: logging.LogRecord) -> str:
        if not self.include_phi:
            record = redacted_record(record)
        text = super().format(record)
        extras = _extras(record)
        ordered = [f"{_SHORT[k]}={extras.pop(k)}" for k in CONTEXT_FIELDS if k in extras]
        ordered += [f"{k}={v}" for k, v in sorted(extras.items())]
        if not ordered:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{' '.join(ordered)}]{newline}{rest}"


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger to ``stream`` (default stderr) as configured; returns the installed handler.

    ``config.format``: ``json``, ``text`` or ``auto`` (text on a terminal, JSON otherwise). Calling it
    again replaces the handler it installed before (and leaves handlers others installed alone).
    """
    stream = sys.stderr if stream is None else stream
    fmt = config.format
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        fmt = "text" if isatty is not None and isatty() else "json"
    handler = logging.StreamHandler(stream)
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler.setFormatter(formatter(include_phi=config.include_phi))
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
    # pynetdicom narrates every PDU at INFO/DEBUG; keep it to warnings unless we debug.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if config.level == "DEBUG" else logging.WARNING)
    # apscheduler logs every run of the completion check at INFO
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if config.level == "DEBUG" else logging.WARNING)
    logging.captureWarnings(True)
    return handler
