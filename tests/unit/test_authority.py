"""adapter/authority.py keeps bus round trips off the hot path: polkit's presence is asked
once and then followed through NameOwnerChanged, a caller's uid is asked once per unique
name; with polkit present every call is still asked. The bus is a stand-in that answers
the bus daemon's and polkit's methods and counts the calls (the real bus and polkitd are
in tests/bus/test_polkit.py)."""

from __future__ import annotations

from collections import Counter

import pytest
from example_storage.adapter.authority import POLKIT_NAME, PolkitAuthority
from example_storage.adapter.bus import Message, MessageType
from example_storage.errors import NotAuthorized


class FakeBus:
    def __init__(self, uids: dict[str, int], polkit: bool = False) -> None:
        self.uids = uids
        self.polkit = polkit
        self.calls: Counter[str] = Counter()
        self.handlers: list = []

    def add_message_handler(self, handler) -> None:
        self.handlers.append(handler)

    def remove_message_handler(self, handler) -> None:
        self.handlers.remove(handler)

    async def call(self, msg: Message) -> Message:
        self.calls[msg.member] += 1
        answers = {
            "AddMatch": lambda: ("", []),
            "NameHasOwner": lambda: ("b", [self.polkit]),
            "GetConnectionUnixUser": lambda: ("u", [self.uids.get(msg.body[0], 1000)]),
            "CheckAuthorization": lambda: ("(bba{ss})", [[True, False, {}]]),
        }
        signature, body = answers[msg.member]()
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                       signature=signature, body=body)

    def polkit_owner_changed(self, owner: str) -> None:
        """The bus daemon's NameOwnerChanged for polkit's name."""
        self.polkit = bool(owner)
        signal = Message(message_type=MessageType.SIGNAL, sender="org.freedesktop.DBus",
                         path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                         member="NameOwnerChanged", signature="sss",
                         body=[POLKIT_NAME, "" if owner else ":1.9", owner])
        for handler in list(self.handlers):
            handler(signal)


async def test_root_without_polkit_costs_no_round_trip_after_the_first():
    bus = FakeBus({":1.5": 0})
    auth = PolkitAuthority(bus)
    for _ in range(50):
        await auth.check(":1.5", "org.example.storage.volume.manage", {}, False)
    assert bus.calls == {"AddMatch": 1, "NameHasOwner": 1, "GetConnectionUnixUser": 1}


async def test_non_root_without_polkit_is_refused_every_time():
    bus = FakeBus({":1.7": 1000})
    auth = PolkitAuthority(bus)
    for _ in range(3):
        with pytest.raises(NotAuthorized):
            await auth.check(":1.7", "org.example.storage.volume.manage", {}, False)
    assert bus.calls["GetConnectionUnixUser"] == 1


async def test_polkit_coming_and_going_is_followed():
    bus = FakeBus({":1.5": 0, ":1.7": 1000})
    auth = PolkitAuthority(bus)
    with pytest.raises(NotAuthorized):
        await auth.check(":1.7", "a.b", {}, False)
    bus.polkit_owner_changed(":1.20")           # polkitd starts: it decides from now on
    await auth.check(":1.7", "a.b", {}, False)
    await auth.check(":1.5", "a.b", {}, False)
    assert bus.calls["CheckAuthorization"] == 2
    bus.polkit_owner_changed("")                # and goes away: root only again
    with pytest.raises(NotAuthorized):
        await auth.check(":1.7", "a.b", {}, False)
    await auth.check(":1.5", "a.b", {}, False)
    assert bus.calls["CheckAuthorization"] == 2
    assert bus.calls["NameHasOwner"] == 1


async def test_uid_cache_is_bounded(monkeypatch):
    from example_storage.adapter import authority

    monkeypatch.setattr(authority, "UID_CACHE_SIZE", 4)
    bus = FakeBus({f":1.{i}": i for i in range(10)})
    auth = PolkitAuthority(bus)
    for i in range(10):
        assert await auth.caller_uid(f":1.{i}") == i
    assert len(auth._uids) == 4
    assert await auth.caller_uid(":1.9") == 9
    assert bus.calls["GetConnectionUnixUser"] == 10
