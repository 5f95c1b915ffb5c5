"""org.example.Storage.Volume (introspection/org.example.Storage.Volume.xml)."""

from ..model.volxml import format_volume_xml
from . import actions
from .bus import method
from .calls import authorized, option, public
from .paths import VOLUME_IFACE, pool_path, volume_path
from .properties import ExportedObject, with_properties


@with_properties
class VolumeInterface(ExportedObject):
    PROPERTIES = (
        ("Name", "s"), ("Key", "s"), ("Path", "s"), ("Pool", "o"), ("Type", "s"),
        ("Format", "s"), ("Capacity", "t"), ("Allocation", "t"), ("BackingStore", "s"),
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
        }

    def auth_details(self) -> dict[str, str]:
        return {"pool": self.pool.name, "volume": self.volume_name}

    @method()
    @authorized(actions.VOLUME_MANAGE)
    async def Resize(self, capacity: "t", options: "a{sv}"):
        shrink = option(options, "shrink", "b", False)
        async with self.pool.lock:
            await self.pool.resize_volume(self.volume_name, capacity, shrink)

    @method()
    @authorized(actions.VOLUME_DELETE)
    async def Delete(self, options: "a{sv}"):
        async with self.pool.lock:
            await self.pool.delete_volume(self.volume_name)

    @method()
    @authorized(actions.VOLUME_DELETE)
    async def Wipe(self, options: "a{sv}"):
        async with self.pool.lock:
            await self.pool.wipe_volume(self.volume_name)

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
