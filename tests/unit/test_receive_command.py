"""The DIMSE command set reader: what pydicom writes, it reads; anything else is refused."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomnode.receive.association import ProtocolError, decode_command
from dicomnode.receive.command import Command, CommandError


def _encoded(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _c_store_rq() -> Dataset:
    ds = Dataset()
    ds.CommandGroupLength = 0  # value irrelevant to the reader
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.CommandField = 0x0001
    ds.MessageID = 513
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5.6.7"  # odd length: padded with a NUL
    ds.MoveOriginatorApplicationEntityTitle = "MOVER"
    return ds


def test_a_command_written_by_pydicom_reads_back_value_by_value() -> None:
    command = Command.decode(_encoded(_c_store_rq()))
    assert command.get("CommandField") == 0x0001 and command.MessageID == 513
    assert command.get("CommandDataSetType") == 0x0000
    assert command.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert command.AffectedSOPInstanceUID == "1.2.3.4.5.6.7"
    assert command.get("MoveOriginatorApplicationEntityTitle") == "MOVER"
    assert "AffectedSOPInstanceUID" in command and "EventTypeID" not in command
    assert command.get("EventTypeID", 7) == 7 and command.get("PatientName", "x") == "x"
    with pytest.raises(AttributeError):
        _ = command.EventTypeID


@pytest.mark.parametrize("data", [
    b"",
    b"\x00\x00\x00\x00\x04\x00",  # an element header cut short
    b"\x00\x00\x00\x01\x10\x00\x00\x00abc",  # a value longer than what is left
    b"\x08\x00\x16\x00\x02\x00\x00\x001\x00",  # (0008,0016): not a command element
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_anything_but_a_command_set_is_refused(data: bytes) -> None:
    with pytest.raises(CommandError):
        Command.decode(data)
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        decode_command(data)
