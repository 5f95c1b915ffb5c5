"""Which backend serves which pool type, and what each can do on this host.

The backend modules are imported on first use (a pool of that type, or the
capabilities), not when the daemon starts: most hosts use one or two pool types.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument, NotSupported
from ..model.definitions import POOL_TYPES, PoolDefinition, VolumeDefinition
from .base import Backend, RefreshResult


class DefinitionOnlyBackend(Backend):
    """A pool type whose XML the service accepts but cannot operate yet."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"pool type '{self.type_name}' is not supported by this service yet")

    def usable(self) -> bool:
        return False

    async def is_active(self, pool: PoolDefinition) -> bool:
        return False

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        raise self._unsupported("Refresh")

    async def volume_info(self, pool: PoolDefinition, name: str) -> VolumeDefinition:
        raise self._unsupported("volume lookup")


def _make(pool_type: str) -> Backend:
    """The backend of ``pool_type``, its module imported now."""
    if pool_type == "dir":
        from .dir import DirBackend
        return DirBackend()
    if pool_type == "fs":
        from .fs import FsBackend
        return FsBackend()
    if pool_type == "netfs":
        from .netfs import NetfsBackend
        return NetfsBackend()
    if pool_type == "disk":
        from .disk import DiskBackend
        return DiskBackend()
    if pool_type == "logical":
        from .logical import LogicalBackend
        return LogicalBackend()
    if pool_type == "iscsi-direct":
        from .iscsi_direct import IscsiDirectBackend
        return IscsiDirectBackend()
    if pool_type == "iscsi":   # kernel initiator; discovers like iscsi-direct (one instance)
        from .iscsi import IscsiBackend
        return IscsiBackend(backend_for("iscsi-direct"))
    if pool_type == "scsi":
        from .scsi import ScsiBackend
        return ScsiBackend()
    return DefinitionOnlyBackend(pool_type)


_BACKENDS: dict[str, Backend] = {}


def all_backends() -> dict[str, Backend]:
    return {t: backend_for(t) for t in POOL_TYPES}


def backend_for(pool_type: str) -> Backend:
    backend = _BACKENDS.get(pool_type)
    if backend is not None:
        return backend
    if pool_type not in POOL_TYPES:
        raise InvalidArgument(
            f"unknown pool type '{pool_type}' (known: {', '.join(POOL_TYPES)})"
        )
    backend = _BACKENDS[pool_type] = _make(pool_type)
    return backend


def capabilities() -> dict[str, dict[str, Any]]:
    """Per pool type: implemented, usable (tools present), missing tools, features,
    pool formats, volume formats (those usable now)."""
    caps: dict[str, dict[str, Any]] = {}
    for name, backend in all_backends().items():
        implemented = not isinstance(backend, DefinitionOnlyBackend)
        missing = backend.missing_tools()
        missing_optional_fn = getattr(backend, "missing_optional_tools", None)
        formats_fn = getattr(backend, "available_volume_formats", None)
        caps[name] = {
            "implemented": implemented,
            "usable": implemented and not missing,
            "missing_tools": missing,
            "missing_optional_tools": missing_optional_fn() if missing_optional_fn else [],
            "features": sorted(backend.features),
            "pool_formats": list(backend.pool_formats),
            "volume_formats": list(formats_fn() if formats_fn else backend.volume_formats),
        }
    return caps
