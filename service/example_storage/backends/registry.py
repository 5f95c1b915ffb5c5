"""Which backend serves which pool type, and what each can do on this host."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument, NotSupported
from ..model.definitions import POOL_TYPES, PoolDefinition, VolumeDefinition
from .base import Backend, RefreshResult
from .dir import DirBackend
from .disk import DiskBackend
from .fs import FsBackend
from .iscsi import IscsiBackend
from .iscsi_direct import IscsiDirectBackend
from .logical import LogicalBackend
from .netfs import NetfsBackend
from .scsi import ScsiBackend


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


def _build() -> dict[str, Backend]:
    real: dict[str, Backend] = {"dir": DirBackend(), "fs": FsBackend()}
    real["disk"] = DiskBackend()
    real["logical"] = LogicalBackend()
    direct = IscsiDirectBackend()
    real["iscsi-direct"] = direct
    real["iscsi"] = IscsiBackend(direct)     # kernel initiator; discovers like iscsi-direct
    real["scsi"] = ScsiBackend()
    real["netfs"] = NetfsBackend()
    return {t: real.get(t) or DefinitionOnlyBackend(t) for t in POOL_TYPES}


_BACKENDS: dict[str, Backend] = _build()


def all_backends() -> dict[str, Backend]:
    return dict(_BACKENDS)


def backend_for(pool_type: str) -> Backend:
    try:
        return _BACKENDS[pool_type]
    except KeyError:
        raise InvalidArgument(
            f"unknown pool type '{pool_type}' (known: {', '.join(POOL_TYPES)})"
        ) from None


def capabilities() -> dict[str, dict[str, Any]]:
    """Per pool type: implemented, usable (tools present), missing tools, features,
    pool formats, volume formats (those usable now)."""
    caps: dict[str, dict[str, Any]] = {}
    for name, backend in _BACKENDS.items():
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
