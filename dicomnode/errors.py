"""Typed errors, one subclass per stage.

Errors are raised with full sentences that quote the bad value; they are caught at stage
boundaries (DICOM status, job state, CLI message) and never swallowed.
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of every error dicomnode raises on purpose."""


class ConfigError(DicomNodeError):
    """The configuration file or an environment override is invalid."""


class SpoolError(DicomNodeError):
    """An instance could not be persisted to, or read from, the spool."""


class InvalidUIDError(SpoolError):
    """A UID is not a valid DICOM UID (and so cannot become a path component)."""


class StorageFullError(SpoolError):
    """The spool's filesystem is above its configured fill threshold."""


class ReceiveError(DicomNodeError):
    """A problem in the DICOM listener (association or dataset)."""


class AssemblyError(DicomNodeError):
    """Series/study assembly or completion failed."""


class RuleError(DicomNodeError):
    """A routing rule file is invalid or a rule cannot be evaluated."""


class VolumeError(DicomNodeError):
    """A series cannot be turned into a 3-D volume (geometry, missing slices, SOP class)."""


class ImagingError(DicomNodeError):
    """An imaging step failed or was given invalid parameters."""


class PipelineError(DicomNodeError):
    """A pipeline is unknown, misconfigured, crashed or timed out."""


class OutputError(DicomNodeError):
    """A result object (SEG, derived series, SR) could not be built."""


class SendError(DicomNodeError):
    """A result could not be delivered to a destination."""


class QuantifyError(DicomNodeError):
    """Radiomic quantification failed."""


class ConsoleError(DicomNodeError):
    """The web console cannot start, or an operator action in it was refused."""


class DistributedError(PipelineError):
    """Handing a job to distributed workers or collecting its result failed (broker, shared folder, hash)."""
