"""Replies to our methods (adapter/bus.py answers coroutine methods itself, without the
library's handler): the same answers as the library's own handler gives, for values, no
value, several values, D-Bus errors, unexpected exceptions, a result of the wrong shape,
calls that want no reply, and a method that takes an fd (left to the library). Each case
runs through our path and through the library's, on a private bus; with dbus-next here,
with dbus-fast in a process of its own (tests/unit/test_bus_with_dbus_fast.py)."""

import asyncio
import os
import shutil
import subprocess
import threading
import time

import pytest
from dbus_next import Message, MessageFlag, MessageType
from example_storage.adapter import bus as adapter_bus
from example_storage.adapter.bus import DBusError, ServiceInterface, method

from tests.harness.bus import PrivateBus, busconfig_snippet
from tests.harness.client import connect

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the private system bus runs as root"),
]

NAME = "org.example.MethodTest"
IFACE = "org.example.MethodTest"
PATH = "/org/example/MethodTest"
POLICY = busconfig_snippet(
    f'  <policy user="root">\n    <allow own="{NAME}"/>\n'
    f'    <allow send_destination="{NAME}"/>\n  </policy>')


class Sample(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(IFACE)
        self.seen: list[str] = []
        self.gate = asyncio.Event()
        self.at_gate: list[str] = []

    @method()
    async def Quick(self) -> "s":
        self.at_gate.append("Quick")
        await self.gate.wait()
        return "quick"

    @method()
    async def Slow(self) -> "s":
        self.at_gate.append("Slow")
        await self.gate.wait()
        time.sleep(0.5)             # holds the event loop, as a long step does
        return "slow"

    @method()
    async def Open(self):
        self.gate.set()

    @method()
    async def Echo(self, text: "s") -> "s":
        await asyncio.sleep(0)
        return text

    @method()
    async def Two(self, n: "u") -> "su":
        return ["n", n + 1]

    @method()
    async def Nothing(self):
        self.seen.append("Nothing")

    @method()
    async def Refuses(self):
        self.seen.append("Refuses")
        raise DBusError("org.example.MethodTest.Error.No", "not today")

    @method()
    async def Breaks(self):
        raise ValueError("a bug")

    @method()
    async def WrongShape(self) -> "su":
        return "not a list"

    @method()
    async def Size(self, fd: "h") -> "t":
        return os.fstat(fd).st_size


@pytest.fixture(params=["ours", "library"])
async def service(request, monkeypatch):
    if request.param == "library":      # every method answered by the library's handler
        monkeypatch.setattr(adapter_bus, "_reply_of", lambda method: None)
    private = PrivateBus({"method-test.conf": POLICY}).start()
    server = client = None
    try:
        server = await adapter_bus.MessageBus(bus_address=private.address,
                                              negotiate_unix_fd=True).connect()
        sample = Sample()
        sample.bus_address = private.address
        server.export(PATH, sample)
        await server.request_name(NAME)
        client = await connect(private.address)
        yield client, sample, request.param
    finally:
        for connection in (client, server):
            if connection is not None:
                connection.disconnect()
        private.stop()


async def ask(client, member: str, signature: str = "", body=(), fds=(), flags=MessageFlag.NONE):
    call = client.call(Message(destination=NAME, path=PATH, interface=IFACE, member=member,
                               signature=signature, body=list(body), unix_fds=list(fds),
                               flags=flags))
    return await asyncio.wait_for(call, 10)     # a call never answered fails here


async def test_values_and_no_value(service, monkeypatch):
    client, _, path = service
    ran: list[str] = []
    real = adapter_bus.MessageBus._run_method

    def noting(self, interface, method, reply, msg):
        ran.append(msg.member)
        return real(self, interface, method, reply, msg)

    monkeypatch.setattr(adapter_bus.MessageBus, "_run_method", noting)
    reply = await ask(client, "Echo", "s", ["é ok"])
    assert (reply.message_type, reply.signature, reply.body) == (
        MessageType.METHOD_RETURN, "s", ["é ok"])
    reply = await ask(client, "Two", "u", [41])
    assert (reply.signature, reply.body) == ("su", ["n", 42])
    reply = await ask(client, "Nothing")
    assert (reply.message_type, reply.signature, reply.body) == (
        MessageType.METHOD_RETURN, "", [])
    # answered by our path, or by the library's
    assert ran == (["Echo", "Two", "Nothing"] if path == "ours" else [])


async def test_errors(service):
    client, _, path = service
    reply = await ask(client, "Refuses")
    assert (reply.message_type, reply.error_name, reply.body) == (
        MessageType.ERROR, "org.example.MethodTest.Error.No", ["not today"])
    # an exception other than a DBusError: ours answer a plain Failed; dbus-fast's own
    # handler its ServiceError with the exception's text (dbus-next's goes through our
    # _ReplyContext as well)
    library_own = path == "library" and adapter_bus.LIBRARY == "dbus-fast"
    for member, why in (("Breaks", "ValueError"), ("WrongShape", "")):
        reply = await ask(client, member)
        assert reply.message_type == MessageType.ERROR, member
        if library_own:
            assert reply.error_name == "com.dubstepdish.dbus.next.ServiceError", member
        else:
            assert reply.error_name == "org.example.Storage.Error.Failed", member
            assert reply.body[0].startswith("internal error: " + why), reply.body
        assert "Traceback" not in reply.body[0]


async def test_calls_that_want_no_reply_get_none(service):
    client, sample, _ = service
    answers = []

    def handler(msg):
        if msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            answers.append(msg.reply_serial)

    client.add_message_handler(handler)
    for member in ("Nothing", "Refuses"):
        await client.send(Message(destination=NAME, path=PATH, interface=IFACE,
                                  member=member, flags=MessageFlag.NO_REPLY_EXPECTED))
    # a later call is answered after both ran: the bus keeps the order
    reply = await ask(client, "Echo", "s", ["after"])
    assert reply.body == ["after"]
    assert sample.seen == ["Nothing", "Refuses"]
    assert answers == [reply.reply_serial]


async def test_a_method_taking_an_fd(service, tmp_path):
    client, _, _ = service
    data = tmp_path / "data"
    data.write_bytes(b"x" * 12345)
    fd = os.open(data, os.O_RDONLY)
    try:
        reply = await ask(client, "Size", "h", [0], fds=[fd])
    finally:
        os.close(fd)
    assert (reply.message_type, reply.body) == (MessageType.METHOD_RETURN, [12345])


async def test_a_reply_goes_out_as_its_method_ends(service):
    """Quick and Slow wake in one step (the gate opens); Quick ends first, then Slow holds
    the event loop for 0.5 s. Quick's caller (busctl, in a thread: this process's loop is
    the one held) must have its answer without waiting for the rest of the step."""
    client, sample, path = service
    if path == "library":
        pytest.skip("the library's handlers send after the step")
    if shutil.which("busctl") is None:
        pytest.skip("needs busctl")
    bus_address = sample.bus_address
    arrived: dict[str, float] = {}

    def call(member: str) -> None:
        out = subprocess.run(["busctl", f"--address={bus_address}", "call", NAME, PATH,
                              IFACE, member], capture_output=True, text=True, timeout=30)
        arrived[member] = time.monotonic()
        assert out.stdout.strip() == f's "{member.lower()}"', out.stdout + out.stderr

    threads = []
    for member in ("Quick", "Slow"):        # Quick waits at the gate first: it wakes first
        threads.append(threading.Thread(target=call, args=(member,)))
        threads[-1].start()
        for _ in range(300):
            if member in sample.at_gate:
                break
            await asyncio.sleep(0.05)
    assert sample.at_gate == ["Quick", "Slow"]
    await ask(client, "Open")
    for t in threads:
        await asyncio.to_thread(t.join, 30)
    assert arrived["Slow"] - arrived["Quick"] > 0.3, arrived
