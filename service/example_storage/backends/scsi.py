"""Pool type 'scsi': the LUNs of one SCSI host (an HBA, an iSCSI session's host,
scsi_debug) as volumes.

Source: ``<adapter type='scsi_host' name='host3'/>`` (libvirt's legacy ``<adapter
name='host3'/>`` too), ``<adapter type='scsi_host'><parentaddr unique_id='N'><address
domain= bus= slot= function=/></parentaddr></adapter>`` (the host on that PCI device with
that unique_id: a name that survives reboots) or ``<adapter type='fc_host' wwnn= wwpn=
[parent=|parent_wwnn= parent_wwpn=|parent_fabric_wwn=]/>`` (the FC port with those WWNs;
the parent attributes, when given, must match the vHBA's parent). Creating and deleting
vHBAs (``vport_create``/``vport_delete``, libvirt's managed fc_host) is not done here:
an fc_host that does not exist is NotSupported, with the reason.

Volumes are the host's disk and CD/DVD LUNs that have a block device, named
'unit:BUS:TARGET:LUN' as libvirt names them; Key = the LU's WWN (VPD 0x83 NAA or EUI-64
designator, lower-case hex, as iscsi-direct pools key the same LUN), else its serial,
else its node; path = a link to the node in the pool's target directory when the target
is a /dev/disk/by-* directory holding one (udevd's stable names), else the kernel's node
/dev/sdX (machines without udevd have no /dev/disk). Refresh rescans the host first
(libvirt does the same); between refreshes core follows the host's block devices
through uevents (core/lun_follower.py) and announces LUNs that come and go.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..errors import Failed, InvalidArgument, NotFound, NotSupported, StorageError, TimedOut
from ..model.definitions import PoolDefinition, SourceAdapter, VolumeDefinition
from ..system.scsi_host import (
    VOLUME_TYPES,
    ScsiHost,
    ScsiLun,
    ScsiSysfs,
    format_pci_address,
    normalize_wwn,
    parse_host_name,
    stable_link,
)
from .base import Backend, PoolDevice, PoolStats, RefreshResult

log = logging.getLogger(__name__)

RESCAN_TIMEOUT = 120.0


def volume_path(target_dir: str | None, node: str) -> str:
    """Where a LUN's volume points: a stable link in the pool's target directory (a
    /dev/disk/by-* dir) when there is one, else the kernel's node."""
    if target_dir and target_dir.startswith("/dev/") and os.path.normpath(target_dir) != "/dev":
        link = stable_link(target_dir, node)
        if link:
            return link
    return node


def lun_refresh_result(luns: list[ScsiLun], target_dir: str | None) -> RefreshResult:
    """The volumes (and pool devices) a host's LUNs make."""
    volumes: list[VolumeDefinition] = []
    devices: list[PoolDevice] = []
    for lun in luns:
        if lun.device_type not in VOLUME_TYPES or not lun.block:
            continue
        volumes.append(VolumeDefinition(
            name=lun.volume_name, type="block",
            key=lun.wwn or (f"serial:{lun.serial}" if lun.serial else lun.node),
            capacity=lun.size, allocation=lun.size, physical=lun.size,
            path=volume_path(target_dir, lun.node), serial=lun.serial or None,
        ))
        devices.append(PoolDevice(path=lun.node, size=lun.size))
    total = sum(v.capacity or 0 for v in volumes)
    return RefreshResult(PoolStats(capacity=total, allocation=total, available=0), volumes,
                         devices=devices)


async def rescan_host(sysfs: ScsiSysfs, host: str, timeout: float = RESCAN_TIMEOUT) -> None:
    """Scan all of ``host`` for new LUNs (a blocking sysfs write, run in a thread)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(sysfs.rescan, host), timeout)
    except TimeoutError:
        raise TimedOut(f"the rescan of SCSI host {host} took longer than {timeout:g}s") from None
    except FileNotFoundError:
        raise NotFound(f"SCSI host {host} does not exist (any more)") from None
    except OSError as e:
        raise Failed(f"cannot rescan SCSI host {host}: {e.strerror or e}") from None


class ScsiBackend(Backend):
    type_name = "scsi"
    features = frozenset({"start", "stop", "refresh"})
    default_volume_type = "block"
    lun_volumes = True      # core announces LunsChanged and follows the host's uevents

    def __init__(self, sysfs: ScsiSysfs | None = None) -> None:
        self.sysfs = sysfs or ScsiSysfs()

    # -- the adapter ----------------------------------------------------------------
    def find_host(self, pool: PoolDefinition) -> ScsiHost:
        """The SCSI host the pool's adapter names; NotFound / NotSupported / InvalidArgument
        with the reason when there is none."""
        adapter = pool.source.adapter
        if adapter is None or adapter.type is None:
            raise InvalidArgument("a scsi pool needs a source <adapter>")
        if adapter.type == "scsi_host":
            return self._scsi_host(adapter)
        if adapter.type == "fc_host":
            return self._fc_host(adapter)
        raise InvalidArgument(f"unknown adapter type '{adapter.type[:64]}'")

    def lun_host(self, pool: PoolDefinition) -> int | None:
        """The SCSI host number whose LUNs are the pool's volumes (None: none now)."""
        try:
            return self.find_host(pool).number
        except StorageError:
            return None

    def _scsi_host(self, adapter: SourceAdapter) -> ScsiHost:
        if adapter.name is not None:
            if parse_host_name(adapter.name) is None:
                raise InvalidArgument(
                    f"invalid SCSI host name '{adapter.name[:64]}' (expected 'hostN')")
            host = self.sysfs.host(adapter.name)
            if host is None:
                known = ", ".join(self.sysfs.host_names()) or "none"
                raise NotFound(f"SCSI host '{adapter.name}' does not exist "
                               f"(SCSI hosts here: {known})")
            return host
        if not adapter.parent_addr:
            raise InvalidArgument("a 'scsi_host' adapter needs a name or a <parentaddr>")
        try:
            pci = format_pci_address(adapter.parent_addr)
            unique_id = int(adapter.parent_addr.get("unique_id", ""))
        except ValueError:
            raise InvalidArgument("invalid <parentaddr> of the scsi_host adapter") from None
        host = self.sysfs.find_by_parentaddr(pci, unique_id)
        if host is None:
            raise NotFound(f"no SCSI host with unique_id {unique_id} on PCI device {pci}")
        return host

    def _fc_host(self, adapter: SourceAdapter) -> ScsiHost:
        wwnn, wwpn = normalize_wwn(adapter.wwnn or ""), normalize_wwn(adapter.wwpn or "")
        if not wwnn or not wwpn:
            raise InvalidArgument(
                "an fc_host adapter needs 'wwnn' and 'wwpn' of 16 hex digits each")
        host = self.sysfs.find_fc_host(wwnn, wwpn)
        if host is None or host.fc is None:
            raise NotSupported(
                f"no fc_host with wwnn {wwnn} and wwpn {wwpn} exists, and this service does "
                "not create vHBAs (vport_create): create the vport on its parent HBA first")
        fc = host.fc
        if adapter.parent is not None:
            wanted = parse_host_name(adapter.parent)
            if wanted is None:
                raise InvalidArgument(
                    f"invalid fc_host parent '{adapter.parent[:64]}' (expected 'hostN')")
            if fc.parent != f"host{wanted}":
                raise InvalidArgument(
                    f"fc_host parent '{adapter.parent}' does not match the parent of "
                    f"{host.name} (wwnn {wwnn}, wwpn {wwpn}): "
                    f"{fc.parent or 'none, it is a physical HBA'}")
        if adapter.parent_wwnn or adapter.parent_wwpn or adapter.parent_fabric_wwn:
            parent = self.sysfs.host(fc.parent) if fc.parent else None
            pfc = parent.fc if parent is not None else None
            if pfc is None:
                raise InvalidArgument(
                    f"{host.name} (wwnn {wwnn}, wwpn {wwpn}) has no FC parent to match "
                    "parent_wwnn/parent_wwpn/parent_fabric_wwn against")
            if adapter.parent_wwnn and (
                    normalize_wwn(adapter.parent_wwnn), normalize_wwn(adapter.parent_wwpn or "")
            ) != (pfc.node_name, pfc.port_name):
                raise InvalidArgument(
                    f"the parent of {host.name} is {fc.parent} (wwnn {pfc.node_name}, wwpn "
                    f"{pfc.port_name}), not the parent_wwnn/parent_wwpn given")
            if adapter.parent_fabric_wwn and \
                    normalize_wwn(adapter.parent_fabric_wwn) != pfc.fabric_name:
                raise InvalidArgument(
                    f"the parent of {host.name} is on fabric {pfc.fabric_name or 'unknown'}, "
                    "not the parent_fabric_wwn given")
        return host

    # -- pool -------------------------------------------------------------------------
    async def is_active(self, pool: PoolDefinition) -> bool:
        return self.lun_host(pool) is not None

    async def start(self, pool: PoolDefinition) -> None:
        host = self.find_host(pool)
        log.info("scsi pool %s: adapter is %s (%s)", pool.name, host.name,
                 host.proc_name or "unknown driver")

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        """Nothing to undo: the host stays as it is (vHBAs are never created here)."""

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        host = self.find_host(pool)
        await rescan_host(self.sysfs, host.name)
        return await self.relist(pool)

    async def relist(self, pool: PoolDefinition) -> RefreshResult:
        """The volumes as the host's LUNs are now, without a rescan (after uevents)."""
        host = self.find_host(pool)
        target = pool.target.path if pool.target else None
        return lun_refresh_result(self.sysfs.luns(host.number), target)
