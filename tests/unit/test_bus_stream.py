"""adapter/stream.py (the socket's bytes cut into messages, fds handed out by the count each
message's header names) and dbus-next's reader built on it (bus._IncomingMessages), on real
Unix socket pairs with real fds."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct

import pytest
from dbus_next import Message
from example_storage.adapter import bus, stream

needs_dbus_next = pytest.mark.skipif(bus.LIBRARY != "dbus-next",
                                     reason="bus._IncomingMessages is dbus-next's reader")


def call_bytes(member: str, serial: int, fds: list[int] | None = None) -> bytes:
    """A method call ``member`` whose body is one ``h`` per fd (the message's indices)."""
    fds = fds or []
    msg = Message(destination="org.example.Storage", path="/a", interface="org.x.Y",
                  member=member, signature="h" * len(fds), body=list(range(len(fds))),
                  serial=serial, unix_fds=fds)
    return bytes(msg._marshall(negotiate_unix_fd=True))


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """One sendmsg, as the bus daemon sends a message: the fds go with its first byte."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    assert sock.sendmsg([data], anc) == len(data)


def pipe_reading(text: bytes) -> int:
    """The read end of a pipe holding ``text`` (its write end closed)."""
    r, w = os.pipe()
    os.write(w, text)
    os.close(w)
    return r


def read_text(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with ours, theirs:
        yield ours, theirs


def test_whole_messages_come_out_whole_in_order_however_the_bytes_arrive(pair):
    ours, theirs = pair
    sent = [call_bytes(f"M{i}", i + 1) for i in range(30)]
    data = b"".join(sent)
    for step in (1, 7, 16, 100, len(data)):
        reader = stream.MessageStream(ours, unix_fds=False)
        got = []
        for at in range(0, len(data), step):
            theirs.sendall(data[at:at + step])
            got += reader.read()
        assert got == sent, step
        assert reader.read() == []          # nothing waiting: no message, no error


def test_each_message_takes_the_fds_its_header_names_in_order(pair):
    ours, theirs = pair
    first, second, third = (pipe_reading(t) for t in (b"one", b"two", b"three"))
    send_with_fds(theirs, call_bytes("NoFds", 1), [])
    send_with_fds(theirs, call_bytes("Two", 2, [first, second]), [first, second])
    send_with_fds(theirs, call_bytes("NoFdsEither", 3), [])
    send_with_fds(theirs, call_bytes("One", 4, [third]), [third])
    for fd in (first, second, third):
        os.close(fd)                        # the receiver has its own copies now
    reader = stream.MessageStream(ours, unix_fds=True)
    messages = []
    while len(messages) < 4:
        messages += reader.read()
    assert [m for m in messages] == [call_bytes("NoFds", 1),
                                     call_bytes("Two", 2, [0, 0]),
                                     call_bytes("NoFdsEither", 3),
                                     call_bytes("One", 4, [0])]
    # the caller reads each header's count and takes that many, message by message
    assert reader.take_fds(0) == []
    two = reader.take_fds(2)
    assert reader.take_fds(0) == []
    one = reader.take_fds(1)
    assert [read_text(fd) for fd in two + one] == [b"one", b"two", b"three"]


def test_received_fds_are_close_on_exec_and_untaken_ones_are_closed(pair):
    ours, theirs = pair
    fd = pipe_reading(b"x")
    send_with_fds(theirs, call_bytes("One", 1, [fd]), [fd])
    os.close(fd)
    reader = stream.MessageStream(ours, unix_fds=True)
    assert len(reader.read()) == 1
    (received,) = reader.take_fds(1)
    assert fcntl.fcntl(received, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    os.close(received)
    # one that no message took is closed with the stream
    fd = pipe_reading(b"y")
    send_with_fds(theirs, call_bytes("One", 2, [fd]), [fd])
    os.close(fd)
    assert len(reader.read()) == 1
    before = set(os.listdir("/proc/self/fd"))
    reader.close()
    assert len(before - set(os.listdir("/proc/self/fd"))) == 1


def test_end_of_stream_and_garbage_end_the_connection(pair):
    ours, theirs = pair
    theirs.sendall(b"X" + bytes(15))
    with pytest.raises(stream.StreamError):
        stream.MessageStream(ours, unix_fds=False).read()
    def head(body_len: int, fields_len: int) -> bytes:
        return struct.pack("<BBBBIII", ord("l"), 1, 0, 1, body_len, 1, fields_len)

    assert stream.message_length(head(8, 3)) == 16 + 3 + 5 + 8     # fields padded to 8
    with pytest.raises(stream.StreamError):
        stream.message_length(head(stream.MAX_MESSAGE_LENGTH, 0))
    theirs.close()
    with pytest.raises(EOFError):
        stream.MessageStream(ours, unix_fds=False).read()


def big_endian_call_with_fds(count: int) -> bytes:
    """A big-endian method call Take to "/" with a UNIX_FDS header field, written by hand
    (no body: the fds are named by the header only)."""
    fields = bytearray()

    def field(code: int, sig: str, value: bytes) -> None:
        fields.extend(bytes(-len(fields) % 8))
        fields.extend(bytes([code, 1, ord(sig), 0]) + value)

    field(1, "o", struct.pack(">I", 1) + b"/\0")
    field(3, "s", struct.pack(">I", 4) + b"Take\0")
    field(9, "u", struct.pack(">I", count))
    head = struct.pack(">BBBBIII", ord("B"), 1, 0, 1, 0, 9, len(fields)) + bytes(fields)
    return head + bytes(-len(head) % 8)


@needs_dbus_next
def test_the_bus_gives_each_message_its_own_fds(pair):
    ours, theirs = pair
    a, b = pipe_reading(b"a"), pipe_reading(b"b")
    send_with_fds(theirs, call_bytes("First", 1), [])
    send_with_fds(theirs, big_endian_call_with_fds(1), [a])    # left to the library
    send_with_fds(theirs, call_bytes("Third", 3, [b]), [b])
    os.close(a)
    os.close(b)
    incoming = bus._IncomingMessages(ours, True)
    got = []
    while len(got) < 3:
        got += incoming.messages()
    assert [m.member for m in got] == ["First", "Take", "Third"]
    assert got[0].unix_fds == []
    assert [read_text(fd) for fd in got[1].unix_fds] == [b"a"]
    assert [read_text(fd) for fd in got[2].unix_fds] == [b"b"]
    assert got[2].body == [0]               # the index of its fd, as the library gives it
