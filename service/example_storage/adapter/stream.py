"""The incoming side of a bus connection: the socket's bytes cut into whole messages, and the
Unix fds that came with them handed out in order.

dbus-next reads each message with two ``recvmsg`` calls of its exact lengths (its fixed
header, then the rest), through a new reader object per message with its own table of
bound methods, and one more call that fails with EAGAIN before it waits again. Here one
``recvmsg`` takes whatever the socket holds (up to ``CHUNK`` bytes) and every whole message
in it is cut out; the rest waits for the next read.

Unix fds: the kernel delivers a message's fds with its first byte, and the sender names
how many a message carries in its header (field UNIX_FDS). Received fds wait in a queue;
the reader of a whole message takes as many as its header names (``take_fds``), in the
order the messages came, as libdbus does. The fds are received close-on-exec (none leaks
into a tool the service runs). Library-free: bus.py turns each message's bytes into the
library's Message.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections import deque

CHUNK = 1 << 16
# the most fds one sendmsg can carry (the kernel's SCM_MAX_FD): one recvmsg never returns
# the fds of more than one sendmsg
SCM_MAX_FD = 253
_FDS_SPACE = socket.CMSG_SPACE(SCM_MAX_FD * array.array("i").itemsize)
# the D-Bus specification's limit on a message's length
MAX_MESSAGE_LENGTH = 1 << 27
_LENGTHS = {ord("l"): struct.Struct("<4xIII"), ord("B"): struct.Struct(">4xIII")}


class StreamError(Exception):
    """The bytes are not D-Bus messages, or fds were lost: the connection cannot go on."""


def message_length(head: bytes | bytearray | memoryview) -> int:
    """The length of the whole message whose fixed header (16 bytes) is ``head``, in either
    byte order."""
    layout = _LENGTHS.get(head[0])
    if layout is None:
        raise StreamError(f"not a D-Bus message (byte order mark {head[0]!r})")
    body_len, _serial, fields_len = layout.unpack_from(head, 0)
    header_len = 16 + fields_len
    length = header_len + (-header_len & 7) + body_len
    if length > MAX_MESSAGE_LENGTH:
        raise StreamError(f"a message of {length} bytes (at most {MAX_MESSAGE_LENGTH})")
    return length


class MessageStream:
    """Whole messages from ``sock`` (non-blocking), with fd passing when ``unix_fds``."""

    def __init__(self, sock: socket.socket, unix_fds: bool) -> None:
        self._sock = sock
        self._unix_fds = unix_fds
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def read(self) -> list[bytes]:
        """The messages completed by one read of the socket (none when it had nothing yet);
        EOFError once the peer has closed it."""
        try:
            if self._unix_fds:
                data, ancdata, flags, _ = self._sock.recvmsg(CHUNK, _FDS_SPACE,
                                                             socket.MSG_CMSG_CLOEXEC)
                self._keep_fds(ancdata, flags)
            else:
                data = self._sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        if not data:
            raise EOFError("the bus closed the connection")
        buf = self._buf
        buf += data
        messages: list[bytes] = []
        start, size = 0, len(buf)
        while size - start >= 16:
            end = start + message_length(memoryview(buf)[start:start + 16])
            if end > size:
                break
            messages.append(bytes(buf[start:end]))
            start = end
        if start:
            del buf[:start]
        return messages

    def _keep_fds(self, ancdata: list, flags: int) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise StreamError("Unix fds were lost in a read (control data truncated)")

    def take_fds(self, count: int) -> list[int]:
        """The next ``count`` received fds (fewer if fewer came): those of the message
        being read, whose header names ``count``."""
        fds = self._fds
        return [fds.popleft() for _ in range(min(count, len(fds)))]

    def close(self) -> None:
        """Close the fds no message has taken (the connection is ending)."""
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
