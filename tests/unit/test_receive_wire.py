"""The receive path's building blocks: the streaming dataset walker and the DIMSE/PDU encoders."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence

from dicomnode.receive.association import ProtocolError, decode_request, p_data_pdus, response
from dicomnode.spool.header import HeaderError, read_header
from dicomnode.spool.walker import DatasetWalker, InflateLimitError
from tests.factories import ct_series, dataset_offset
from tests.integration.test_fuzz_listener import associate_rq

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def ct(tmp_path: Path) -> tuple[Path, bytes]:
    path = ct_series(tmp_path, slices=1, rows=64, cols=64, seed="walker")[0]
    raw = path.read_bytes()
    return path, raw[dataset_offset(raw):]


@pytest.mark.parametrize("chunk", [1, 5, 11, 4096, 1 << 30])
def test_any_chunking_gives_the_header_pydicom_reads(ct: tuple[Path, bytes], chunk: int) -> None:
    path, data = ct
    walker = DatasetWalker(EXPLICIT)
    for start in range(0, len(data), chunk):
        walker.feed(data[start:start + chunk])
    assert walker.finish() == read_header(path)


def _encoded(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.mark.parametrize(("syntax", "implicit", "little"),
                         [("1.2.840.10008.1.2", True, True), ("1.2.840.10008.1.2.2", False, False)])
def test_defined_length_sequences_in_other_syntaxes(ct: tuple[Path, bytes], syntax: str, implicit: bool,
                                                    little: bool) -> None:
    path, _ = ct
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = Sequence([item, item])
    data = _encoded(ds, implicit=implicit, little=little)  # pydicom writes defined lengths
    walker = DatasetWalker(syntax)
    walker.feed(data)
    header = walker.finish()
    assert header.sop_instance_uid == ds.SOPInstanceUID and header.series_number == 1
    walker = DatasetWalker(syntax)
    walker.feed(data[:-1])
    with pytest.raises(HeaderError, match="truncated"):
        walker.finish()


def _nested(depth: int) -> bytes:
    opening = b"".join(struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
                       + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) for _ in range(depth))
    closing = b"".join(struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
                       for _ in range(depth))
    return opening + closing


def test_nesting_of_any_depth_is_answered_without_recursion(ct: tuple[Path, bytes]) -> None:
    _, data = ct
    cut = data.index(b"\x20\x00\x0d\x00")
    deep = data[:cut] + _nested(50_000) + data[cut:]
    walker = DatasetWalker(EXPLICIT, max_depth=64)
    with pytest.raises(HeaderError, match="nested more than 64 deep"):
        walker.feed(deep)
    walker = DatasetWalker(EXPLICIT, max_depth=100_000)  # allowed: walked with a stack, not recursion
    walker.feed(deep)
    assert walker.finish().study_uid


def test_undefined_length_un_is_walked_as_implicit_vr(ct: tuple[Path, bytes]) -> None:
    _, data = ct
    item = struct.pack("<HHI", 0x0008, 0x1155, 6) + b"1.2.3\0"  # implicit VR inside
    un = (struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
          + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
          + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    cut = data.index(b"\x10\x00\x10\x00")  # (0010,0010): the private group 0009 goes before it
    walker = DatasetWalker(EXPLICIT)
    walker.feed(data[:cut] + un + data[cut:])
    assert walker.finish().patient_id


def test_deflate_is_inflated_as_a_stream_up_to_the_limit(ct: tuple[Path, bytes]) -> None:
    _, data = ct
    deflated = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflated.compress(data) + deflated.flush()
    walker = DatasetWalker("1.2.840.10008.1.2.1.99")
    for start in range(0, len(body), 1000):
        walker.feed(body[start:start + 1000])
    assert walker.finish().patient_id
    walker = DatasetWalker("1.2.840.10008.1.2.1.99", max_inflated=len(data) - 1)
    with pytest.raises(InflateLimitError, match="expands beyond"):
        walker.feed(body)
        walker.finish()


@pytest.mark.parametrize("garbage", [b"", b"\x08\x00", b"GET / HTTP/1.1\r\n\r\n" * 3, bytes(100)])
def test_garbage_is_not_a_dataset(garbage: bytes) -> None:
    walker = DatasetWalker(EXPLICIT)
    with pytest.raises(HeaderError):
        walker.feed(garbage)
        walker.finish()


def test_response_command_set_reads_back_with_pydicom() -> None:
    request = Dataset()
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.MessageID = 7
    encoded = response(request, 0x8001, 0xA900, "SOP Class UID differs from command")
    ds = read_dataset(io.BytesIO(encoded), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(encoded) - 12
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 7, 0xA900)
    assert ds.AffectedSOPInstanceUID == "1.2.3.4.5" and ds.CommandDataSetType == 0x0101
    assert ds.ErrorComment == "SOP Class UID differs from command"


def test_pdus_are_fragmented_to_the_peers_maximum_length() -> None:
    payload = bytes(range(256)) * 40
    pdus = p_data_pdus(3, payload, command=True, peer_max_pdu=4096)
    pos, got, controls = 0, b"", []
    while pos < len(pdus):
        kind, length = struct.unpack_from(">BxI", pdus, pos)
        assert kind == 0x04 and length <= 4096
        item_length, context, control = struct.unpack_from(">IBB", pdus, pos + 6)
        assert context == 3 and item_length == length - 4
        got += pdus[pos + 12:pos + 6 + length]
        controls.append(control)
        pos += 6 + length
    assert got == payload and controls[-1] == 0x03 and set(controls[:-1]) == {0x01}


def test_a_broken_associate_request_is_a_protocol_error() -> None:
    request = decode_request(associate_rq())
    assert request.calling_aet == "FUZZER" and request.peer_max_pdu == 16384 and len(request.contexts) == 2
    rq = associate_rq()
    unknown_item = rq[:74] + b"\x99\x00\x00\x04abcd"
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        decode_request(unknown_item[:2] + struct.pack(">I", len(unknown_item) - 6) + unknown_item[6:])
    cut = rq[:2] + struct.pack(">I", 44) + rq[6:50]  # no application context: rejected by the policy
    assert decode_request(cut).application_context == ""
