"""Our MessageBus.export checks its arguments by its own path check (adapter/wire.py)
instead of the library's (with either library: dbus-next here, dbus-fast in the process of
tests/unit/test_bus_with_dbus_fast.py): it must accept and refuse exactly what the
library's own export does, with the same exceptions."""

import asyncio
import importlib
import random
import socket

import pytest
from example_storage.adapter import bus as busmod
from example_storage.adapter.bus import MessageBus, ServiceInterface, method

_library_aio = importlib.import_module(busmod.LIBRARY.replace("-", "_") + ".aio")


class LibraryBus(_library_aio.MessageBus):
    """The library's bus, not connected: no InterfacesAdded of its own (as ours)."""

    def _emit_interface_added(self, path, interface):
        return None


class Thing(ServiceInterface):
    def __init__(self, name: str = "org.example.Test.Thing") -> None:
        super().__init__(name)

    @method()
    async def Poke(self, how: "s") -> "s":  # noqa: F821 - D-Bus signature
        return how


def _paths(rng: random.Random) -> list:
    fixed = ["/", "/a", "/a/b_1", "/A/9/z", "", "a", "//", "/a/", "/a//b", "/a-b", "/a.b",
             "/é", "/a b", "/a\x00", "/" + "x" * 300, None, 5, b"/a"]
    alphabet = "ab_/9.-"
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
                    for _ in range(300)]


def _outcome(bus, path, interface) -> str:
    try:
        bus.export(path, interface)
    except Exception as exc:  # noqa: BLE001 - the exception's type is what is compared
        return type(exc).__name__
    return "exported"


@pytest.fixture
def buses(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "sock"))
    listener.listen()
    loop = asyncio.new_event_loop()

    async def build():
        address = f"unix:path={tmp_path / 'sock'}"
        return MessageBus(bus_address=address), LibraryBus(bus_address=address)

    try:
        yield loop.run_until_complete(build())
    finally:
        loop.close()
        listener.close()


def test_export_accepts_and_refuses_what_the_library_does(buses):
    ours, library = buses
    rng = random.Random(7)
    seen = set()
    for path in _paths(rng):
        expected = _outcome(library, path, Thing())
        assert _outcome(ours, path, Thing()) == expected, repr(path)
        seen.add(expected)
        if expected == "exported":     # a second object with the same interface name
            again = _outcome(library, path, Thing())
            assert _outcome(ours, path, Thing()) == again == "ValueError", repr(path)
            # another interface at the same path is fine
            assert _outcome(ours, path, Thing("org.example.Test.Other")) == "exported"
    assert {"exported", "InvalidObjectPathError"} <= seen
    assert _outcome(ours, "/not/an/interface", object()) == _outcome(
        library, "/not/an/interface", object()) == "TypeError"
