"""adapter/bus.py's message writer when the peer stops reading.

The daemon's MessageBus (the real class, over a real Unix socket) talks to a minimal bus
peer in a thread: the peer answers the authentication and Hello, then reads nothing while
the daemon side queues ~2.5 MB of messages (so the socket is certainly full and ``send``
fails with EAGAIN), every other one (or every seventh) carrying a Unix fd. The connection must
survive, and once the peer reads again every message must arrive, in order, each fd with its
message. (With every other message carrying an fd, each goes alone and EAGAIN comes at the
start of one, so the writer's fd handling on EAGAIN is exercised many times; with runs of six
messages without fds, the writer joins them into one send, which the full socket then takes
in part.)

Each library runs in its own process (adapter/bus.py picks it from EXAMPLE_STORAGE_DBUS at
import): ``python -m tests.unit.test_bus_writer DIR`` is the scenario.
"""

from __future__ import annotations

import array
import asyncio
import io
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COUNT = 2500               # messages; each ~1 KiB, the odd ones with an fd


@pytest.mark.parametrize("fd_every", [2, 7])
@pytest.mark.parametrize("library", ["dbus-next", "dbus-fast"])
def test_a_full_socket_is_waited_for_not_fatal(library, fd_every, tmp_path):
    if library == "dbus-fast":
        pytest.importorskip("dbus_fast")
    res = subprocess.run(
        [sys.executable, "-m", "tests.unit.test_bus_writer", str(tmp_path), str(fd_every)],
        env={**os.environ, "EXAMPLE_STORAGE_DBUS": library}, cwd=REPO,
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"ok with {library}" in res.stdout


# -- the scenario (runs in the child process) -----------------------------------------


class StallingPeer(threading.Thread):
    """Accepts one connection, authenticates it (EXTERNAL, Unix fds agreed), answers Hello,
    then reads nothing until ``resume`` is set; then reads ``count`` messages."""

    def __init__(self, path: Path, count: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.count = count
        self.resume = threading.Event()
        self.done = threading.Event()
        self.messages: list = []
        self.fds: list[tuple[int, int]] = []     # (st_dev, st_ino) of each fd received
        self.error: BaseException | None = None
        self.conn: socket.socket | None = None     # kept open until close()
        self._buf = bytearray()

    def run(self) -> None:
        try:
            self.conn = conn = self.listener.accept()[0]
            conn.settimeout(30)
            self._authenticate(conn)
            hello = self._next_message(conn)
            self._reply_hello(conn, hello)
            self.resume.wait(60)
            while len(self.messages) < self.count:
                self.messages.append(self._next_message(conn))
        except BaseException as e:  # reported by the scenario
            self.error = e
        finally:
            self.done.set()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()

    def _authenticate(self, conn: socket.socket) -> None:
        assert conn.recv(1) == b"\0"
        while True:
            while b"\r\n" not in self._buf:
                self._buf += conn.recv(4096)
            line, _, rest = bytes(self._buf).partition(b"\r\n")
            self._buf = bytearray(rest)
            if line.startswith(b"AUTH EXTERNAL"):
                conn.sendall(b"OK " + b"0" * 32 + b"\r\n")
            elif line == b"NEGOTIATE_UNIX_FD":
                conn.sendall(b"AGREE_UNIX_FD\r\n")
            elif line == b"BEGIN":
                return
            else:
                raise AssertionError(f"unexpected auth line {line!r}")

    def _reply_hello(self, conn: socket.socket, hello) -> None:
        from dbus_next import Message, MessageType

        assert hello.member == "Hello"
        reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=hello.serial,
                        destination=":1.1", signature="s", body=[":1.1"], serial=1)
        conn.sendall(reply._marshall())

    def _next_message(self, conn: socket.socket):
        from dbus_next._private.unmarshaller import Unmarshaller

        while True:
            if len(self._buf) >= 16:
                body_len, _serial, fields_len = struct.unpack_from("<III", self._buf, 4)
                total = 16 + fields_len + (-fields_len % 8) + body_len
                if len(self._buf) >= total:
                    data = bytes(self._buf[:total])
                    del self._buf[:total]
                    return Unmarshaller(io.BytesIO(data)).unmarshall()
            data, ancdata, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
            if not data:
                raise EOFError("the client closed the connection")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        st = os.fstat(fd)
                        self.fds.append((st.st_dev, st.st_ino))
                        os.close(fd)
            self._buf += data


async def scenario(tmp: Path, fd_every: int) -> str:
    from example_storage.adapter.bus import LIBRARY, Message, MessageBus

    sock_path = tmp / "peer.sock"
    peer = StallingPeer(sock_path, COUNT)
    peer.start()
    bus = MessageBus(bus_address=f"unix:path={sock_path}", negotiate_unix_fd=True)
    await asyncio.wait_for(bus.connect(), 10)
    marker = tmp / "marker"
    marker.write_text("the fd's file")
    fd = os.open(marker, os.O_RDONLY)
    padding = "x" * 1000
    with_fd = [i % fd_every == 1 for i in range(COUNT)]
    for i in range(COUNT):
        if with_fd[i]:
            bus.send(Message(destination=":1.1", path="/t", interface="t.T", member="Fd",
                             signature="hu", body=[0, i], unix_fds=[fd]))
        else:
            bus.send(Message.new_signal("/t", "t.T", "S", "us", [i, padding]))
    await asyncio.sleep(0.5)            # nothing is read: the socket is full
    assert bus.connected, "the connection was dropped while the peer did not read"
    peer.resume.set()
    await asyncio.get_running_loop().run_in_executor(None, peer.done.wait, 60)
    if peer.error is not None:
        raise peer.error
    assert bus.connected
    assert [m.body[1] if m.member == "Fd" else m.body[0] for m in peer.messages] == list(
        range(COUNT))
    assert [m.member for m in peer.messages] == ["Fd" if w else "S" for w in with_fd]
    mine = os.fstat(fd)
    assert peer.fds == [(mine.st_dev, mine.st_ino)] * sum(with_fd)
    os.close(fd)
    bus.disconnect()
    peer.close()
    return f"ok with {LIBRARY}: {COUNT} messages, {len(peer.fds)} fds"


if __name__ == "__main__":
    print(asyncio.run(scenario(Path(sys.argv[1]), int(sys.argv[2]))))
