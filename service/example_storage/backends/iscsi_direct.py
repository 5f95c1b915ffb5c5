"""Pool type 'iscsi-direct': one iSCSI target's LUNs, reached by the userspace
initiator libiscsi (no kernel iSCSI support, no block devices).

Source: ``<host name= port=/>`` (the portal), ``<device path='TARGET-IQN'/>``,
``<initiator><iqn name=.../></initiator>`` and optionally
``<auth type='chap' username=...><secret usage=...|uuid=.../></auth>``; the secret is
resolved through core's secret store (``secret_lookup``, set by core) and handed to
libiscsi only through the environment.

Volumes are the target's disk LUNs, named 'unit:0:0:N' as libvirt does; Key = the
LU's WWN (VPD 0x83 NAA designator, hex), capacity = READ CAPACITY 16, type
'network', path = the LUN's iscsi:// URL (no credentials in it). Volume creation,
deletion and resize belong to the target's administrator: not supported here, nor
Wipe (libiscsi-bin has no tool that writes a LUN).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidArgument
from ..model.definitions import (
    PoolDefinition,
    PoolSource,
    SourceAuth,
    SourceDevice,
    SourceHost,
    VolumeDefinition,
)
from ..system import iscsi
from .base import Backend, PoolStats, RefreshResult


def volume_name(lun: int) -> str:
    return f"unit:0:0:{lun}"


class IscsiDirectBackend(Backend):
    type_name = "iscsi-direct"
    required_tools = (iscsi.ISCSI_LS,)
    features = frozenset({"start", "stop", "refresh", "find_sources"})
    default_volume_type = "network"
    polls_luns = True     # core re-lists the LUNs periodically (Pool.LunsChanged)

    def __init__(self) -> None:
        # set by core: resolves a pool's <auth> to the secret's bytes (core/secrets.py)
        self.secret_lookup: Callable[[SourceAuth], bytes] | None = None

    # -- helpers --------------------------------------------------------------
    def _portal(self, src: PoolSource) -> str:
        if not src.hosts:
            raise InvalidArgument("an iscsi-direct pool needs a source <host>")
        host = src.hosts[0]
        return iscsi.portal_of(host.name, host.port)

    def _credentials(self, auth: SourceAuth | None) -> iscsi.Credentials | None:
        if auth is None:
            return None
        if auth.type != "chap":
            raise InvalidArgument(f"iSCSI supports only CHAP authentication, not '{auth.type}'")
        if self.secret_lookup is None:
            raise InvalidArgument("no secret store is available for CHAP")
        return iscsi.Credentials(auth.username, self.secret_lookup(auth))

    def _target(self, pool: PoolDefinition) -> str:
        if not pool.source.devices:
            raise InvalidArgument("an iscsi-direct pool needs <device path='TARGET-IQN'/>")
        return iscsi.validate_iqn(pool.source.devices[0].path)

    async def _luns(self, pool: PoolDefinition) -> list[iscsi.Lun]:
        src = pool.source
        return await iscsi.target_luns(
            self._portal(src), self._target(pool), self._credentials(src.auth),
            initiator=src.initiator_iqn or iscsi.DEFAULT_INITIATOR,
        )

    # -- pool -------------------------------------------------------------------
    async def is_active(self, pool: PoolDefinition) -> bool:
        try:
            await self._luns(pool)
        except Exception:  # noqa: BLE001 - unreachable or refused: not active
            return False
        return True

    async def start(self, pool: PoolDefinition) -> None:
        await self._luns(pool)      # the login check: raises AuthFailed / Failed

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        """Nothing stays logged in between calls: nothing to undo."""

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        portal = self._portal(pool.source)
        target = self._target(pool)
        luns = await self._luns(pool)
        volumes = [
            VolumeDefinition(
                name=volume_name(lun.number), type="network",
                key=lun.wwn or f"{target}:lun-{lun.number}",
                capacity=lun.size, allocation=lun.size, physical=lun.size,
                path=iscsi.iscsi_url(portal, target, lun.number),
            )
            for lun in luns
        ]
        total = sum(lun.size for lun in luns)
        return RefreshResult(PoolStats(capacity=total, allocation=total, available=0), volumes)

    # -- discovery --------------------------------------------------------------
    async def find_sources(self, hint: PoolSource | None) -> list[PoolSource]:
        if hint is None or not hint.hosts:
            raise InvalidArgument(
                "iSCSI discovery needs a hint: <source><host name='...' port='...'/></source>")
        host = hint.hosts[0]
        portal = iscsi.portal_of(host.name, host.port)
        creds = self._credentials(hint.auth) if hint.auth else None
        targets = await iscsi.discover(
            portal, creds, initiator=hint.initiator_iqn or iscsi.DEFAULT_INITIATOR)
        return [
            PoolSource(hosts=[SourceHost(host.name, host.port)],
                       devices=[SourceDevice(t.iqn)])
            for t in targets
        ]
