"""Kernel pools follow their SCSI host's LUNs (core/lun_follower.py): block device events
of the pool's host make it re-list (once per burst), other hosts' events do nothing, a
host that went away makes the pool inaccessible. The backend is a stand-in whose LUNs the
test sets; the real ones run in the VM lane (tests/vm_guest/test_scsi_pool.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from example_storage.backends.base import Backend, PoolStats, RefreshResult
from example_storage.core.device_model import BlockDevice
from example_storage.core.manager import StorageManager
from example_storage.core.pool import INACCESSIBLE, RUNNING
from example_storage.model.definitions import VolumeDefinition


class HostLuns(Backend):
    """A 'scsi' pool's backend whose host and LUNs are whatever the test says."""

    type_name = "scsi"
    features = frozenset({"start", "stop", "refresh"})
    lun_volumes = True

    def __init__(self) -> None:
        self.host: int | None = 4
        self.luns = ["unit:0:0:1"]
        self.relists = 0

    def lun_host(self, pool):
        return self.host

    async def is_active(self, pool):
        return self.host is not None

    async def start(self, pool):
        pass

    async def stop(self, pool, force=False):
        pass

    def _result(self) -> RefreshResult:
        vols = [VolumeDefinition(n, type="block", capacity=MiB, path=f"/dev/{n}")
                for n in self.luns]
        return RefreshResult(PoolStats(len(vols) * MiB, len(vols) * MiB, 0), vols)

    async def refresh(self, pool):
        return self._result()

    async def relist(self, pool):
        self.relists += 1
        return self._result()


MiB = 1 << 20


class Signals:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def luns_changed(self, pool, added, removed):
        self.seen.append(("luns", added, removed))

    def volume_added(self, pool, volume):
        self.seen.append(("added", volume.name))

    def volume_removed(self, pool, volume):
        self.seen.append(("removed", volume.name))


async def _pool(tmp_path: Path):
    backend = HostLuns()
    manager = StorageManager(tmp_path / "c", tmp_path / "r", backend_factory=lambda t: backend)
    manager.store.prepare()
    pool = await manager.define_pool(
        "<pool type='scsi'><name>s</name><source><adapter type='scsi_host' name='host4'/>"
        "</source><target><path>/dev/disk/by-path</path></target></pool>")
    async with pool.lock:
        await pool.start()
    signals = Signals()
    manager.listeners.add(signals)
    return manager, pool, backend, signals


def lun(name: str, address: str) -> BlockDevice:
    return BlockDevice(name=name, path=f"/dev/{name}", type="lun", scsi_address=address)


async def _settle() -> None:
    await asyncio.sleep(0.5)


async def test_a_burst_of_events_on_the_pools_host_is_one_relist(tmp_path):
    manager, pool, backend, signals = await _pool(tmp_path)
    backend.luns = ["unit:0:0:1", "unit:0:0:2", "unit:0:0:3"]
    for i, name in enumerate(("sdx", "sdy")):
        manager.listeners.device_added(lun(name, f"4:0:0:{i + 2}"))
    await _settle()
    assert backend.relists == 1
    assert signals.seen == [("added", "unit:0:0:2"), ("added", "unit:0:0:3"),
                            ("luns", ["unit:0:0:2", "unit:0:0:3"], [])]
    assert pool.stats.capacity == 3 * MiB

    backend.luns = ["unit:0:0:1"]
    manager.listeners.device_removed(lun("sdx", "4:0:0:2"))
    await _settle()
    assert signals.seen[-1] == ("luns", [], ["unit:0:0:2", "unit:0:0:3"])


async def test_other_hosts_partitions_and_loops_do_nothing(tmp_path):
    manager, pool, backend, signals = await _pool(tmp_path)
    backend.luns = ["unit:0:0:1", "unit:0:0:2"]
    manager.listeners.device_added(lun("sdz", "5:0:0:2"))        # another host
    manager.listeners.device_added(BlockDevice(name="sdx1", path="/dev/sdx1",
                                               type="partition", scsi_address=""))
    manager.listeners.device_added(BlockDevice(name="loop3", path="/dev/loop3", type="loop"))
    manager.listeners.device_changed(BlockDevice(name="loop3", path="/dev/loop3", size=5))
    await _settle()
    assert backend.relists == 0 and signals.seen == []
    # a disk gone before it could be read (no SCSI address known): every kernel pool looks
    manager.listeners.device_added(BlockDevice(name="sdq", path="/dev/sdq"))
    await _settle()
    assert backend.relists == 1 and signals.seen[-1] == ("luns", ["unit:0:0:2"], [])


async def test_inactive_pools_are_left_alone_and_a_lost_host_is_inaccessible(tmp_path):
    manager, pool, backend, signals = await _pool(tmp_path)
    async with pool.lock:
        await pool.stop()
    manager.listeners.device_added(lun("sdx", "4:0:0:2"))
    await _settle()
    assert backend.relists == 0

    async with pool.lock:
        await pool.start()
    assert pool.state == RUNNING
    backend.host = None            # the HBA (or the session) went away
    manager.listeners.device_removed(lun("sda", "4:0:0:1"))
    await _settle()
    assert pool.state == INACCESSIBLE and pool.volumes == {}


async def test_events_during_a_start_are_applied_after_it(tmp_path):
    manager, pool, backend, signals = await _pool(tmp_path)
    async with pool.lock:
        manager.listeners.device_added(lun("sdx", "4:0:0:2"))
        backend.luns = ["unit:0:0:1", "unit:0:0:2"]
        await asyncio.sleep(0.4)     # the re-list waits for the lock
        assert backend.relists == 0
    await _settle()
    assert backend.relists == 1 and "unit:0:0:2" in pool.volumes
