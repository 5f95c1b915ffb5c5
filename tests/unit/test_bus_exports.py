"""Our MessageBus keeps dbus-next's export semantics while finding an interface's path
through an index (dbus-next walked every export on each unexport and each signal)."""

import asyncio
import random
import socket

import pytest
from dbus_next.aio import MessageBus as LibraryBus
from dbus_next.errors import InvalidObjectPathError
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


class Other(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.example.Test.Other")


def test_exports_follow_the_librarys_rules_and_errors(make_bus, tmp_path):
    b = make_bus([])

    async def build() -> LibraryBus:
        return LibraryBus(bus_address=f"unix:path={tmp_path / 'sock'}")

    lib = asyncio.run(build())
    try:
        objs = [Thing(), Thing(), Other(), Other()]
        lib_objs = [Thing(), Thing(), Other(), Other()]
        paths = ["/", "/a", "/a/b", "/c_1"]
        rng = random.Random(5)
        for _ in range(400):
            op, i, p = rng.choice(["export", "unexport", "unexport-name", "unexport-all"]), \
                rng.randrange(4), rng.choice(paths)
            outcomes = []
            for bus_, things in ((b, objs), (lib, lib_objs)):
                try:
                    if op == "export":
                        bus_.export(p, things[i])
                    elif op == "unexport":
                        bus_.unexport(p, things[i])
                    elif op == "unexport-name":
                        bus_.unexport(p, things[i].name)
                    else:
                        bus_.unexport(p)
                    outcomes.append(None)
                except ValueError as e:
                    outcomes.append(type(e))
            assert outcomes[0] == outcomes[1], (op, i, p)
            ours = {k: [objs.index(x) for x in v] for k, v in b._path_exports.items()}
            theirs = {k: [lib_objs.index(x) for x in v] for k, v in lib._path_exports.items()}
            assert ours == theirs, (op, i, p)
            assert [b in o._ServiceInterface__buses for o in objs] == \
                [lib in o._ServiceInterface__buses for o in lib_objs]
        for bad in ("", "a", "/a/", "//a", "/a-b", 5):
            with pytest.raises(InvalidObjectPathError):
                b.export(bad, Thing())
            with pytest.raises(InvalidObjectPathError):
                b.unexport(bad, objs[0])
        with pytest.raises(TypeError):
            b.export("/x", object())
    finally:
        lib._sock.close()
