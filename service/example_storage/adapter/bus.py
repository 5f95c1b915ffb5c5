"""The only module that imports the D-Bus library.

dbus-next is the dependency (pinned); dbus-fast, its maintained fork with the same
API, is used instead when ``EXAMPLE_STORAGE_DBUS=dbus-fast`` is set and installed.
Everything else in the adapter imports D-Bus names from here.
"""

import os

if os.environ.get("EXAMPLE_STORAGE_DBUS") == "dbus-fast":  # pragma: no cover - optional
    from dbus_fast import BusType, Message, MessageType, NameFlag, RequestNameReply, Variant
    from dbus_fast.aio import MessageBus as _MessageBus
    from dbus_fast.errors import DBusError
    from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

    LIBRARY = "dbus-fast"
else:
    from dbus_next import BusType, Message, MessageType, NameFlag, RequestNameReply, Variant
    from dbus_next.aio import MessageBus as _MessageBus
    from dbus_next.errors import DBusError
    from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

    LIBRARY = "dbus-next"

__all__ = [
    "LIBRARY", "BusType", "DBusError", "Message", "MessageBus", "MessageType", "NameFlag",
    "RequestNameReply",
    "PropertyAccess", "ServiceInterface", "Variant", "dbus_property", "method", "signal",
]


class MessageBus(_MessageBus):
    """A bus connection that leaves ObjectManager signals to us.

    The library emits InterfacesAdded/InterfacesRemoved from each object's own path
    when it is exported; DESIGN.md wants them from the manager's path, which
    ``ObjectTree`` does itself.
    """

    def _emit_interface_added(self, path, interface):  # noqa: D401 - library hook
        return None

    def _emit_interface_removed(self, path, removed_interfaces):
        return None
