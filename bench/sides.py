"""The same operations on both services, over the same client code (bench/common.py).

``OurSide``: org.example.Storage (Manager.CreatePool, Pool.CreateVolume / CreateVolumeFrom /
Refresh, Volume.Delete, ObjectManager.GetManagedObjects).
``LibvirtSide``: libvirt-dbus (Connect.StoragePoolCreateXML, StoragePool.StorageVolCreateXML /
StorageVolCreateXMLFrom / Refresh / ListStorageVolumes, StorageVol.Delete, Properties.GetAll).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Client, bounded

# libvirt's virStorageVolCreateFlags
VIR_STORAGE_VOL_CREATE_REFLINK = 2


def volume_xml(name: str, capacity: int, allocation: int = 0) -> str:
    """A raw file volume, sparse (allocation 0): the same document for both services."""
    return (f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"<allocation unit='bytes'>{allocation}</allocation>"
            "<target><format type='raw'/></target></volume>")


def dir_pool_xml(name: str, target: Path) -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>"


class OurSide:
    label = "org.example.Storage"
    MANAGER_PATH = "/org/example/Storage"
    MANAGER = "org.example.Storage.Manager"
    POOL = "org.example.Storage.Pool"
    VOLUME = "org.example.Storage.Volume"
    OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
    listing_method = "ObjectManager.GetManagedObjects (one call)"

    def __init__(self, client: Client) -> None:
        self.c = client

    async def create_pool(self, name: str, target: Path) -> str:
        target.mkdir(parents=True, exist_ok=True)
        (pool,) = await self.c.call(self.MANAGER_PATH, self.MANAGER, "CreatePool", "sa{sv}",
                                    [dir_pool_xml(name, target), {}])
        return pool

    async def destroy_pool(self, pool: str) -> None:
        await self.c.call(pool, self.POOL, "Destroy", "a{sv}", [{}])

    async def create_volume(self, pool: str, name: str, capacity: int) -> str:
        (vol,) = await self.c.call(pool, self.POOL, "CreateVolume", "sa{sv}",
                                   [volume_xml(name, capacity), {}])
        return vol

    async def delete_volume(self, vol: str) -> None:
        await self.c.call(vol, self.VOLUME, "Delete", "a{sv}", [{}])

    async def volume_path(self, vol: str) -> Path:
        return Path(await self.c.get(vol, self.VOLUME, "Path"))

    async def get_name(self, vol: str) -> Any:
        return await self.c.get(vol, self.VOLUME, "Name")

    async def ping(self) -> None:
        await self.c.ping()

    async def refresh(self, pool: str) -> None:
        await self.c.call(pool, self.POOL, "Refresh", "a{sv}", [{}], timeout=600)

    async def list_all(self, pool: str, inflight: int, info: bool = False) -> int:
        """Every object with all its properties in one call; returns the pool's volume
        count (checked by the caller)."""
        (objects,) = await self.c.call(self.MANAGER_PATH, self.OBJECT_MANAGER,
                                       "GetManagedObjects", timeout=600)
        prefix = pool + "/volumes/"
        return sum(1 for path in objects if path.startswith(prefix))

    async def clone(self, pool: str, source: str, name: str, capacity: int,
                    flags: int = 0) -> str:
        (vol,) = await self.c.call(pool, self.POOL, "CreateVolumeFrom", "soa{sv}",
                                   [volume_xml(name, capacity), source, {}], timeout=600)
        return vol

    async def define_autostart_pool(self, name: str, target: Path) -> str:
        (pool,) = await self.c.call(self.MANAGER_PATH, self.MANAGER, "DefinePool", "sa{sv}",
                                    [dir_pool_xml(name, target), {}])
        await self.c.call(pool, self.POOL, "Start", "a{sv}", [{}], timeout=600)
        await self.c.call(pool, self.POOL, "SetAutostart", "ba{sv}", [True, {}])
        return pool

    async def volume_count(self, pool: str) -> int:
        (vols,) = await self.c.call(pool, self.POOL, "ListVolumes", "a{sv}", [{}], timeout=600)
        return len(vols)


class LibvirtSide:
    label = "libvirt-dbus"
    CONNECT_PATH = "/org/libvirt/QEMU"
    CONNECT = "org.libvirt.Connect"
    POOL = "org.libvirt.StoragePool"
    VOLUME = "org.libvirt.StorageVol"
    listing_method = ("StoragePool.ListStorageVolumes + Properties.GetAll(StorageVol) per "
                      "volume (Name, Key, Path)")
    listing_method_info = "... + StorageVol.GetInfo per volume (type, capacity, allocation)"

    def __init__(self, client: Client) -> None:
        self.c = client

    async def create_pool(self, name: str, target: Path) -> str:
        target.mkdir(parents=True, exist_ok=True)
        (pool,) = await self.c.call(self.CONNECT_PATH, self.CONNECT, "StoragePoolCreateXML",
                                    "su", [dir_pool_xml(name, target), 0])
        return pool

    async def destroy_pool(self, pool: str) -> None:
        await self.c.call(pool, self.POOL, "Destroy")

    async def create_volume(self, pool: str, name: str, capacity: int) -> str:
        (vol,) = await self.c.call(pool, self.POOL, "StorageVolCreateXML", "su",
                                   [volume_xml(name, capacity), 0])
        return vol

    async def delete_volume(self, vol: str) -> None:
        await self.c.call(vol, self.VOLUME, "Delete", "u", [0])

    async def volume_path(self, vol: str) -> Path:
        return Path(await self.c.get(vol, self.VOLUME, "Path"))

    async def get_name(self, vol: str) -> Any:
        return await self.c.get(vol, self.VOLUME, "Name")

    async def ping(self) -> None:
        await self.c.ping()

    async def refresh(self, pool: str) -> None:
        await self.c.call(pool, self.POOL, "Refresh", "u", [0], timeout=600)

    async def list_all(self, pool: str, inflight: int, info: bool = False) -> int:
        """The volume list, then the properties of each (``inflight`` calls at a time);
        with ``info`` also GetInfo (capacity and allocation are not properties here)."""
        (vols,) = await self.c.call(pool, self.POOL, "ListStorageVolumes", "u", [0],
                                    timeout=600)

        async def one(vol: str) -> None:
            await self.c.get_all(vol, self.VOLUME)
            if info:
                await self.c.call(vol, self.VOLUME, "GetInfo", "u", [0])

        await bounded(vols, one, inflight)
        return len(vols)

    async def clone(self, pool: str, source: str, name: str, capacity: int,
                    flags: int = 0) -> str:
        key = await self.c.get(source, self.VOLUME, "Key")
        (vol,) = await self.c.call(pool, self.POOL, "StorageVolCreateXMLFrom", "ssu",
                                   [volume_xml(name, capacity), key, flags], timeout=600)
        return vol
