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

    if LIBRARY == "dbus-next":
        def _send_reply(self, msg):
            return _ErrorReply(super()._send_reply(msg))


class _ErrorReply:
    """dbus-next 0.2.3's reply context sends the error reply of a failed async method
    but does not tell Python it handled the exception (its ``__exit__`` drops the
    result), so asyncio logs a traceback for every error a caller receives. This
    wrapper returns it; dbus-fast's own context already does."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __enter__(self):
        return self

    def __call__(self, reply) -> None:
        self._inner(reply)

    def __exit__(self, exc_type, exc_value, tb) -> bool:
        return bool(self._inner._exit(exc_type, exc_value, tb))

    def send_error(self, exc) -> None:
        self._inner.send_error(exc)
