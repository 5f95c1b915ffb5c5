"""org.example.Storage.Volume (introspection/org.example.Storage.Volume.xml)."""

import contextlib
import functools
import os

from ..backends.overwrite import check_algorithm
from ..core import jobs
from ..errors import InvalidArgument
from ..model.volxml import format_volume_xml
from . import actions
from .bus import method
from .calls import authorized, current_message, option, public
from .job_iface import running_job
from .paths import VOLUME_IFACE, pool_path, volume_path
from .properties import ExportedObject, with_properties


def closes_fds(fn):
    """For a method whose first argument is an ``h``: pass on only an fd that really came
    with the call (dbus-fast hands over the bare index when a message carries no fds:
    that number is one of the daemon's own fds), None otherwise; close every fd the call
    carried once it ends, authorized or not (the D-Bus library never closes them).
    Goes right under ``@method()``."""

    @functools.wraps(fn)
    async def call(self, fd, *args):
        msg = current_message.get()
        received = list(msg.unix_fds or ()) if msg is not None and msg.member == fn.__name__ \
            else []
        try:
            return await fn(self, fd if fd in received else None, *args)
        finally:
            for each in set(received):
                with contextlib.suppress(OSError):
                    os.close(each)

    return call


def _passed_fd(fd) -> int:
    if not isinstance(fd, int) or fd < 0:
        raise InvalidArgument("no file descriptor came with the call (the connection must "
                              "negotiate Unix fd passing)")
    return fd


@with_properties
class VolumeInterface(ExportedObject):
    PROPERTIES = (
        ("Name", "s"), ("Key", "s"), ("Path", "s"), ("Pool", "o"), ("Type", "s"),
        ("Format", "s"), ("Capacity", "t"), ("Allocation", "t"), ("BackingStore", "s"),
        ("Serial", "s"),
    )

    def __init__(self, pool, name: str, service) -> None:
        super().__init__(VOLUME_IFACE, service)
        self.pool = pool
        self.volume_name = name

    @property
    def volume(self):
        return self.pool.volume(self.volume_name)

    def property_values(self) -> dict[str, object]:
        v = self.pool.volumes.get(self.volume_name)
        if v is None:   # being removed right now
            return {n: ("/" if s == "o" else 0 if s == "t" else "") for n, s in self.PROPERTIES}
        return {
            "Name": v.name, "Key": v.key or "", "Path": v.path or "",
            "Pool": pool_path(self.pool.name), "Type": v.type or "", "Format": v.format or "",
            "Capacity": v.capacity or 0, "Allocation": v.allocation or 0,
            "BackingStore": v.backing_store.path if v.backing_store else "",
            "Serial": v.serial or "",
        }

    def auth_details(self) -> dict[str, str]:
        return {"pool": self.pool.name, "volume": self.volume_name}

    @property
    def path(self) -> str:
        return volume_path(self.pool.name, self.volume_name)

    @property
    def pool_path(self) -> str:
        return pool_path(self.pool.name)

    def _job(self, operation: str):
        """Run the block as a Job on this volume (and its pool)."""
        return running_job(self.service, operation, [self.path, self.pool_path])

    @method()
    @authorized(actions.VOLUME_MANAGE)
    async def Resize(self, capacity: "t", options: "a{sv}"):
        shrink = option(options, "shrink", "b", False)
        async with self.pool.lock:
            await self.pool.resize_volume(self.volume_name, capacity, shrink)

    @method()
    @authorized(actions.VOLUME_DELETE)
    async def Delete(self, options: "a{sv}"):
        zeroed = option(options, "zeroed", "b", False)
        if not zeroed:
            async with self.pool.volume_lock():
                await self.pool.delete_volume(self.volume_name)
            return
        async with self._job(jobs.VOLUME_DELETE), self.pool.lock:
            await self.pool.delete_volume(self.volume_name, zeroed=True)

    @method()
    @authorized(actions.VOLUME_DELETE)
    async def Wipe(self, options: "a{sv}"):
        algorithm = check_algorithm(option(options, "algorithm", "s", "zero"))
        async with self._job(jobs.VOLUME_WIPE), self.pool.lock:
            await self.pool.wipe_volume(self.volume_name, algorithm)

    @method()
    @closes_fds
    @authorized(actions.VOLUME_MANAGE)
    async def Upload(self, fd: "h", offset: "t", length: "t", options: "a{sv}"):
        fd = _passed_fd(fd)
        async with self._job(jobs.VOLUME_UPLOAD), self.pool.lock:
            await self.pool.upload_volume(self.volume_name, fd, offset, length)

    @method()
    @closes_fds
    @authorized(actions.VOLUME_MANAGE)
    async def Download(self, fd: "h", offset: "t", length: "t", options: "a{sv}"):
        fd = _passed_fd(fd)
        async with self._job(jobs.VOLUME_DOWNLOAD), self.pool.lock:
            await self.pool.download_volume(self.volume_name, fd, offset, length)

    @method()
    @authorized(actions.VOLUME_MANAGE)
    async def Snapshot(self, name: "s", size: "t", options: "a{sv}") -> "o":
        async with self.pool.lock:
            snap = await self.pool.snapshot_volume(self.volume_name, name, size)
        return volume_path(self.pool.name, snap.name)

    @method()
    @public
    async def GetXMLDesc(self, options: "a{sv}") -> "s":
        return format_volume_xml(self.volume)
