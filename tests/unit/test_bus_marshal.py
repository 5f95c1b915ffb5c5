"""Messages the adapter marshals itself are byte for byte what the library writes.

adapter/managed_objects.py joins GetManagedObjects' body from entries marshalled one object
at a time (and reused while an object is unchanged), and the same entry is the body of the
object's InterfacesAdded; adapter/bus.py puts the library's method-return or signal header
in front of such a body. All are compared here with the library marshalling the same
message in one go (the library adapter/bus.py picked: dbus-next unless
EXAMPLE_STORAGE_DBUS=dbus-fast).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from example_storage.adapter import bus
from example_storage.adapter.bus import (
    MarshalledSignal,
    Message,
    Variant,
    marshal,
    method_return_bytes,
)
from example_storage.adapter.managed_objects import SIGNATURE, ManagedObjectsBody, ObjectEntries
from example_storage.adapter.properties import ExportedObject


class Thing(ExportedObject):
    PROPERTIES = (("Name", "s"), ("Size", "t"), ("Flag", "b"), ("Parent", "o"),
                  ("Tags", "as"), ("Parts", "a(sstt)"), ("Byte", "y"))

    def __init__(self, name: str, size: int) -> None:
        super().__init__("org.example.Test.Thing", None)
        self.values = {"Name": name, "Size": size, "Flag": size % 2 == 0, "Parent": "/p",
                       "Tags": ["a"] * (size % 4), "Parts": [["x", "y", size, 1]] * (size % 3),
                       "Byte": size % 256}

    def property_values(self) -> dict[str, object]:
        return dict(self.values)


def _library_marshal(signature: str, values: list) -> bytes:
    """The library's own marshaller (``marshal`` may be adapter/wire.py's)."""
    return bytes(bus._Marshaller(signature, values).marshall())


def _library_body(objects: dict[str, ExportedObject]) -> bytes:
    return _library_marshal(SIGNATURE, [{
        path: {obj.name: obj.property_variants()} for path, obj in objects.items()}])


def test_joined_body_equals_the_librarys():
    tree = SimpleNamespace(objects={}, entries=ObjectEntries())
    body = ManagedObjectsBody(tree)
    assert body() == _library_body(tree.objects)                       # empty
    for i in range(40):          # names of every length mod 8, odd-sized entries
        tree.objects[f"/o/t{'x' * i}"] = Thing("n" * i, i)
    assert body() == _library_body(tree.objects)
    assert body() == _library_body(tree.objects)                       # from the cache
    tree.objects["/o/t"].values["Name"] = "changed, longer than before"
    tree.objects["/o/txx"].values["Tags"] = ["a", "b", "c"]
    del tree.objects["/o/txxxxx"]
    tree.objects["/o/txxx"] = Thing("replaced", 3)                     # a new object, same path
    tree.objects["/o/new"] = Thing("new", 7)
    assert body() == _library_body(tree.objects)
    assert body() == _library_body(tree.objects)


@pytest.mark.parametrize("signature, values", [
    ("", []),
    ("s", ["hello"]),
    ("a{oa{sa{sv}}}", [{}]),
    ("a{oa{sa{sv}}}", [{"/a/b": {"x.y": {"N": Variant("s", "n"), "C": Variant("t", 5)}}}]),
])
@pytest.mark.parametrize("sender", [":1.42", None])
def test_method_return_equals_the_librarys(signature, values, sender):
    call = Message(destination="org.example.Storage", path="/org/example/Storage",
                   interface="org.freedesktop.DBus.ObjectManager", member="GetManagedObjects",
                   serial=77)
    call.sender = sender
    # again with other serials: the second and third are made from the first's header
    for serial, call_serial in ((9, 77), (70000, 1), (2**32 - 1, 2**32 - 2)):
        call.serial = call_serial
        library = Message.new_method_return(call, signature, values)
        library.serial = serial
        ours = method_return_bytes(call, serial, signature,
                                   marshal(signature, values) if signature else b"")
        assert ours == bytes(library._marshall(False))


def _library_signal(path, interface, member, signature, body, serial) -> bytes:
    msg = Message.new_signal(path=path, interface=interface, member=member,
                             signature=signature, body=body)
    msg.serial = serial
    return bytes(msg._marshall(False))


@pytest.mark.parametrize("path", ["/o", "/org/example/Storage", "/a/bcdefgh"])
def test_interfaces_added_from_the_entry_equals_the_librarys(path):
    entries = ObjectEntries()
    signal = MarshalledSignal("/org/example/Storage", "org.freedesktop.DBus.ObjectManager",
                              "InterfacesAdded", "oa{sa{sv}}")
    for i, serial in ((0, 1), (5, 70000), (11, 2**32 - 1)):
        obj = Thing("n" * i, i)
        values = obj.property_values()
        body = entries.interfaces_added_body(path, obj, values)
        assert signal.message(serial, body) == _library_signal(
            "/org/example/Storage", "org.freedesktop.DBus.ObjectManager", "InterfacesAdded",
            "oa{sa{sv}}", [path, {obj.name: obj.property_variants(values)}], serial)
    # and that entry is the one a listing then uses
    tree = SimpleNamespace(objects={path: obj}, entries=entries)
    assert ManagedObjectsBody(tree)() == _library_body(tree.objects)


@pytest.mark.parametrize("signature, values", [
    ("oas", ["/org/example/Storage/pools/p", ["org.example.Storage.Pool"]]),
    ("", []),
    ("s", ["x" * 9]),
])
def test_marshalled_signal_equals_the_librarys(signature, values):
    signal = MarshalledSignal("/p/q", "org.example.I", "Changed", signature)
    assert signal.message(42, marshal(signature, values) if signature else b"") == \
        _library_signal("/p/q", "org.example.I", "Changed", signature, values, 42)


def test_method_returns_to_many_callers_stay_right():
    """The headers kept per caller are bounded (the table starts again when full)."""
    for n in range(1200):
        call = Message(destination="org.example.Storage", path="/o", member="M", serial=n + 1)
        call.sender = f":1.{n}"
        library = Message.new_method_return(call, "u", [n])
        library.serial = 5
        assert method_return_bytes(call, 5, "u", marshal("u", [n])) == \
            bytes(library._marshall(False))
    assert 0 < len(bus._RETURN_HEADERS) <= bus._MAX_RETURN_HEADERS
