"""org.example.Storage.Pool: one object per pool (introspection/org.example.Storage.Pool.xml)."""

from ..core import jobs
from ..core.pool import DEFAULT_LUN_POLL_INTERVAL, MAX_LUN_POLL_INTERVAL
from ..errors import InvalidArgument, NotFound
from ..model.poolxml import format_pool_xml
from . import actions
from .bus import method, signal
from .calls import authorized, option, public
from .job_iface import running_job
from .paths import POOL_IFACE, pool_path, volume_path
from .properties import ExportedObject, with_properties


@with_properties
class PoolInterface(ExportedObject):
    PROPERTIES = (
        ("Name", "s"), ("UUID", "s"), ("Type", "s"), ("State", "s"), ("Active", "b"),
        ("Persistent", "b"), ("Autostart", "b"), ("Capacity", "t"), ("Allocation", "t"),
        ("Available", "t"), ("TargetPath", "s"), ("Devices", "a(sstt)"),
    )

    def __init__(self, pool, service) -> None:
        super().__init__(POOL_IFACE, service)
        self.pool = pool

    def property_values(self) -> dict[str, object]:
        p = self.pool
        return {
            "Name": p.name, "UUID": p.uuid, "Type": p.type, "State": p.state,
            "Active": p.active, "Persistent": p.persistent, "Autostart": p.autostart,
            "Capacity": p.stats.capacity, "Allocation": p.stats.allocation,
            "Available": p.stats.available, "TargetPath": p.target_path,
            "Devices": [[d.path, d.uuid, d.size, d.free] for d in p.devices],
        }

    def auth_details(self) -> dict[str, str]:
        return {"pool": self.pool.name}

    @property
    def manager(self):
        return self.service.manager

    # -- methods ------------------------------------------------------------
    @method()
    @authorized(actions.POOL_DEFINE)
    async def Define(self, xml: "s", options: "a{sv}"):
        await self.manager.redefine_pool(self.pool, xml)

    @method()
    @authorized(actions.POOL_BUILD)
    async def Build(self, options: "a{sv}"):
        overwrite = option(options, "overwrite", "b", False)
        async with running_job(self.service, jobs.POOL_BUILD, [self.path]), self.pool.lock:
            await self.pool.build(overwrite)

    @method()
    @authorized(actions.POOL_START_STOP)
    async def Start(self, options: "a{sv}"):
        interval = option(options, "lun-poll-interval", "d", DEFAULT_LUN_POLL_INTERVAL)
        if not 0 <= interval <= MAX_LUN_POLL_INTERVAL:
            raise InvalidArgument("option 'lun-poll-interval' must be 0..86400 seconds")
        async with self.pool.lock:
            self.pool.lun_poll_interval = interval
            await self.pool.start()

    @method()
    @authorized(actions.POOL_START_STOP)
    async def Destroy(self, options: "a{sv}"):
        force = option(options, "force", "b", False)
        await self.manager.destroy_pool(self.pool, force)

    @method()
    @authorized(actions.POOL_DEFINE)
    async def Undefine(self, options: "a{sv}"):
        await self.manager.undefine_pool(self.pool)

    @method()
    @authorized(actions.POOL_DELETE)
    async def Delete(self, options: "a{sv}"):
        async with self.pool.lock:
            await self.pool.delete()

    @method()
    @authorized(actions.POOL_START_STOP)
    async def Refresh(self, options: "a{sv}"):
        async with self.pool.lock:
            await self.pool.refresh()

    @method()
    @authorized(actions.POOL_START_STOP)
    async def SetAutostart(self, autostart: "b", options: "a{sv}"):
        await self.manager.set_autostart(self.pool, autostart)

    @method()
    @public
    async def GetXMLDesc(self, options: "a{sv}") -> "s":
        inactive = option(options, "inactive", "b", False)
        return format_pool_xml(self.pool.xml_definition(inactive))

    @method()
    @public
    async def ListVolumes(self, options: "a{sv}") -> "ao":
        return [volume_path(self.pool.name, name) for name in sorted(self.pool.volumes)]

    @method()
    @public
    async def LookupVolumeByName(self, name: "s", options: "a{sv}") -> "o":
        self.pool.volume(name)
        return volume_path(self.pool.name, name)

    @method()
    @authorized(actions.VOLUME_MANAGE)
    async def CreateVolume(self, xml: "s", options: "a{sv}") -> "o":
        async with self.pool.volume_lock():
            vol = await self.pool.create_volume(xml)
        return volume_path(self.pool.name, vol.name)

    @method()
    @authorized(actions.VOLUME_MANAGE)
    async def CreateVolumeFrom(self, xml: "s", source: "o", options: "a{sv}") -> "o":
        source_obj = self.service.objects.volume_at(source)
        if source_obj is None:
            raise NotFound(f"no volume at {source}")
        source_vol = source_obj.volume
        job = running_job(self.service, jobs.VOLUME_CLONE, [self.path, source])
        async with job, self.pool.lock:
            vol = await self.pool.create_volume_from(xml, source_vol)
        return volume_path(self.pool.name, vol.name)

    @method()
    @authorized(actions.POOL_BUILD)
    async def AddDevices(self, devices: "as", options: "a{sv}"):
        overwrite = option(options, "overwrite", "b", False)
        async with self.pool.lock:
            await self.pool.add_devices(list(devices), overwrite)

    @method()
    @authorized(actions.POOL_BUILD)
    async def RemoveDevice(self, device: "s", options: "a{sv}"):
        # pvmove: killed half-way it would leave a move to resume or abort by hand
        async with running_job(self.service, jobs.POOL_REMOVE_DEVICE, [self.path],
                               cancelable=False), self.pool.lock:
            await self.pool.remove_device(device)

    @signal()
    def Refreshed(self):
        return None

    @signal()
    def LunsChanged(self, added: list, removed: list) -> "aoao":
        return [added, removed]

    @property
    def path(self) -> str:
        return pool_path(self.pool.name)
