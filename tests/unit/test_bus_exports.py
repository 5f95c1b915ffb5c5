"""Our MessageBus keeps dbus-next's export semantics while finding an interface's path
through an index (dbus-next walked every export on each unexport and each signal)."""

import asyncio
import socket

import pytest
from example_storage.adapter import bus as busmod
from example_storage.adapter.bus import MessageBus, ServiceInterface, signal

pytestmark = pytest.mark.skipif(busmod.LIBRARY != "dbus-next",
                                reason="the index replaces dbus-next internals only")


class Thing(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.example.Test.Thing")

    @signal()
    def Poked(self) -> "s":  # noqa: F821 - D-Bus signature
        return "poke"


@pytest.fixture
def make_bus(tmp_path):
    """A MessageBus whose socket reaches a listener nobody answers (never used: what it
    would send is recorded instead)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "sock"))
    listener.listen()
    made = []

    def make(sent: list) -> MessageBus:
        async def build() -> MessageBus:
            return MessageBus(bus_address=f"unix:path={tmp_path / 'sock'}")
        b = asyncio.run(build())
        b.send = sent.append
        made.append(b)
        return b

    yield make
    for b in made:
        b._sock.close()
    listener.close()


def test_signals_come_from_the_path_an_object_is_exported_at(make_bus):
    sent: list = []
    b = make_bus(sent)
    things = [Thing() for _ in range(50)]
    for n, t in enumerate(things):
        b.export(f"/t/{n}", t)
    things[7].Poked()
    things[42].Poked()
    assert [(m.path, m.member, m.body) for m in sent] == [
        ("/t/7", "Poked", ["poke"]), ("/t/42", "Poked", ["poke"])]


def test_unexport_detaches_the_interface_only_when_no_path_holds_it(make_bus):
    sent: list = []
    b = make_bus(sent)
    shared, alone = Thing(), Thing()
    b.export("/a", shared)
    b.export("/b", shared)
    b.export("/c", alone)
    b.unexport("/a")
    assert b._has_interface(shared) and b in shared._ServiceInterface__buses
    shared.Poked()
    assert sent[-1].path == "/b"
    b.unexport("/b", shared)
    assert not b._has_interface(shared) and b not in shared._ServiceInterface__buses
    b.unexport("/c", "org.example.Test.Thing")
    assert not b._has_interface(alone) and b._path_exports == {}
    with pytest.raises(ValueError):
        b._interface_signal_notify(alone, "org.example.Test.Thing", "Poked", "s", ["x"])
