"""Kernel pools follow their SCSI host's LUNs: Pool.LunsChanged without a Refresh.

A running 'scsi' or 'iscsi' pool lists the LUNs of one SCSI host (its backend's
``lun_host(definition)``). When a block device of that host appears, goes away or
changes (a rescan found a LUN, a LUN was deleted, a LUN was resized), the pool re-lists
its volumes from sysfs without a rescan (``StoragePool.relist_luns``), under its lock;
the volumes that came and went are announced (ObjectManager signals), then
Pool.LunsChanged. When the pool's host itself is gone (an HBA removed, a session logged
out behind the service's back), the pool becomes inaccessible, as pools whose device
went away do (device_follower.py).

Events are collected for ``delay`` seconds, so a burst (a rescan adding many LUNs)
costs one re-list per pool. A device whose host is unknown (it was gone before it could
be read) re-lists every kernel pool.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from .device_model import BlockDevice

if TYPE_CHECKING:
    from .manager import StorageManager
    from .pool import StoragePool

log = logging.getLogger(__name__)

DEFAULT_DELAY = 0.2
_SCSI_NAME = re.compile(r"^(sd[a-z]+|sr\d+)$")


def scsi_host_of(device: BlockDevice) -> int | None:
    """The SCSI host number of a LUN's block device ('2:0:0:1' -> 2); None if unknown."""
    head = device.scsi_address.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def follows_luns(pool: StoragePool) -> bool:
    return bool(getattr(pool.backend, "lun_volumes", False)) and \
        hasattr(pool.backend, "lun_host")


class PoolLunFollower:
    """A core listener for the device events (see events.py)."""

    def __init__(self, manager: StorageManager, delay: float = DEFAULT_DELAY) -> None:
        self.manager = manager
        self.delay = delay
        self._hosts: set[int] = set()
        self._every = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    def device_added(self, device: BlockDevice) -> None:
        self._touched(device)

    def device_removed(self, device: BlockDevice) -> None:
        self._touched(device)

    def device_changed(self, device: BlockDevice) -> None:
        if device.scsi_address:      # a LUN's size or identity; not partitions etc.
            self._touched(device)

    def _touched(self, device: BlockDevice) -> None:
        if device.type == "partition":
            return
        host = scsi_host_of(device)
        if host is not None:
            self._hosts.add(host)
        elif _SCSI_NAME.match(device.name):
            self._every = True
        else:
            return
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:        # no loop (a synchronous caller): nothing to follow
            return
        self._timer = loop.call_later(self.delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        hosts, every = self._hosts, self._every
        self._hosts, self._every = set(), False
        for pool in list(self.manager.pools.values()):
            if not follows_luns(pool) or not (pool.active or pool.lock.locked()):
                continue
            task = asyncio.get_running_loop().create_task(self._relist(pool, hosts, every))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relist(self, pool: StoragePool, hosts: set[int], every: bool) -> None:
        async with pool.lock:       # after a Start or Destroy in progress
            if not pool.active:
                return
            try:
                number = pool.backend.lun_host(pool.definition)
                if number is None:
                    if not await pool.backend.is_active(pool.definition):
                        log.warning("pool %s: its SCSI host is gone", pool.name)
                        pool.mark_lost_device(pool.target_path, remaining=0)
                    return
                if not every and number not in hosts:
                    return
                await pool.relist_luns()
            except Exception as e:  # noqa: BLE001 - the next event or refresh tries again
                log.warning("pool %s: re-listing its LUNs failed: %s", pool.name, e)

    async def close(self) -> None:
        """Stop following (tests; the daemon's loop simply ends)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
