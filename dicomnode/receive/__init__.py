"""The DICOM listener (C-ECHO, C-STORE SCP) and the ingest of received datasets into the spool."""

from dicomnode.receive.ingest import Ingest, StoreResult
from dicomnode.receive.listener import Listener

__all__ = ["Ingest", "Listener", "StoreResult"]
