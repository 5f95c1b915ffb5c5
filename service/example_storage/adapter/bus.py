"""The only module that imports the D-Bus library.

dbus-next is the dependency (pinned); dbus-fast, its maintained fork with the same
API, is used instead when ``EXAMPLE_STORAGE_DBUS=dbus-fast`` is set and installed.
Everything else in the adapter imports D-Bus names from here.
"""

import array
import asyncio
import functools
import inspect
import io
import logging
import os
import socket
import struct
from collections import deque
from copy import copy

from ..errors import Failed
from . import stream, wire

_log = logging.getLogger(__name__)

if os.environ.get("EXAMPLE_STORAGE_DBUS") == "dbus-fast":  # pragma: no cover - optional
    from dbus_fast import (
        BusType,
        Message,
        MessageFlag,
        MessageType,
        NameFlag,
        RequestNameReply,
        Variant,
    )
    from dbus_fast import introspection as _introspection
    from dbus_fast import service as _service_module
    from dbus_fast._private.marshaller import Marshaller as _Marshaller
    from dbus_fast.aio import MessageBus as _MessageBus
    from dbus_fast.aio.message_bus import _MessageWriter
    from dbus_fast.errors import DBusError, InvalidObjectPathError
    from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

    LIBRARY = "dbus-fast"
else:
    from dbus_next import (
        BusType,
        Message,
        MessageFlag,
        MessageType,
        NameFlag,
        RequestNameReply,
        Variant,
    )
    from dbus_next import introspection as _introspection
    from dbus_next import service as _service_module
    from dbus_next._private.marshaller import Marshaller as _Marshaller
    from dbus_next._private.unmarshaller import Unmarshaller as _Unmarshaller
    from dbus_next.aio import MessageBus as _MessageBus
    from dbus_next.aio.message_bus import _MessageWriter
    from dbus_next.errors import DBusError, InvalidObjectPathError
    from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

    LIBRARY = "dbus-next"

__all__ = [
    "LIBRARY", "BusType", "DBusError", "Message", "MessageBus", "MessageFlag", "MessageType",
    "NameFlag",
    "RequestNameReply",
    "PropertyAccess", "ServiceInterface", "Variant", "dbus_property", "method", "signal",
    "leaf_introspection", "marshal", "method_return_bytes", "MarshalledSignal",
    "init_interface", "object_entry",
]


class _MembersByClass:
    """The library's ``inspect`` module as its service module sees it, with
    ``getmembers(cls)`` remembered per class.

    Both libraries build each ServiceInterface by walking ``inspect.getmembers(type(self))``
    for its methods, properties and signals: ~30 µs per object, the largest part of
    exporting a volume. The answer depends only on the class, and our interface classes
    are complete once defined (``with_properties`` runs at class creation), so it is read
    once per class. Everything else is the real ``inspect``."""

    def __init__(self, real) -> None:
        self._real = real
        self._members: dict[type, list] = {}

    def getmembers(self, obj, predicate=None):
        if predicate is not None or not isinstance(obj, type):
            return self._real.getmembers(obj, predicate)
        members = self._members.get(obj)
        if members is None:
            members = self._members[obj] = self._real.getmembers(obj)
        return list(members)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


_service_module.inspect = _MembersByClass(inspect)

# dbus-next: what ServiceInterface.__init__ finds for a class (its methods, properties and
# signals), taken from the first object of the class for the next ones
_INTERFACE_MEMBERS: dict[type, tuple[list, list, list]] = {}


def init_interface(obj: ServiceInterface, name: str) -> None:
    """``ServiceInterface.__init__(obj, name)``. With dbus-next, whose __init__ sorts every
    member of the class (~40 µs an object, once the members are remembered), the lists
    it makes for the first object of a class are copied for the next ones."""
    cls = type(obj)
    members = _INTERFACE_MEMBERS.get(cls) if LIBRARY == "dbus-next" else None
    if members is None:
        ServiceInterface.__init__(obj, name)
        if LIBRARY == "dbus-next":
            _INTERFACE_MEMBERS[cls] = (list(obj._ServiceInterface__methods),
                                       list(obj._ServiceInterface__properties),
                                       list(obj._ServiceInterface__signals))
        return
    obj.name = name
    obj._ServiceInterface__methods = list(members[0])
    obj._ServiceInterface__properties = list(members[1])
    obj._ServiceInterface__signals = list(members[2])
    obj._ServiceInterface__buses = set()


if LIBRARY == "dbus-next":
    from dbus_next.signature import SignatureTree as _SignatureTree

    # dbus-next keeps every signature it ever parsed, also those of the variants callers
    # send (they choose them): at most this many here, as dbus-fast bounds its own.
    MAX_SIGNATURE_TREES = 4096

    def _bounded_signature_tree(signature: str = ""):
        cache = _SignatureTree._cache
        tree = cache.get(signature)
        if tree is None:
            tree = _SignatureTree(signature)
            if len(cache) < MAX_SIGNATURE_TREES:
                cache[signature] = tree
        return tree

    _SignatureTree._get = staticmethod(_bounded_signature_tree)

    def _unchecked_variant(signature: str, value):
        """A Variant of a value read off the wire (the bus daemon has checked the
        message): built without the library's walk over the value to verify it."""
        variant = Variant.__new__(Variant)
        variant.type = _SignatureTree._get(signature).types[0]
        variant.signature = signature
        variant.value = value
        return variant

    # dbus-next's codec is pure Python that dispatches on the type at every value (and
    # verifies a body in a walk of its own first): wire.py does the same work with code
    # made once per signature, several times faster. dbus-fast's codec is compiled.
    CODEC: wire.Codec | None = wire.Codec(Variant, _unchecked_variant)
else:  # pragma: no cover - optional
    CODEC = None
# what we marshal ourselves with either library: our message headers, objects' entries
_OWN_CODEC = CODEC or wire.Codec(Variant, Variant)
_PROPERTY_WRITERS: dict[tuple, wire.PropertiesWriter] = {}


def marshal(signature: str, body: list) -> bytes:
    """``body`` (the values of ``signature``'s types) in the D-Bus wire format, as the library
    writes it in a message (little-endian) whose body starts at offset 0: bytes that stay
    valid at any 8-aligned offset of a body (see ``MessageBus.send_method_return``)."""
    if CODEC is not None:
        try:
            return bytes(CODEC.marshal_body(signature, body))
        except Exception:  # noqa: BLE001 - the library's answer (bytes or error) then
            pass
    return bytes(_Marshaller(signature, body).marshall())


def object_entry(path: str, interface: str, properties: tuple[tuple[str, str], ...],
                 values: dict) -> bytes:
    """``oa{sa{sv}}`` of the object at ``path`` with one interface whose ``properties``
    ((name, signature) ...) have ``values``: what the library marshals for
    ``[path, {interface: {name: Variant(signature, value), ...}}]``, written from the plain
    values by wire.PropertiesWriter (no Variants built, keys written once per table)."""
    try:
        writer = _PROPERTY_WRITERS.get(properties)
        if writer is None:
            writer = _PROPERTY_WRITERS[properties] = wire.PropertiesWriter(_OWN_CODEC,
                                                                           properties)
        return bytes(wire.object_entry(_OWN_CODEC, path, interface, writer, values))
    except Exception:  # noqa: BLE001 - the library's answer (bytes or error) then
        variants = {name: Variant(sig, values[name]) for name, sig in properties}
        return bytes(_Marshaller("oa{sa{sv}}", [path, {interface: variants}]).marshall())


def message_bytes(msg: Message, negotiate_unix_fd: bool) -> bytes | bytearray:
    """``msg`` in the wire format, as the library's ``msg._marshall()`` writes it."""
    if CODEC is not None:
        try:
            fields = {
                "path": msg.path, "interface": msg.interface, "member": msg.member,
                "error_name": msg.error_name, "reply_serial": msg.reply_serial,
                "destination": msg.destination, "signature": msg.signature,
                "unix_fds": len(msg.unix_fds) if negotiate_unix_fd else 0}
            body = CODEC.marshal_body(msg.signature, msg.body)
            return wire.message_bytes(CODEC, msg.message_type.value, msg.flags.value,
                                      msg.serial, fields, body)
        except Exception:  # noqa: BLE001 - the library's answer (bytes or error) then
            pass
    return msg._marshall(negotiate_unix_fd=negotiate_unix_fd)


def leaf_introspection(path: str, interfaces: list[ServiceInterface]) -> str:
    """The library's Introspect answer for an object at ``path`` that has no object below
    it: the standard interfaces, then ``interfaces``; no child nodes."""
    node = _introspection.Node.default(path)
    for interface in interfaces:
        node.interfaces.append(interface.introspect())
    return node.tostring()


def method_return_bytes(call: Message, serial: int, signature: str, body: bytes) -> bytes:
    """The whole message the library writes for ``Message.new_method_return(call, signature,
    values)`` with ``serial``, where ``body`` is ``values`` already marshalled.

    Its header differs between replies to one caller with one signature only in the body's
    length, the serial and the reply serial (the first field, at a fixed offset): made
    once per (caller, signature) and those three put in."""
    key = (call.sender, signature)
    header = _RETURN_HEADERS.get(key)
    if header is None:
        if len(_RETURN_HEADERS) >= _MAX_RETURN_HEADERS:
            _RETURN_HEADERS.clear()
        header = _RETURN_HEADERS[key] = wire.message_bytes(
            _OWN_CODEC, MessageType.METHOD_RETURN.value, 0, 0,
            {"reply_serial": 1, "destination": call.sender, "signature": signature}, b"")
    return b"".join((header[:4], _LENGTH_SERIAL.pack(len(body), serial), header[12:20],
                     _U32.pack(call.serial), header[24:], body))


# (caller, signature) -> the header of a method return with reply serial 1 (field 5, "u",
# its value at offset 20); callers come and go: the table starts again when full
_RETURN_HEADERS: dict[tuple[str | None, str], bytes] = {}
_MAX_RETURN_HEADERS = 512
_LENGTH_SERIAL = struct.Struct("<II")
_U32 = struct.Struct("<I")


class MarshalledSignal:
    """One signal (path, interface, member, signature) whose header is marshalled once:
    ``message(serial, body)`` is the whole message the library writes for
    ``Message.new_signal(...)`` with that serial and a body already marshalled, made by
    putting the body's length and the serial into a copy of the header."""

    def __init__(self, path: str, interface: str, member: str, signature: str) -> None:
        self._header = wire.message_bytes(_OWN_CODEC, MessageType.SIGNAL.value, 0, 0, {
            "path": path, "interface": interface, "member": member, "signature": signature,
        }, b"")

    def message(self, serial: int, body: bytes) -> bytes:
        header = self._header
        return b"".join((header[:4], struct.pack("<II", len(body), serial), header[12:], body))


class _PatientWriter(_MessageWriter):
    """The library's outgoing message queue, with a full socket treated as "later" and the
    messages of one event-loop step sent together.

    Both libraries' writers send queued messages on the non-blocking bus socket and
    take *any* exception as fatal: when the socket's send buffer is full (the bus
    daemon has not read our previous messages yet), ``send`` raises BlockingIOError
    (EAGAIN) and the library drops the connection. That happens as soon as the daemon
    emits more than a few hundred signals at once (a dir pool of 1,000+ volumes
    started, refreshed or destroyed). Here EAGAIN keeps the unsent rest and waits until
    the socket is writable again; every other error is still fatal, as in the library.

    Batching: a call's reply and the signals it caused (InterfacesAdded, PropertiesChanged)
    are queued one by one and go out together in one ``send`` as the call ends
    (``send_now``, for our methods' replies); what is queued otherwise (signals of their
    own, the library's replies) is sent once the step is done (``call_soon``). Consecutive
    messages without Unix fds are joined (at most ``_BATCH_BYTES`` a ``send``); dbus-fast
    would send each message at once and dbus-next each in its own ``send``: one system
    call and one wake-up of the bus daemon per message. A message with fds goes alone
    (its fds go out with its first byte).

    Why a reply does not wait for the step's end: the calls that arrived together run one
    after the other in one step, and the first caller would wait for all of them while
    the bus daemon and the callers (on the other CPU) had nothing to do. Sent as each call
    ends, 500 deletes with 16 in flight went from ~8,700 to ~12,000 a second here, at the
    same CPU per call for every process.

    Memory: messages wait in the library's queue (unbounded) while the bus reads slower
    than we write: a burst of 10,000 InterfacesAdded holds ~6 MB until the bus daemon
    has taken it, which it does at its own pace (it reads every connection in turn).
    """

    _BATCH_BYTES = 1 << 16

    if LIBRARY == "dbus-next":
        def __init__(self, bus) -> None:
            super().__init__(bus)
            # the library queues in an asyncio.Queue (dbus-fast in a deque); every use
            # of the queue is a method of this class
            self.messages = deque()

        def buffer_message(self, msg: Message, future=None) -> None:
            self.messages.append(
                (message_bytes(msg, self.negotiate_unix_fd), copy(msg.unix_fds), future))

    def schedule_write(self, msg: Message | None = None, future=None) -> None:
        """Queue ``msg`` (if any) and send the queue after the current step (only once
        the connection has said Hello, as in the library)."""
        if msg is not None:
            self.buffer_message(msg, future)
        if self.bus.unique_name and not self.__dict__.get("_flush_due"):
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        self.write_callback(remove_writer=False)

    def send_now(self) -> None:
        """Send the queue right away if nothing is half sent (else the writer's own turn
        comes when the socket is writable); before Hello, after the step as always."""
        if self.bus.unique_name and self.buf is None:
            self.write_callback(remove_writer=False)
        else:
            self.schedule_write()

    def write_callback(self, remove_writer: bool = True) -> None:
        """Send queued messages until the queue is empty or the socket is full.

        Same contract as the library's: called by the event loop when the socket is
        writable; on a fatal error the futures of the messages being sent fail and the
        connection is finalized."""
        try:
            while True:
                if self.buf is None:
                    batch = self._next_batch()
                    if batch is None:
                        if remove_writer:
                            self.loop.remove_writer(self.fd)
                        return
                    buf, self.unix_fds, self._futures = batch
                    self.fut = self._futures[-1] if self._futures else None
                    self.buf = memoryview(buf)
                    self.offset = 0
                self.offset += self._send_some()
                if self.offset < len(self.buf):
                    # wait for writable (adding the same writer twice is fine)
                    self.loop.add_writer(self.fd, self.write_callback)
                    return
                self.buf = None
                for fut in self._futures:
                    if fut is not None and not fut.done():
                        fut.set_result(None)
        except Exception as e:
            for fut in self.__dict__.get("_futures", ()):
                if fut is not None and not fut.done():
                    if getattr(self.bus, "_user_disconnect", False):
                        fut.set_result(None)
                    else:
                        fut.set_exception(e)
            self.bus._finalize(e)

    def buffer_marshalled(self, data: bytes, future: asyncio.Future | None = None) -> None:
        """Queue a complete message that is already in wire format (no Unix fds)."""
        self.messages.append((data, None, future))

    def _next_batch(self):
        """(bytes, unix fds, futures) of the next message with fds, or of the next run of
        messages without fds joined; None when the queue is empty."""
        queue = self.messages
        if not queue:
            return None
        buf, fds, fut = queue.popleft()
        if fds:
            return buf, fds, [fut]
        pieces, futures, size = [buf], [fut], len(buf)
        while size < self._BATCH_BYTES and queue and not queue[0][1]:
            nxt = queue.popleft()
            pieces.append(nxt[0])
            futures.append(nxt[2])
            size += len(nxt[0])
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), None, futures

    def _send_some(self) -> int:
        """Send what the socket takes of the current buffer: 0 bytes when it is full."""
        data = self.buf[self.offset:]
        try:
            if self.unix_fds and self.negotiate_unix_fd:
                fds = array.array("i", self.unix_fds)
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                self.unix_fds = None      # they went out with the first byte
                return sent
            return self.sock.send(data)
        except BlockingIOError:           # EAGAIN/EWOULDBLOCK: nothing was sent
            return 0


class MessageBus(_MessageBus):
    """A bus connection that leaves ObjectManager signals to us and survives a full
    socket.

    The library emits InterfacesAdded/InterfacesRemoved from each object's own path
    when it is exported; DESIGN.md wants them from the manager's path, which
    ``ObjectTree`` does itself. The library's message writer is replaced by
    ``_PatientWriter`` (see there).
    """

    # The library assigns ``self._writer = _MessageWriter(self)`` (dbus-next in
    # __init__, dbus-fast in connect() once the socket exists, where it is a slot):
    # this property, found before the slot, builds our writer from the same bus instead.
    @property
    def _writer(self):
        return self.__dict__.get("_patient_writer")

    @_writer.setter
    def _writer(self, writer) -> None:
        if writer is not None and not isinstance(writer, _PatientWriter):
            writer = _PatientWriter(self)
        self.__dict__["_patient_writer"] = writer

    def send_signal(self, signal: MarshalledSignal, body: bytes) -> None:
        """Emit ``signal`` with a body already marshalled (as ``send_method_return``),
        in order with every other message."""
        self._writer.buffer_marshalled(signal.message(self.next_serial(), body))
        self._writer.schedule_write()

    def send_method_return(self, call: Message, signature: str, body: bytes) -> asyncio.Future:
        """Send the reply to ``call`` whose body, of type ``signature``, is already marshalled
        (``marshal()``, or pieces of it joined at 8-aligned offsets), through the same queue
        as every other message. Returns the send future."""
        data = method_return_bytes(call, self.next_serial(), signature, body)
        future = self._loop.create_future()
        self._writer.buffer_marshalled(data, future)
        self._writer.schedule_write()
        return future

    def _emit_interface_added(self, path, interface):  # noqa: D401 - library hook
        return None

    def _emit_interface_removed(self, path, removed_interfaces):
        return None

    def _call_method(self, interface, method, reply: "_Reply", msg: Message,
                     send_reply) -> None:
        """What the library's handler of a coroutine method does (run it as a task,
        reply with what it returns or the error it raises), without building two
        closures, a reply Message and the library's walks over the arguments and the
        result for fds (methods that pass fds are left to the library). The reply is
        sent as the method ends, with the signals it caused (``_PatientWriter.send_now``),
        not a step later nor after the step's other calls."""
        asyncio.ensure_future(self._run_method(interface, method, reply, msg))

    async def _run_method(self, interface, method, reply: "_Reply", msg: Message) -> None:
        try:
            values = reply.values(await method.fn(interface, *msg.body))
            if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                return
            data = method_return_bytes(msg, self.next_serial(), reply.signature,
                                       marshal(reply.signature, values))
            self._writer.buffer_marshalled(data)
            self._writer.send_now()
        except Exception as exc:  # noqa: BLE001 - as the library's reply context
            _ReplyContext(self, msg).send_error(exc)

    if LIBRARY == "dbus-fast":
        def _make_method_handler(self, interface, method):
            """The library makes a handler for every method of every object as it exports
            it: for a coroutine method a closure and, per call, a second one and a reply
            Message (a third of exporting a volume, and more per call). Ours is a partial
            of ``_call_method``, as dbus-next's lookup gives (methods that pass fds, and
            plain functions, are left to the library)."""
            reply = _reply_of(method)
            if reply is None:
                return super()._make_method_handler(interface, method)
            return functools.partial(self._call_method, interface, method, reply)

        def export(self, path, interface) -> None:
            """The library's export (the same checks and errors), the path checked by one
            regular expression rather than the library's split and a regular expression
            per element (~13 µs a volume; its cache holds 1024 paths)."""
            if not isinstance(path, str) or not isinstance(interface, ServiceInterface):
                # as the compiled export's typed arguments refuse them
                raise TypeError("export takes a str path and a ServiceInterface")
            if not wire.is_object_path(path):
                raise InvalidObjectPathError(path)
            exports = self._path_exports.get(path)
            if exports is None:
                exports = self._path_exports[path] = {}
            elif interface.name in exports:
                raise ValueError("An interface with this name is already exported on this "
                                 f'bus at path "{path}": "{interface.name}"')
            ServiceInterface._add_bus(interface, self, self._make_method_handler)
            exports[interface.name] = interface
            self._emit_interface_added(path, interface)

    if LIBRARY == "dbus-next":
        def _find_message_handler(self, msg):
            """The library's lookup of the handler of a method call, with the methods of
            our interfaces found in a table made once per class (the library compares the
            call with every method of every interface at the path, each time)."""
            if msg.interface in _STANDARD_INTERFACES or msg.interface is None:
                return super()._find_message_handler(msg)
            for interface in self._path_exports.get(msg.path, ()):
                if interface.name != msg.interface:
                    continue
                method = _methods_by_call(interface).get((msg.member, msg.signature))
                if method is not None and not method.disabled:
                    reply = _reply_of(method)
                    if reply is None:
                        return self._make_method_handler(interface, method)
                    return functools.partial(self._call_method, interface, method, reply)
            return None

        def _create_unmarshaller(self):
            return _IncomingMessages(self._sock, self._negotiate_unix_fd)

        def _message_reader(self):
            """The library's: every message that arrived, in order, to ``_on_message``; the
            connection ends (``_finalize``) on end of stream or an unreadable message."""
            try:
                for msg in self._unmarshaller.messages():
                    self._on_message(msg)
            except Exception as e:  # noqa: BLE001 - as the library: the connection ends
                self._unmarshaller.close()
                self._finalize(e)

        def _send_reply(self, msg):
            return _ReplyContext(self, msg)

        # dbus-next finds an interface's path by walking every export: on each unexport
        # (``_has_interface``) and on each signal an object emits (PropertiesChanged),
        # so 10,000 volumes made those O(n) each. An index of the paths each exported
        # instance is at answers both at once; it follows export/unexport exactly.
        def export(self, path, interface) -> None:
            """The library's export (the same checks and errors), the path checked by one
            regular expression rather than the library's walk over its elements."""
            if not isinstance(path, str) or not wire.is_object_path(path):
                raise InvalidObjectPathError(path)
            if not isinstance(interface, ServiceInterface):
                raise TypeError("interface must be a ServiceInterface")
            exports = self._path_exports.setdefault(path, [])
            if any(f.name == interface.name for f in exports):
                raise ValueError("An interface with this name is already exported on this "
                                 f'bus at path "{path}": "{interface.name}"')
            exports.append(interface)
            ServiceInterface._add_bus(interface, self)
            self._paths_of().setdefault(id(interface), []).append(path)

        def unexport(self, path, interface=None) -> None:
            if isinstance(interface, ServiceInterface):
                self._unexport_one(path, interface)
                return
            exports = list(self._path_exports.get(path, ()))
            if isinstance(interface, str):
                gone = [i for i in exports if i.name == interface][:1]
            elif interface is None:
                gone = exports
            else:
                gone = [i for i in exports if i is interface][:1]
            index = self._paths_of()
            for iface in gone:
                paths = index.get(id(iface), [])
                if path in paths:
                    paths.remove(path)
                if not paths:
                    index.pop(id(iface), None)
            super().unexport(path, interface)

        def _unexport_one(self, path: str, interface: ServiceInterface) -> None:
            """unexport(path, interface) as the library does it (an interface left at no
            path is detached from the bus), without its checks of every argument's type."""
            if not isinstance(path, str) or not wire.is_object_path(path):
                raise InvalidObjectPathError(path)
            exports = self._path_exports.get(path, [])
            for i, iface in enumerate(exports):
                if iface is interface:
                    del exports[i]
                    if not exports:
                        del self._path_exports[path]
                    index = self._paths_of()
                    paths = index.get(id(interface), [])
                    if path in paths:
                        paths.remove(path)
                    if not paths:
                        index.pop(id(interface), None)
                        ServiceInterface._remove_bus(interface, self)
                    return

        def _has_interface(self, interface) -> bool:
            return id(interface) in self._paths_of()

        def _interface_signal_notify(self, interface, interface_name, member, signature,
                                     body, unix_fds=()):
            paths = self._paths_of().get(id(interface))
            if not paths:
                raise ValueError(f"{interface_name} is not exported on this bus")
            self.send(Message.new_signal(path=paths[-1], interface=interface_name,
                                         member=member, signature=signature, body=body,
                                         unix_fds=list(unix_fds)))

        def _paths_of(self) -> dict[int, list[str]]:
            return self.__dict__.setdefault("_export_paths", {})


if LIBRARY == "dbus-next":
    _STANDARD_INTERFACES = frozenset({
        "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Properties",
        "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.ObjectManager"})
    _METHODS_BY_CALL: dict[type, dict[tuple[str, str], object]] = {}

    def _methods_by_call(interface: ServiceInterface) -> dict[tuple[str, str], object]:
        """(member, signature) -> the method of ``interface``'s class (its methods are the
        same for every object of the class: init_interface)."""
        table = _METHODS_BY_CALL.get(type(interface))
        if table is None:
            table = _METHODS_BY_CALL[type(interface)] = {
                (m.name, m.in_signature): m for m in ServiceInterface._get_methods(interface)}
        return table

    class _IncomingMessages:
        """The library's reader of incoming messages, replaced: stream.MessageStream cuts
        the socket's bytes into messages (one read for all that arrived) and hands out the
        fds each names; wire.py parses each message; what wire.py does not take (another
        byte order, an unknown header field) goes to the library's own parser."""

        def __init__(self, sock: socket.socket, unix_fds: bool) -> None:
            self.stream = stream.MessageStream(sock, unix_fds)

        def messages(self) -> list[Message]:
            return [self._message(data) for data in self.stream.read()]

        def _message(self, data: bytes) -> Message:
            try:
                mtype, flags, serial, fields, body = wire.parse_message(CODEC, data)
                msg = _received_message(mtype, flags, serial, fields, body, [])
                count = fields.get("unix_fds", 0)
            except Exception:  # noqa: BLE001 - the library's parser decides then
                msg = _Unmarshaller(io.BytesIO(data)).unmarshall()
                if msg is None:
                    raise stream.StreamError("a message the library cannot read") from None
                count = _declared_unix_fds(data)
            msg.unix_fds = self.stream.take_fds(count) if count else []
            return msg

        def close(self) -> None:
            self.stream.close()

    def _declared_unix_fds(data: bytes) -> int:
        """The UNIX_FDS header field of the message ``data`` (either byte order), read by
        the library (for a message wire.py does not take)."""
        reader = _Unmarshaller(io.BytesIO(data))
        reader.read(len(data), prefetch=True)
        reader.endian = data[0]
        reader.offset = 12              # the header fields' array: a(yv)
        for code, value in reader.read_argument(_SignatureTree._get("a(yv)").types[0]):
            if code == _UNIX_FDS_FIELD:
                return value.value
        return 0

    _UNIX_FDS_FIELD = 9

    # the enum members by value (calling an enum class costs more than a dict lookup)
    _MESSAGE_TYPES = {t.value: t for t in MessageType}
    _MESSAGE_FLAGS = {n: MessageFlag(n) for n in range(8)}
    _REQUIRED = {MessageType.METHOD_CALL: ("path", "member"),
                 MessageType.SIGNAL: ("path", "member", "interface"),
                 MessageType.ERROR: ("error_name", "reply_serial"),
                 MessageType.METHOD_RETURN: ("reply_serial",)}

    def _received_message(mtype: int, flags: int, serial: int, fields: dict, body: list,
                          unix_fds: list) -> Message:
        """The library's Message of what wire.py read, made as its constructor would make
        it, without checking each name against the specification once more (the bus
        daemon delivers only valid messages); a field a message type needs is still
        required (the library's own error otherwise)."""
        message_type = _MESSAGE_TYPES[mtype] if mtype in _MESSAGE_TYPES else MessageType(mtype)
        for name in _REQUIRED[message_type]:
            if not fields.get(name):
                raise wire.WireError(f"{message_type.name} without {name}")
        msg = Message.__new__(Message)
        msg.destination = fields.get("destination")
        msg.path = fields.get("path")
        msg.interface = fields.get("interface")
        msg.member = fields.get("member")
        msg.message_type = message_type
        msg.flags = _MESSAGE_FLAGS[flags] if flags in _MESSAGE_FLAGS else MessageFlag(flags)
        msg.error_name = fields.get("error_name")
        msg.reply_serial = fields.get("reply_serial")
        msg.sender = fields.get("sender")
        msg.unix_fds = unix_fds
        msg.signature = fields.get("signature", "")
        msg.signature_tree = _SignatureTree._get(msg.signature)
        msg.body = body
        msg.serial = serial
        return msg


class _Reply:
    """How a method's return value becomes its reply's body (out signature, number of
    values), as the library's ``_fn_result_to_body`` makes it."""

    __slots__ = ("signature", "count")

    def __init__(self, signature: str, count: int) -> None:
        self.signature = signature
        self.count = count

    def values(self, result) -> list:
        if result is None:
            values = []
        elif self.count == 1:
            values = [result]
        elif type(result) is list:
            values = result
        else:
            raise TypeError("a method with several out values must return a list")
        if len(values) != self.count:
            raise TypeError(f"{len(values)} values returned for {self.count} out values")
        return values


_REPLIES: dict[object, _Reply | None] = {}


def _reply_of(method) -> _Reply | None:
    """The _Reply of a coroutine method that takes and returns no fds; None for any
    other method (the library's handler then)."""
    if method not in _REPLIES:
        plain = (asyncio.iscoroutinefunction(method.fn)
                 and "h" not in method.in_signature and "h" not in method.out_signature)
        _REPLIES[method] = (_Reply(method.out_signature,
                                   len(method.out_signature_tree.types))
                            if plain else None)
    return _REPLIES[method]


class _ReplyContext:
    """What dbus-next's ``_send_reply(msg)`` gives a method handler (a context that sends
    the reply, or the error reply of an exception raised in it), without its flaws:
    dbus-next defines a new class for every call (~15 µs), does not tell Python it
    handled the exception (asyncio then logs a traceback for every error a caller
    receives), and answers an exception other than a DBusError with its traceback.
    Here such an exception (calls.py maps every error of our methods: this is for what
    fails after, e.g. a reply that does not fit its signature) is logged and the caller
    gets a plain Failed. dbus-fast's own context already returns it."""

    __slots__ = ("_bus", "_msg")

    def __init__(self, bus, msg) -> None:
        self._bus = bus
        self._msg = msg

    def __enter__(self):
        return self

    def __call__(self, reply) -> None:
        if self._msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return
        self._bus.send(reply)

    def __exit__(self, exc_type, exc_value, tb) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, DBusError):
            self(exc_value._as_message(self._msg))
            return True
        if issubclass(exc_type, Exception):
            _log.error("error answering %s.%s", self._msg.interface, self._msg.member,
                       exc_info=(exc_type, exc_value, tb))
            failed = Failed(f"internal error: {exc_type.__name__}")
            self(Message.new_error(self._msg, failed.dbus_name, failed.message))
            return True
        return False

    def send_error(self, exc) -> None:
        self.__exit__(type(exc), exc, exc.__traceback__)
