"""Thousands of signals at once do not cost the daemon its bus connection.

Starting (or destroying) a dir pool that holds thousands of files emits one
InterfacesAdded (InterfacesRemoved) per volume in one go. The daemon writes them faster
than the bus daemon reads (it takes 2 KiB per connection per turn), so its socket fills and
``send`` fails with EAGAIN, which both D-Bus libraries treated as a fatal error: the daemon
exited with "lost the bus connection". adapter/bus.py's writer now waits for the socket
instead.

To make the full socket certain rather than likely, the reading client stops the bus
daemon (SIGSTOP, it is this test's own private bus) for a second as soon as the first signal
of the burst reaches it: the daemon has queued the whole burst by then (it exports the
volumes without yielding) and can only get a few hundred KiB into its socket. A second,
raw client subscribed to the same signals does not read its socket at all during the burst;
the bus keeps them for it (well under its 127 MiB per-connection limit), and it still gets
every one afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import struct
import time

import pytest
from dbus_next import Message, MessageType
from dbus_next._private.unmarshaller import Unmarshaller

from tests.bus.helpers import POOL, VOLUME, dir_pool_xml

FILES = 3000
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


def _dbus_fast_installed() -> bool:
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        return False
    return True


LIBRARIES = pytest.mark.parametrize("svc", [
    "dbus-next",
    pytest.param("dbus-fast", marks=pytest.mark.skipif(
        not _dbus_fast_installed(), reason="dbus-fast is not installed (pip install .[fast])")),
], indirect=True)


class SleepingClient:
    """A raw bus connection that subscribes to the daemon's ObjectManager signals and then
    reads nothing until ``drain()``: whatever the bus sends it meanwhile waits in the bus."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(socket_path)
        self.buf = bytearray()
        self.serial = 0
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode()
                          + b"\r\n")
        assert self.sock.recv(4096).startswith(b"OK "), "bus refused AUTH EXTERNAL"
        self.sock.sendall(b"BEGIN\r\n")
        self._bus_call("Hello", "", [])
        self._bus_call("AddMatch", "s", [
            f"type='signal',sender='org.example.Storage',interface='{OBJECT_MANAGER}'"])

    def _bus_call(self, member: str, signature: str, body: list) -> Message:
        self.serial += 1
        msg = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                      interface="org.freedesktop.DBus", member=member, signature=signature,
                      body=body, serial=self.serial)
        self.sock.sendall(msg._marshall())
        while True:
            reply = self._read_message()
            if reply.reply_serial == self.serial:
                assert reply.message_type == MessageType.METHOD_RETURN, reply.body
                return reply

    def _read_message(self) -> Message:
        while True:
            if len(self.buf) >= 16:
                body_len, _serial, fields_len = struct.unpack_from("<III", self.buf, 4)
                total = 16 + fields_len + (-fields_len % 8) + body_len
                if len(self.buf) >= total:
                    data = bytes(self.buf[:total])
                    del self.buf[:total]
                    return Unmarshaller(io.BytesIO(data)).unmarshall()
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("the bus closed the connection")
            self.buf += chunk

    def drain(self, member: str, count: int, timeout: float = 60) -> list[Message]:
        """Read until ``count`` ``member`` signals have come (or ``timeout``); return them."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                msg = self._read_message()
            except TimeoutError:
                break
            if msg.message_type == MessageType.SIGNAL and msg.member == member:
                got.append(msg)
        return got

    def close(self) -> None:
        self.sock.close()


def _make_files(target, count: int) -> set[str]:
    target.mkdir()
    names = {f"v{i:05d}.img" for i in range(count)}
    for name in names:
        with open(target / name, "wb") as f:
            f.truncate(1 << 20)          # sparse: no data written
    return names


@contextlib.contextmanager
def _bus_stalled_at_first(svc, member: str, seconds: float = 1.0):
    """Stop the bus daemon for ``seconds`` when the first ``member`` signal from the
    storage daemon reaches our client."""
    loop = asyncio.get_running_loop()
    stopped: list[bool] = []

    def resume() -> None:
        if stopped and stopped[-1]:
            os.kill(svc.bus.pid, signal.SIGCONT)
            stopped.append(False)

    def handler(msg) -> None:
        if not stopped and msg.message_type == MessageType.SIGNAL and msg.member == member:
            os.kill(svc.bus.pid, signal.SIGSTOP)
            stopped.append(True)
            loop.call_later(seconds, resume)

    svc.client.add_message_handler(handler)
    try:
        yield stopped
    finally:
        svc.client.remove_message_handler(handler)
        resume()


def _names(signals, key) -> set[str]:
    return {key(s) for s in signals}


async def _wait_count(rec, member: str, count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rec.matching(lambda s: s.member == member and "/volumes/" in s.body[0])
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    return rec.matching(lambda s: s.member == member and "/volumes/" in s.body[0])


@LIBRARIES
async def test_start_and_destroy_a_pool_of_3000_volumes(svc):
    names = _make_files(svc.workdir / "burst", FILES)
    rec = await svc.recorder()
    sleeper = SleepingClient(str(svc.bus.socket_path))
    try:
        pool = await svc.manager("DefinePool", "sa{sv}",
                                 dir_pool_xml("burst", svc.workdir / "burst"), {})
        with _bus_stalled_at_first(svc, "InterfacesAdded") as stalled:
            await svc.call(pool, POOL, "Start", "a{sv}", {})
            added = await _wait_count(rec, "InterfacesAdded", FILES)
        assert stalled, "the burst never reached the client"
        assert svc.daemon.running, f"daemon died:\n{svc.daemon.log_tail()}"
        assert _names(added, lambda s: s.body[1][VOLUME]["Name"]) == names
        assert {s.path for s in added} == {"/org/example/Storage"}

        # it still answers, with every volume
        objects = await svc.managed_objects()
        listed = {o[VOLUME]["Name"] for p, o in objects.items() if p.startswith(pool + "/")}
        assert listed == names
        assert (await svc.props(pool, POOL))["State"] == "running"

        # the client that slept through it gets the whole burst from the bus afterwards
        late = sleeper.drain("InterfacesAdded", FILES + 1)
        late_names = {m.body[1][VOLUME]["Name"].value for m in late if VOLUME in m.body[1]}
        assert late_names == names

        # and the other way round: 3,000 InterfacesRemoved at once
        with _bus_stalled_at_first(svc, "InterfacesRemoved") as stalled:
            await svc.call(pool, POOL, "Destroy", "a{sv}", {})
            removed = await _wait_count(rec, "InterfacesRemoved", FILES)
        assert svc.daemon.running, f"daemon died:\n{svc.daemon.log_tail()}"
        assert len({s.body[0] for s in removed}) == FILES
        assert {s.body[0] for s in removed} == {s.body[0] for s in added}
        assert (await svc.props(pool, POOL))["State"] == "inactive"
        assert len(sleeper.drain("InterfacesRemoved", FILES)) == FILES
    finally:
        sleeper.close()
    assert "lost the bus connection" not in svc.daemon.log()
