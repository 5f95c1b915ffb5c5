"""Replies the adapter marshals itself are byte for byte what the library writes.

adapter/managed_objects.py joins GetManagedObjects' body from entries marshalled one object
at a time (and reused while an object is unchanged); adapter/bus.py puts the library's
method-return header in front of such a body. Both are compared here with the library
marshalling the same reply in one go (the library adapter/bus.py picked: dbus-next unless
EXAMPLE_STORAGE_DBUS=dbus-fast).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from example_storage.adapter.bus import Message, Variant, marshal, method_return_bytes
from example_storage.adapter.managed_objects import SIGNATURE, ManagedObjectsBody
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


def _library_body(objects: dict[str, ExportedObject]) -> bytes:
    return marshal(SIGNATURE, [{
        path: {obj.name: obj.property_variants()} for path, obj in objects.items()}])


def test_joined_body_equals_the_librarys():
    tree = SimpleNamespace(objects={})
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
    library = Message.new_method_return(call, signature, values)
    library.serial = 9
    ours = method_return_bytes(call, 9, signature, marshal(signature, values) if signature
                               else b"")
    assert ours == bytes(library._marshall(False))
