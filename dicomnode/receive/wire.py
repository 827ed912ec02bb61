"""Bytes from an accepted socket, under deadlines: the PDU framing of the DICOM Upper Layer (PS3.8 9.3).

:class:`Wire` reads through one reusable buffer: small exact reads for PDU and PDV headers, and views of
the buffer for the bulk of a P-DATA value, which the caller writes straight to disk. Every read has a
deadline (the ARTIM timer before the association, the idle timeout between PDUs, and a rate-based bound
while a PDU arrives: at any moment after ``grace`` seconds, the PDU's bytes so far must have come at
``min_rate`` bytes/s, whatever length the PDU announces), so a silent or trickling peer is cut off and
never holds a thread past it. The PDUs themselves are decoded and encoded by ``pynetdicom.pdu``.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator

from dicomnode.errors import ReceiveError

PDU_HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
BUFFER_SIZE = 256 * 1024


class PeerGone(ReceiveError):
    """The peer closed the connection (or it broke)."""


class WireTimeout(ReceiveError):
    """A deadline passed: ``kind`` is ``idle`` (nothing arrived) or ``slow`` (a PDU arrived too slowly)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Wire:
    """Reads and writes one connection; ``deadline`` values are ``time.monotonic()`` instants."""

    def __init__(self, sock: socket.socket, *, min_rate: float, grace: float) -> None:
        self.sock = sock
        self.min_rate = min_rate
        self.grace = grace
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._received = 0  # bytes received from the socket, in all
        self._pdu_began = 0.0  # when the current PDU's first byte was there
        self._pdu_mark = 0  # _received before the current PDU
        self.deadline_kind = "idle"
        # a plain socket is non-blocking: a read is one recv() when bytes are there, and poll() only when
        # none are (with a timeout, CPython polls before every recv and sets the timeout with an ioctl);
        # TLS keeps socket timeouts (a TLS record may need more bytes than poll() shows)
        self._poll: select.poll | None = None
        self._events = select.POLLIN
        if not isinstance(sock, ssl.SSLSocket):
            sock.setblocking(False)
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)

    def _wait(self, events: int, remaining: float) -> bool:
        """Wait up to ``remaining`` seconds for ``events`` on the (non-blocking) socket; False on timeout."""
        assert self._poll is not None
        if events != self._events:
            self._poll.modify(self.sock, events)
            self._events = events
        return bool(self._poll.poll(max(1, math.ceil(remaining * 1000))))

    def _fill(self, deadline: float) -> None:
        """Receive at least one more byte into the buffer (compacting it first when needed)."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            size = self._end - self._start
            self._buf[:size] = self._buf[self._start : self._end]
            self._start, self._end = 0, size
        if self.deadline_kind == "slow":  # the PDU so far must have come at min_rate (after the grace)
            progress = self._received - self._pdu_mark + 1
            deadline = min(deadline, self._pdu_began + self.grace + progress / self.min_rate)
        if self._poll is not None:
            count = self._receive(deadline)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WireTimeout("The peer sent nothing before the deadline.", self.deadline_kind)
            self.sock.settimeout(remaining)
            try:
                count = self.sock.recv_into(self._view[self._end :])
            except TimeoutError as exc:
                message = f"The peer sent nothing for {remaining:.1f} s."
                raise WireTimeout(message, self.deadline_kind) from exc
            except OSError as exc:
                raise PeerGone(f"The connection broke: {exc}.") from exc
        if count == 0:
            raise PeerGone("The peer closed the connection.")
        self._end += count
        self._received += count

    def _receive(self, deadline: float) -> int:
        """recv_into the buffer's free end, waiting in poll() until ``deadline`` only while nothing is
        there."""
        view = self._view[self._end :]
        while True:
            try:
                return self.sock.recv_into(view)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise PeerGone(f"The connection broke: {exc}.") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WireTimeout("The peer sent nothing before the deadline.", self.deadline_kind)
            try:
                ready = self._wait(select.POLLIN, remaining)
            except OSError as exc:
                raise PeerGone(f"The connection broke: {exc}.") from exc
            if not ready and deadline <= time.monotonic():
                raise WireTimeout(f"The peer sent nothing for {remaining:.1f} s.", self.deadline_kind)

    def read_exact(self, count: int, deadline: float) -> bytes:
        while self._end - self._start < count:
            if count > len(self._buf):
                return self._read_large(count, deadline)
            self._fill(deadline)
        data = bytes(self._view[self._start : self._start + count])
        self._start += count
        return data

    def _read_large(self, count: int, deadline: float) -> bytes:
        parts = bytearray()
        for chunk in self.read_chunks(count, deadline):
            parts += chunk
        return bytes(parts)

    def read_chunks(self, count: int, deadline: float) -> Iterator[memoryview]:
        """Yield ``count`` bytes as views of the buffer (each valid until the next read)."""
        while count:
            if self._start == self._end:
                self._fill(deadline)
            take = min(count, self._end - self._start)
            view = self._view[self._start : self._start + take]
            self._start += take
            count -= take
            yield view

    def pdu_deadline(self, length: int) -> float:
        """When a PDU of ``length`` bytes must have arrived completely."""
        return time.monotonic() + self.grace + length / self.min_rate

    def read_pdu_header(self, idle_deadline: float) -> tuple[int, int, float]:
        """Wait for the next PDU: (type, length, deadline); the first byte may wait until idle_deadline."""
        self.deadline_kind = "idle"
        if self._start == self._end:
            self._fill(idle_deadline)
        self._pdu_began = time.monotonic()
        self._pdu_mark = self._received - (self._end - self._start)
        self.deadline_kind = "slow"
        pdu_type, length = PDU_HEADER.unpack(self.read_exact(6, time.monotonic() + self.grace))
        return pdu_type, length, self.pdu_deadline(length)

    def send(self, data: bytes) -> None:
        if self._poll is None:
            self.sock.settimeout(self.grace)
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise PeerGone(f"Cannot send to the peer: {exc}.") from exc
            return
        view = memoryview(data)
        deadline = time.monotonic() + self.grace
        try:
            while view:
                try:
                    view = view[self.sock.send(view) :]
                    continue
                except BlockingIOError:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._wait(select.POLLOUT, remaining):
                    raise PeerGone(f"Cannot send to the peer: nothing was taken for {self.grace:.1f} s.")
        except OSError as exc:
            raise PeerGone(f"Cannot send to the peer: {exc}.") from exc
