"""Durable spool of received instances: atomic files, the SQLite index, startup recovery."""

from dicomnode.spool.header import HeaderError, InstanceHeader, check_complete, parse_dataset, read_header
from dicomnode.spool.index import SeriesSummary, SpoolIndex, StudySummary
from dicomnode.spool.recovery import RecoveryReport, recover
from dicomnode.spool.store import OutOfSpaceError, Spool, StoredFile, validate_uid

__all__ = [
    "HeaderError",
    "InstanceHeader",
    "OutOfSpaceError",
    "RecoveryReport",
    "SeriesSummary",
    "Spool",
    "SpoolIndex",
    "StoredFile",
    "StudySummary",
    "check_complete",
    "parse_dataset",
    "read_header",
    "recover",
    "validate_uid",
]
