"""The body of GetManagedObjects' reply on the manager's path, marshalled object by object.

The answer is ``a{oa{sa{sv}}}``: every object exported below /org/example/Storage with its
interface and all its properties, as the library would give it. Marshalling 10,000 volumes ×
10 Variants is itself slow in the libraries (~0.9 s in dbus-next's pure-Python marshaller,
~0.2 s in dbus-fast, building the Variants included), so each object's dict entry is
marshalled once (from the plain values, without Variants: bus.object_entry) and its bytes
are reused for as long as the object and its property values stay the same; a listing then
costs one ``property_values()`` per object and a join.

Why pieces can be joined: a dict entry is 8-aligned in the D-Bus wire format, and every
alignment inside it is at most 8, so an entry marshalled at an 8-aligned offset has the same
bytes at any other 8-aligned offset. An array of dict entries is its byte length (uint32),
padding to 8, then the entries, each padded to 8 from the one before; the length counts the
entries and the padding between them, not padding after the last one. (The body starts
8-aligned in the message: the header is padded to 8.)

The same entry, without its padding, is the body of the InterfacesAdded that announces the
object (``oa{sa{sv}}`` at offset 0 of a body): ObjectTree marshals it once when it exports an
object, for the signal and for the listings that follow.

Memory: the cache holds each exported object's entry (~450 bytes for a volume) and the values
dict it was made from (~0.5 KB more): ~10 MB at 10,000 volumes; ObjectTree drops an object's
entry when it unexports it.
"""

import struct
from typing import TYPE_CHECKING

from .bus import object_entry
from .properties import ExportedObject

if TYPE_CHECKING:
    from .objects import ObjectTree

SIGNATURE = "a{oa{sa{sv}}}"
_ARRAY_START = 8        # uint32 length + padding to the 8-aligned first entry


class ObjectEntries:
    """Each object's dict entry of the answer, by path, marshalled, kept while the object
    and its property values stay the same."""

    def __init__(self) -> None:
        # path -> (object, the property values its entry was made from, the entry padded
        # to a multiple of 8 bytes, that padding)
        self._entries: dict[str, tuple[ExportedObject, dict, bytes, int]] = {}

    def entry(self, path: str, obj: ExportedObject, values: dict | None = None
              ) -> tuple[bytes, int]:
        """(the entry padded to a multiple of 8 bytes, that padding) of ``obj`` at ``path``
        with ``values`` (read from it when not given)."""
        if values is None:
            values = obj.property_values()
        cached = self._entries.get(path)
        if cached is None or cached[0] is not obj or cached[1] != values:
            body = object_entry(path, obj.name, obj.PROPERTIES, values)
            padding = -len(body) % 8
            cached = self._entries[path] = (obj, values, body + bytes(padding), padding)
        return cached[2], cached[3]

    def interfaces_added_body(self, path: str, obj: ExportedObject, values: dict) -> bytes:
        """The marshalled body ``oa{sa{sv}}`` of the InterfacesAdded announcing ``obj``."""
        padded, padding = self.entry(path, obj, values)
        return padded[:len(padded) - padding]

    def forget(self, path: str) -> None:
        self._entries.pop(path, None)


class ManagedObjectsBody:
    """Call it for the marshalled body of the current answer."""

    def __init__(self, tree: "ObjectTree") -> None:
        self.tree = tree

    def __call__(self) -> bytes:
        entry = self.tree.entries.entry
        pieces = []
        last_padding = 0
        for path, obj in self.tree.objects.items():
            padded, last_padding = entry(path, obj)
            pieces.append(padded)
        joined = b"".join(pieces)
        length = len(joined) - last_padding     # the array ends where its last entry does
        return struct.pack("<I", length) + bytes(_ARRAY_START - 4) + joined[:length]
