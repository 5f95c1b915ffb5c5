"""adapter/bus.py reads a ServiceInterface class's members once, not once per object.

Both libraries walk ``inspect.getmembers(type(self))`` in ServiceInterface.__init__; the
adapter gives the library's service module an ``inspect`` that remembers that answer per
class. Objects made afterwards must still have every method, property and signal.
(No ``from __future__ import annotations`` here: the library reads the D-Bus signatures
from the annotations.)
"""

import pytest
from example_storage.adapter import bus as busmod
from example_storage.adapter.bus import method, signal
from example_storage.adapter.properties import ExportedObject, with_properties


@with_properties
class Gadget(ExportedObject):
    PROPERTIES = (("Name", "s"), ("Size", "t"))

    def __init__(self, name: str) -> None:
        super().__init__("org.example.Test.Gadget", None)
        self.gadget_name = name

    def property_values(self) -> dict:
        return {"Name": self.gadget_name, "Size": 7}

    @method()
    def Poke(self, how: "s") -> "s":  # noqa: F821 - D-Bus signature
        return how

    @signal()
    def Poked(self) -> "s":  # noqa: F821 - D-Bus signature
        return "poked"


class _CountingInspect:
    def __init__(self, real) -> None:
        self.real = real
        self.asked: list = []

    def getmembers(self, obj, predicate=None):
        self.asked.append(obj)
        return self.real.getmembers(obj, predicate)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def counting(monkeypatch):
    cache = busmod._service_module.inspect
    assert isinstance(cache, busmod._MembersByClass), "the library's inspect is not replaced"
    counter = _CountingInspect(cache._real)
    monkeypatch.setattr(cache, "_real", counter)
    monkeypatch.setattr(cache, "_members", {})
    monkeypatch.setattr(busmod, "_INTERFACE_MEMBERS", {})
    return counter


def test_members_are_read_once_per_class(counting):
    gadgets = [Gadget(f"g{i}") for i in range(5)]
    assert counting.asked.count(Gadget) == 1
    for g in gadgets:
        intro = g.introspect()
        assert [m.name for m in intro.methods] == ["Poke"]
        assert [s.name for s in intro.signals] == ["Poked"]
        assert sorted(p.name for p in intro.properties) == ["Name", "Size"]


def test_other_calls_reach_the_real_inspect(counting):
    # with a predicate the call is passed through each time, not remembered
    busmod._service_module.inspect.getmembers(Gadget, callable)
    busmod._service_module.inspect.getmembers(Gadget, callable)
    assert counting.asked.count(Gadget) == 2
    assert busmod._service_module.inspect.signature is counting.real.signature


@pytest.mark.skipif(busmod.LIBRARY != "dbus-next", reason="dbus-next's __init__ only")
def test_later_objects_get_the_first_ones_members_in_lists_of_their_own(counting):
    first, second = Gadget("a"), Gadget("b")
    assert counting.asked.count(Gadget) == 1
    si = busmod.ServiceInterface
    for getter in (si._get_methods, si._get_properties, si._get_signals):
        assert getter(second) == getter(first) and getter(second) is not getter(first)
    assert [m.name for m in si._get_methods(second)] == ["Poke"]
    assert si._get_buses(second) == set() and si._get_buses(second) is not si._get_buses(first)
    assert second.name == "org.example.Test.Gadget"
