"""The one interface every pool type implements.

Core calls these coroutines with the pool's definition; a backend never keeps pool
state of its own between calls (core owns state). A backend declares which
operations it supports (``features``) and which programs it needs
(``required_tools``); a type whose tools are missing is left out of the
capabilities instead of failing at start-up.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from ..errors import NotSupported
from ..model.definitions import PoolDefinition, PoolSource, VolumeDefinition

# Feature names used in GetCapabilities and checked by core before calling.
FEATURES = (
    "build", "start", "stop", "delete", "refresh",
    "create_volume", "create_volume_from", "delete_volume", "resize_volume", "wipe_volume",
    "snapshot_volume", "find_sources", "add_devices", "remove_device",
    "upload_volume", "download_volume",
)


@dataclass
class PoolStats:
    capacity: int = 0
    allocation: int = 0
    available: int = 0


@dataclass
class PoolDevice:
    """A device the pool is built on (an LVM physical volume, a disk), as refreshed."""

    path: str
    uuid: str = ""
    size: int = 0
    free: int = 0


@dataclass
class RefreshResult:
    stats: PoolStats
    volumes: list[VolumeDefinition]
    # What the storage says about the pool's source now, shown by GetXMLDesc of an
    # active pool (a disk pool's free extents, a VG's physical volumes); None: as defined.
    source: PoolSource | None = None
    devices: list[PoolDevice] = field(default_factory=list)


class Backend:
    """Base class: every operation raises NotSupported unless a subclass provides it."""

    type_name: str = ""
    required_tools: tuple[str, ...] = ()
    features: frozenset[str] = frozenset()
    volume_formats: tuple[str, ...] = ()
    pool_formats: tuple[str, ...] = ()
    default_volume_format: str | None = None
    default_volume_type: str = "file"

    def missing_tools(self) -> list[str]:
        return [t for t in self.required_tools if shutil.which(t) is None]

    def usable(self) -> bool:
        return not self.missing_tools()

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"pool type '{self.type_name}' does not support {what}")

    # -- pool ---------------------------------------------------------------
    async def is_active(self, pool: PoolDefinition) -> bool:
        """True when the pool's storage is really usable now (after a restart, say)."""
        return False

    async def build(self, pool: PoolDefinition, overwrite: bool) -> None:
        raise self._unsupported("Build")

    async def start(self, pool: PoolDefinition) -> None:
        raise self._unsupported("Start")

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        """Deactivate; ``force`` (Destroy's option): unmount even a busy or dead mount."""
        raise self._unsupported("Destroy")

    async def delete(self, pool: PoolDefinition) -> None:
        raise self._unsupported("Delete")

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        raise self._unsupported("Refresh")

    async def stats(self, pool: PoolDefinition) -> PoolStats:
        """Capacity figures only (after a volume change); default: a full refresh."""
        return (await self.refresh(pool)).stats

    # -- volumes ------------------------------------------------------------
    async def create_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition
    ) -> VolumeDefinition:
        raise self._unsupported("CreateVolume")

    async def create_volume_from(
        self, pool: PoolDefinition, vol: VolumeDefinition, source: VolumeDefinition
    ) -> VolumeDefinition:
        raise self._unsupported("CreateVolumeFrom")

    async def delete_volume(self, pool: PoolDefinition, vol: VolumeDefinition) -> None:
        raise self._unsupported("volume Delete")

    async def resize_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition, capacity: int, shrink: bool
    ) -> VolumeDefinition:
        raise self._unsupported("Resize")

    async def wipe_volume(self, pool: PoolDefinition, vol: VolumeDefinition,
                          algorithm: str = "zero") -> None:
        """Make the volume read as zeroes ("zero": any fast way, discard included), or
        write every byte with another of ``overwrite.ALGORITHMS`` (checked by core)."""
        raise self._unsupported("Wipe")

    async def snapshot_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition, name: str, size: int
    ) -> VolumeDefinition:
        raise self._unsupported("Snapshot")

    async def upload_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition, fd: int, offset: int, length: int
    ) -> int:
        """Write ``length`` bytes read from ``fd`` (0: until ``fd`` ends) into the volume
        at ``offset``; returns the bytes written. The caller owns ``fd`` (never closed
        here). Data past the volume's capacity is refused, not written."""
        raise self._unsupported("Upload")

    async def download_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition, fd: int, offset: int, length: int
    ) -> int:
        """Write the volume's bytes from ``offset`` (``length``; 0: to the end) into
        ``fd``; returns the bytes sent. Holes stay holes where ``fd`` is a seekable file.
        The caller owns ``fd``."""
        raise self._unsupported("Download")

    # -- sources and devices ------------------------------------------------
    async def find_sources(self, hint: PoolSource | None) -> list[PoolSource]:
        """What storage of this type the host (or the hinted server) offers."""
        raise self._unsupported("FindPoolSources")

    async def add_devices(self, pool: PoolDefinition, devices: list[str], overwrite: bool
                          ) -> None:
        """Grow the pool onto more devices (an LVM VG: pvcreate + vgextend)."""
        raise self._unsupported("AddDevices")

    async def remove_device(self, pool: PoolDefinition, device: str) -> None:
        """Take a device out of the pool, moving its data off first where possible."""
        raise self._unsupported("RemoveDevice")

    async def volume_info(self, pool: PoolDefinition, name: str) -> VolumeDefinition:
        """Re-read one volume (after create/resize); default: a full refresh."""
        result = await self.refresh(pool)
        for v in result.volumes:
            if v.name == name:
                return v
        raise self._unsupported("volume lookup")
