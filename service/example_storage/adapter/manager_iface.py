"""org.example.Storage.Manager at /org/example/Storage
(introspection/org.example.Storage.Manager.xml)."""

from .. import __version__
from . import actions
from .bus import method, signal
from .calls import authorized, option, public
from .paths import MANAGER_IFACE, device_path, job_path, pool_path, volume_path
from .properties import ExportedObject, with_properties


@with_properties
class ManagerInterface(ExportedObject):
    PROPERTIES = (("Version", "s"), ("SupportedPoolTypes", "as"), ("Jobs", "ao"))

    def __init__(self, service) -> None:
        super().__init__(MANAGER_IFACE, service)

    @property
    def manager(self):
        return self.service.manager

    def property_values(self) -> dict[str, object]:
        return {"Version": __version__, "SupportedPoolTypes": self.service.supported_pool_types(),
                "Jobs": self._job_paths()}

    def _job_paths(self) -> list[str]:
        return [job_path(i) for i in sorted(self.manager.jobs.jobs)]

    def jobs_changed(self) -> None:
        """A job started or ended: announce the new Jobs list."""
        self.emit_properties_changed({"Jobs": self._job_paths()})

    @method()
    @authorized(actions.POOL_DEFINE)
    async def DefinePool(self, xml: "s", options: "a{sv}") -> "o":
        pool = await self.manager.define_pool(xml)
        return pool_path(pool.name)

    @method()
    @authorized(actions.POOL_DEFINE, when_option={"build": actions.POOL_BUILD})
    async def CreatePool(self, xml: "s", options: "a{sv}") -> "o":
        build = option(options, "build", "b", False)
        overwrite = option(options, "overwrite", "b", False)
        pool = await self.manager.create_pool(xml, build=build, overwrite=overwrite)
        return pool_path(pool.name)

    @method()
    @public
    async def ListPools(self, options: "a{sv}") -> "ao":
        active = option(options, "active", "b")
        return [
            pool_path(name) for name, pool in sorted(self.manager.pools.items())
            if active is None or pool.active == active
        ]

    @method()
    @public
    async def LookupPoolByName(self, name: "s", options: "a{sv}") -> "o":
        return pool_path(self.manager.pool(name).name)

    @method()
    @public
    async def LookupPoolByUUID(self, uuid: "s", options: "a{sv}") -> "o":
        return pool_path(self.manager.pool_by_uuid(uuid).name)

    @method()
    @public
    async def LookupVolumeByPath(self, path: "s", options: "a{sv}") -> "o":
        pool, vol = self.manager.volume_by("path", path)
        return volume_path(pool.name, vol.name)

    @method()
    @public
    async def LookupVolumeByKey(self, key: "s", options: "a{sv}") -> "o":
        pool, vol = self.manager.volume_by("key", key)
        return volume_path(pool.name, vol.name)

    @method()
    @authorized(actions.POOL_DISCOVER)
    async def FindPoolSources(self, type: "s", source_xml: "s", options: "a{sv}") -> "s":
        return await self.manager.find_pool_sources(type, source_xml)

    @method()
    @authorized(actions.SECRET_SET)
    async def SetSecret(self, usage: "s", value: "ay", options: "a{sv}"):
        uuid = option(options, "uuid", "s")
        self.manager.set_secret(usage, bytes(value), uuid=uuid)

    @method()
    @public
    async def GetCapabilities(self, options: "a{sv}") -> "s":
        return self.service.capabilities_xml()

    # -- host block devices ---------------------------------------------------------
    @method()
    @public
    async def ListDevices(self, options: "a{sv}") -> "ao":
        include_hidden = option(options, "all", "b", False)
        return [device_path(d.name) for d in self.manager.devices.list(include_hidden)]

    @method()
    @public
    async def LookupDevice(self, id: "s", options: "a{sv}") -> "o":
        return device_path(self.manager.devices.lookup(id).name)

    @signal()
    def DeviceAdded(self, device: str, properties: dict) -> "oa{sv}":
        return [device, properties]

    @signal()
    def DeviceRemoved(self, device: str) -> "o":
        return device

    @signal()
    def DeviceChanged(self, device: str, changed: dict) -> "oa{sv}":
        return [device, changed]
