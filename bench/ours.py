"""Our daemon as the bench runs it: tests.harness.StorageDaemon without ``--debug`` (a
production log level), D-Bus library picked with ``EXAMPLE_STORAGE_DBUS``; start-up time
measured to the moment the bus announces the name (the daemon takes it only after it has
restored and exported every pool and volume and scanned the host's block devices).

Its Python bytecode is cached, as an installed package's is (pip and Debian compile it at
install): below the bench's temp dir (``PYTHONPYCACHEPREFIX``), even where the environment
says PYTHONDONTWRITEBYTECODE (this machine's does), so that a start does not compile the
service's ~60 modules again (~0.1 s). The first start of a run writes the cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dbus_next import Message, MessageType

from tests.harness.bus import PrivateBus
from tests.harness.daemon import StorageDaemon

from .libvirt_peer import rss_kib

NAME = "org.example.Storage"


class BenchDaemon(StorageDaemon):
    def __init__(self, bus: PrivateBus, workdir: Path, library: str) -> None:
        super().__init__(bus, workdir, env={
            "EXAMPLE_STORAGE_DBUS": library,
            "PYTHONDONTWRITEBYTECODE": "",     # empty: writing bytecode is allowed
            "PYTHONPYCACHEPREFIX": str(workdir.parent / "pycache"),
        })
        self.library = library

    def argv(self) -> list[str]:
        return [a for a in super().argv() if a != "--debug"]

    def rss(self) -> int:
        return rss_kib(self.pid).get("VmRSS", 0) if self.pid else 0


async def timed_start(daemon: BenchDaemon, client) -> float:
    """Start ``daemon``; seconds from just before its process starts until the bus says it
    owns org.example.Storage (NameOwnerChanged, received by ``client``)."""
    owned = asyncio.Event()
    when: list[float] = []

    def handler(msg: Message) -> None:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.body and msg.body[0] == NAME and msg.body[2]):
            when.append(time.perf_counter())
            owned.set()

    rule = (f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{NAME}'")
    await _bus_call(client, "AddMatch", rule)
    client.add_message_handler(handler)
    try:
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, daemon.start, 120)
        await asyncio.wait_for(owned.wait(), 30)
        return when[0] - t0
    finally:
        client.remove_message_handler(handler)
        await _bus_call(client, "RemoveMatch", rule)


async def _bus_call(client, member: str, rule: str) -> None:
    await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                              interface="org.freedesktop.DBus", member=member, signature="s",
                              body=[rule]))
