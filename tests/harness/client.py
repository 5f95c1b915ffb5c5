"""Async test-client helpers over dbus-next (the library the service pins).

Replies come back as plain Python: ``Variant`` values are unwrapped recursively, structs are
lists (as dbus-next gives them). Error replies raise ``dbus_next.errors.DBusError`` whose
``.type`` is the D-Bus error name and ``.text`` its message. dbus-next calls have no timeout
of their own: every helper bounds the wait with ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError

STORAGE_NAME = "org.example.Storage"
MANAGER_PATH = "/org/example/Storage"
MANAGER_IFACE = "org.example.Storage.Manager"
POOL_IFACE = "org.example.Storage.Pool"
VOLUME_IFACE = "org.example.Storage.Volume"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

__all__ = [
    "DBusError",
    "MANAGER_IFACE",
    "MANAGER_PATH",
    "POOL_IFACE",
    "STORAGE_NAME",
    "VOLUME_IFACE",
    "Signal",
    "SignalRecorder",
    "call",
    "connect",
    "get_all",
    "get_property",
    "managed_objects",
    "unwrap",
]


def unwrap(value: Any) -> Any:
    """Turn ``Variant``s (at any depth, in dicts and lists) into their plain values."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


async def connect(address: str, timeout: float = 10) -> MessageBus:
    """Connect to the bus at ``address`` (Unix fd passing negotiated)."""
    bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
    return await asyncio.wait_for(bus.connect(), timeout)


async def call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
    timeout: float = 30,
    *,
    destination: str = STORAGE_NAME,
    raw: bool = False,
) -> list[Any]:
    """Call a method and return the reply body (a list; ``Variant``s unwrapped unless
    ``raw``). An error reply raises ``DBusError``; no reply in ``timeout`` s raises
    ``TimeoutError``."""
    msg = Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=list(body),
    )
    reply = await asyncio.wait_for(bus.call(msg), timeout)
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise DBusError(reply.error_name, text, reply)
    return reply.body if raw else unwrap(reply.body)


async def get_property(
    bus: MessageBus,
    path: str,
    interface: str,
    name: str,
    timeout: float = 30,
    *,
    destination: str = STORAGE_NAME,
) -> Any:
    """``org.freedesktop.DBus.Properties.Get``, unwrapped."""
    (value,) = await call(
        bus, path, PROPERTIES_IFACE, "Get", "ss", [interface, name], timeout,
        destination=destination,
    )
    return value


async def get_all(
    bus: MessageBus,
    path: str,
    interface: str,
    timeout: float = 30,
    *,
    destination: str = STORAGE_NAME,
) -> dict[str, Any]:
    """``org.freedesktop.DBus.Properties.GetAll``, unwrapped."""
    (values,) = await call(
        bus, path, PROPERTIES_IFACE, "GetAll", "s", [interface], timeout,
        destination=destination,
    )
    return dict(values)


async def managed_objects(
    bus: MessageBus,
    timeout: float = 30,
    *,
    path: str = MANAGER_PATH,
    destination: str = STORAGE_NAME,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``GetManagedObjects`` on /org/example/Storage: {path: {interface: {prop: value}}}."""
    (objects,) = await call(
        bus, path, OBJECT_MANAGER_IFACE, "GetManagedObjects", timeout=timeout,
        destination=destination,
    )
    return dict(objects)


@dataclass(frozen=True)
class Signal:
    """One received signal (``body`` unwrapped)."""

    sender: str
    path: str
    interface: str
    member: str
    body: list[Any] = field(default_factory=list)
    signature: str = ""


class SignalRecorder:
    """Records every signal that the owner of ``name`` emits, across owner changes
    (daemon restarts), from ``start()`` until ``stop()``.

    Use as ``async with SignalRecorder(bus) as rec: ...; await rec.wait_for(pred)``.
    """

    def __init__(self, bus: MessageBus, name: str = STORAGE_NAME) -> None:
        self.bus = bus
        self.name = name
        self.signals: list[Signal] = []
        self._owners: set[str] = set()
        self._changed = asyncio.Event()
        self._rules = [
            f"type='signal',sender='{name}'",
            f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
            f"member='NameOwnerChanged',arg0='{name}'",
        ]
        self._started = False

    async def _bus_call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        return await call(
            self.bus, DBUS_PATH, DBUS_NAME, member, signature, body, 10, destination=DBUS_NAME
        )

    async def start(self) -> SignalRecorder:
        self.bus.add_message_handler(self._on_message)
        self._started = True
        for rule in self._rules:
            await self._bus_call("AddMatch", "s", [rule])
        try:
            (owner,) = await self._bus_call("GetNameOwner", "s", [self.name])
            self._owners.add(owner)
        except DBusError:
            pass  # not owned yet: NameOwnerChanged will tell
        return self

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.bus.remove_message_handler(self._on_message)
        if self.bus.connected:
            for rule in self._rules:
                with contextlib.suppress(DBusError, TimeoutError):
                    await self._bus_call("RemoveMatch", "s", [rule])

    async def __aenter__(self) -> SignalRecorder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return None
        if (
            msg.sender == DBUS_NAME
            and msg.member == "NameOwnerChanged"
            and msg.body
            and msg.body[0] == self.name
        ):
            _name, _old, new = msg.body
            if new:
                self._owners.add(new)
            return None
        if msg.sender in self._owners or msg.sender == self.name:
            self.signals.append(
                Signal(
                    sender=msg.sender,
                    path=msg.path,
                    interface=msg.interface,
                    member=msg.member,
                    body=unwrap(list(msg.body)),
                    signature=msg.signature,
                )
            )
            self._changed.set()
        return None

    def matching(self, predicate: Callable[[Signal], bool]) -> list[Signal]:
        """The recorded signals for which ``predicate`` is true."""
        return [s for s in self.signals if predicate(s)]

    async def wait_for(
        self, predicate: Callable[[Signal], bool], timeout: float = 10, *, start: int = 0
    ) -> Signal:
        """The first recorded signal (from index ``start``) matching ``predicate``, waiting
        up to ``timeout`` s for it to arrive; raises ``TimeoutError`` listing what came."""

        async def _wait() -> Signal:
            i = start
            while True:
                while i < len(self.signals):
                    sig = self.signals[i]
                    i += 1
                    if predicate(sig):
                        return sig
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            seen = "\n  ".join(f"{s.path} {s.interface}.{s.member} {s.body}" for s in self.signals)
            raise TimeoutError(
                f"no matching signal within {timeout}s; recorded:\n  {seen or '(none)'}"
            ) from None

    def clear(self) -> None:
        self.signals.clear()
