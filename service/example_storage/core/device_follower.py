"""Pools follow their devices.

When a block device an active pool is built on goes away (removed, or its medium gone:
size 0, as a detached loop device), the pool becomes ``inaccessible`` (its only device)
or ``degraded`` (one of several, e.g. an LVM physical volume), with PropertiesChanged.
A pool recovers by being started again once the device is back (Pool.Start accepts an
inaccessible pool and clears what is left of the old activation first).
Kernel pools (scsi, iscsi) also follow their SCSI host's LUNs: lun_follower.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .device_lookup import same_device
from .device_model import BlockDevice
from .lun_follower import PoolLunFollower

if TYPE_CHECKING:
    from .manager import StorageManager

log = logging.getLogger(__name__)


class PoolDeviceFollower:
    """A core listener (see events.py) for the device events only."""

    def __init__(self, manager: StorageManager) -> None:
        self.manager = manager
        self.luns = PoolLunFollower(manager)

    def device_added(self, device: BlockDevice) -> None:
        self.luns.device_added(device)

    def device_removed(self, device: BlockDevice) -> None:
        self._gone(device, "was removed")
        self.luns.device_removed(device)

    def device_changed(self, device: BlockDevice) -> None:
        self.luns.device_changed(device)
        if device.size == 0:
            self._gone(device, "has no medium any more")

    def _gone(self, device: BlockDevice, how: str) -> None:
        # The event is only a trigger: a record can lag behind (a loop device attached
        # while the registry still held its empty state), so ask the kernel itself.
        now = self.manager.devices.sysfs.read(device.name)
        if now is not None and now.size > 0:
            return
        for pool in list(self.manager.pools.values()):
            if not pool.active:
                continue
            paths = [d.path for d in pool.definition.source.devices]
            if not any(p == device.path or same_device(p, device.path) for p in paths):
                continue
            log.warning("pool %s: its device %s %s", pool.name, device.path, how)
            pool.mark_lost_device(device.path, remaining=len(paths) - 1)
