"""Fixtures for tests that talk to the running service over a private bus."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dbus_next import Variant
from dbus_next.errors import DBusError

from tests.bus.helpers import MANAGER, MANAGER_PATH, POOL, dir_pool_xml
from tests.harness.bus import PrivateBus
from tests.harness.client import SignalRecorder, call, connect, get_all, managed_objects
from tests.harness.daemon import StorageDaemon
from tests.harness.polkit import RealPolkitd
from tests.harness.users import TestUser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the service runs as root")


@dataclass
class Service:
    """A running daemon on a private bus and a connected client."""

    bus: PrivateBus
    daemon: StorageDaemon
    workdir: Path
    client: object = None
    recorders: list = field(default_factory=list)

    @property
    def config_dir(self) -> Path:
        return self.daemon.config_dir

    @property
    def run_dir(self) -> Path:
        return self.daemon.run_dir

    @staticmethod
    def variant(signature: str, value) -> Variant:
        return Variant(signature, value)

    async def connect(self) -> None:
        self.client = await connect(self.bus.address)

    async def call(self, path: str, iface: str, member: str, signature: str = "", *args):
        body = await call(self.client, path, iface, member, signature, list(args))
        return body[0] if len(body) == 1 else (body or None)

    async def call_error(self, path, iface, member, signature="", *args) -> DBusError:
        try:
            await self.call(path, iface, member, signature, *args)
        except DBusError as e:
            return e
        raise AssertionError(f"{member} succeeded but should have failed")

    async def manager(self, member: str, signature: str = "", *args):
        return await self.call(MANAGER_PATH, MANAGER, member, signature, *args)

    async def manager_error(self, member: str, signature: str = "", *args) -> DBusError:
        return await self.call_error(MANAGER_PATH, MANAGER, member, signature, *args)

    async def props(self, path: str, iface: str) -> dict:
        return await get_all(self.client, path, iface)

    async def managed_objects(self) -> dict:
        return await managed_objects(self.client)

    async def introspect(self, path: str) -> str:
        return await self.call(path, "org.freedesktop.DBus.Introspectable", "Introspect")

    async def recorder(self) -> SignalRecorder:
        rec = await SignalRecorder(self.client).start()
        self.recorders.append(rec)
        return rec

    async def running_dir_pool(self, name: str) -> str:
        pool = await self.manager("DefinePool", "sa{sv}",
                                  dir_pool_xml(name, self.workdir / name), {})
        await self.call(pool, POOL, "Build", "a{sv}", {})
        await self.call(pool, POOL, "Start", "a{sv}", {})
        return pool

    async def restart(self) -> None:
        """Start the daemon again (after stop or kill9) and reconnect."""
        if self.daemon.running:
            self.daemon.stop()
        self.daemon.start()
        await self.close()
        await self.connect()

    async def close(self) -> None:
        for rec in self.recorders:
            await rec.stop()
        self.recorders.clear()
        if self.client is not None:
            self.client.disconnect()
            self.client = None


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, bus: PrivateBus, library: str = "dbus-next",
                          extra_args: tuple[str, ...] = ()) -> AsyncIterator[Service]:
    """The daemon (with ``library``) on ``bus`` and a connected client; stopped after."""
    daemon = StorageDaemon(bus, tmp_path, env={"EXAMPLE_STORAGE_DBUS": library},
                           extra_args=list(extra_args))
    service = Service(bus, daemon, tmp_path)
    try:
        daemon.start()
        await service.connect()
        yield service
    finally:
        await service.close()
        daemon.stop()


@pytest.fixture
async def svc(tmp_path, request):
    """The service with no polkit on its bus: only root (this test) is authorized.

    Indirect parametrization picks the daemon's D-Bus library: "dbus-next" (default)
    or "dbus-fast" (the drop-in, see adapter/bus.py).
    """
    bus = PrivateBus().start()
    try:
        async with running_service(tmp_path, bus, getattr(request, "param", "dbus-next")
                                   ) as service:
            yield service
    finally:
        bus.stop()
        _unmount_below(tmp_path)


@pytest.fixture
async def real_lane(tmp_path):
    """The service on a bus with the real polkitd, and a throw-away unprivileged user:
    (service, polkitd, user)."""
    bus = PrivateBus().start()
    polkitd = RealPolkitd(bus)
    try:
        polkitd.start()
        with TestUser() as user:
            async with running_service(tmp_path, bus) as service:
                yield service, polkitd, user
    finally:
        polkitd.stop()
        bus.stop()


def _unmount_below(root: Path) -> None:
    """Unmount whatever a test left mounted below its tmp dir (an fs pool's target)."""
    import subprocess

    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, timeout=30)
