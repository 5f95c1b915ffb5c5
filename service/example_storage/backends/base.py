"""The one interface every pool type implements.

Core calls these coroutines with the pool's definition; a backend never keeps pool
state of its own between calls (core owns state). A backend declares which
operations it supports (``features``) and which programs it needs
(``required_tools``); a type whose tools are missing is left out of the
capabilities instead of failing at start-up.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from ..errors import NotSupported
from ..model.definitions import PoolDefinition, VolumeDefinition

# Feature names used in GetCapabilities and checked by core before calling.
FEATURES = (
    "build", "start", "stop", "delete", "refresh",
    "create_volume", "create_volume_from", "delete_volume", "resize_volume", "wipe_volume",
)


@dataclass
class PoolStats:
    capacity: int = 0
    allocation: int = 0
    available: int = 0


@dataclass
class RefreshResult:
    stats: PoolStats
    volumes: list[VolumeDefinition]


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

    async def stop(self, pool: PoolDefinition) -> None:
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

    async def wipe_volume(self, pool: PoolDefinition, vol: VolumeDefinition) -> None:
        raise self._unsupported("Wipe")

    async def volume_info(self, pool: PoolDefinition, name: str) -> VolumeDefinition:
        """Re-read one volume (after create/resize); default: a full refresh."""
        result = await self.refresh(pool)
        for v in result.volumes:
            if v.name == name:
                return v
        raise self._unsupported("volume lookup")
