"""Pool type 'iscsi-direct': one iSCSI target's LUNs, reached by the userspace
initiator libiscsi (no kernel iSCSI support, no block devices).

Source: ``<host name= port=/>`` (the portal), ``<device path='TARGET-IQN'/>``,
``<initiator><iqn name=.../></initiator>`` and optionally
``<auth type='chap' username=...><secret usage=...|uuid=.../></auth>``; the secret is
resolved through core's secret store (``secret_lookup``, set by core) and handed to
libiscsi only through the environment.

Volumes are the target's disk LUNs, named 'unit:0:0:N' as libvirt does; Key = the
LU's WWN (VPD 0x83 NAA designator, hex), serial = its unit serial (VPD 0x80),
capacity = READ CAPACITY 16, type 'network', path = the LUN's iscsi:// URL (no
credentials in it). Volume creation, deletion and resize belong to the target's
administrator: not supported here. Wipe zeroes the LUN (WRITE SAME 16, with UNMAP where
the LU reads unmapped blocks as zeroes, else WRITE 16; "random": random bytes);
Upload/Download stream between the caller's descriptor and the LUN; all three through
the libiscsi child process of system/iscsi_transfer.py, with progress reported to the
running job.

FindPoolSources with a hint that names a target (``<device path='IQN'/>``) lists that
target's LUNs as ``<lun number= size= wwn= serial=/>`` children of its ``<device>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import InvalidArgument, NotSupported
from ..model.definitions import (
    PoolDefinition,
    PoolSource,
    SourceAuth,
    SourceDevice,
    SourceHost,
    SourceLun,
    VolumeDefinition,
)
from ..progress import reporter
from ..system import iscsi, iscsi_transfer
from .base import Backend, PoolStats, RefreshResult

_VOLUME_NAME = re.compile(r"unit:0:0:([0-9]{1,5})")


def volume_name(lun: int) -> str:
    return f"unit:0:0:{lun}"


def lun_number(name: str) -> int:
    """The LUN number of a volume named 'unit:0:0:N'."""
    m = _VOLUME_NAME.fullmatch(name or "")
    if not m:
        raise InvalidArgument(f"'{(name or '')[:64]}' is not an iSCSI LUN volume name")
    return int(m.group(1))


def check_transfer_range(capacity: int, offset: int, length: int) -> int:
    """Bytes to move for [offset, offset+length) of a LUN of ``capacity`` bytes (length 0:
    to the end); InvalidArgument for a range past the LUN's end."""
    if offset < 0 or length < 0:
        raise InvalidArgument("offset and length must not be negative")
    if offset > capacity:
        raise InvalidArgument(f"offset {offset} is past the end of the LUN "
                              f"({capacity} bytes)")
    count = length or capacity - offset
    if offset + count > capacity:
        raise InvalidArgument(f"{count} bytes at offset {offset} do not fit into the LUN "
                              f"({capacity} bytes); nothing was written")
    return count


class IscsiDirectBackend(Backend):
    type_name = "iscsi-direct"
    required_tools = (iscsi.ISCSI_LS,)
    features = frozenset({"start", "stop", "refresh", "find_sources", "wipe_volume",
                          "upload_volume", "download_volume"})
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

    def _address(self, pool: PoolDefinition, vol: VolumeDefinition
                 ) -> iscsi_transfer.LunAddress:
        src = pool.source
        return iscsi_transfer.LunAddress(
            portal=self._portal(src), target=self._target(pool), lun=lun_number(vol.name),
            creds=self._credentials(src.auth),
            initiator=src.initiator_iqn or iscsi.DEFAULT_INITIATOR,
        )

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
                path=iscsi.iscsi_url(portal, target, lun.number), serial=lun.serial or None,
            )
            for lun in luns
        ]
        total = sum(lun.size for lun in luns)
        return RefreshResult(PoolStats(capacity=total, allocation=total, available=0), volumes)

    # -- volume data ------------------------------------------------------------
    async def wipe_volume(self, pool: PoolDefinition, vol: VolumeDefinition,
                          algorithm: str = "zero") -> None:
        """"zero": WRITE SAME (UNMAP where the LU then reads zeroes); "random": random
        bytes written over every block."""
        if algorithm not in ("zero", "random"):
            raise NotSupported(f"wipe algorithm '{algorithm[:64]}' is not supported for "
                               "iSCSI LUNs (supported: zero, random)")
        await iscsi_transfer.wipe_lun(self._address(pool, vol), progress=reporter(),
                                      random=algorithm == "random")

    async def upload_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                            offset: int, length: int) -> int:
        check_transfer_range(vol.capacity or 0, offset, length)   # length 0: offset only
        return await iscsi_transfer.write_lun(self._address(pool, vol), fd, offset, length,
                                              progress=reporter())

    async def download_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                              offset: int, length: int) -> int:
        check_transfer_range(vol.capacity or 0, offset, length)
        return await iscsi_transfer.read_lun(self._address(pool, vol), fd, offset, length,
                                             progress=reporter())

    # -- discovery --------------------------------------------------------------
    async def find_sources(self, hint: PoolSource | None) -> list[PoolSource]:
        """The portal's targets; with a target named (<device path='IQN'/>), that target
        alone, its LUNs (size, WWN, serial) as <lun/> children of its <device>."""
        if hint is None or not hint.hosts:
            raise InvalidArgument(
                "iSCSI discovery needs a hint: <source><host name='...' port='...'/></source>")
        host = hint.hosts[0]
        portal = iscsi.portal_of(host.name, host.port)
        creds = self._credentials(hint.auth) if hint.auth else None
        if hint.devices:
            return [await self._target_source(hint, portal, creds)]
        targets = await iscsi.discover(
            portal, creds, initiator=hint.initiator_iqn or iscsi.DEFAULT_INITIATOR)
        return [
            PoolSource(hosts=[SourceHost(host.name, host.port)],
                       devices=[SourceDevice(t.iqn)])
            for t in targets
        ]

    async def _target_source(self, hint: PoolSource, portal: str,
                             creds: iscsi.Credentials | None) -> PoolSource:
        if len(hint.devices) > 1:
            raise InvalidArgument("name one target (<device path='IQN'/>) per discovery")
        target = iscsi.validate_iqn(hint.devices[0].path)
        luns = await iscsi.target_luns(
            portal, target, creds, initiator=hint.initiator_iqn or iscsi.DEFAULT_INITIATOR)
        host = hint.hosts[0]
        device = SourceDevice(target, luns=[
            SourceLun(lun.number, lun.size, lun.wwn, lun.serial) for lun in luns])
        return PoolSource(hosts=[SourceHost(host.name, host.port)], devices=[device])
