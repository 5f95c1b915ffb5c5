"""Pools follow their devices: a running pool whose device goes away becomes
inaccessible (its only device) or degraded (one of several), and Start recovers it."""

from pathlib import Path

import pytest
from example_storage.backends.base import Backend, PoolStats, RefreshResult
from example_storage.core.device_model import BlockDevice
from example_storage.core.manager import StorageManager
from example_storage.core.pool import DEGRADED, INACCESSIBLE, RUNNING
from example_storage.model.definitions import VolumeDefinition


class StorageOnDevices(Backend):
    """A backend whose storage is whatever the test says; records stop/start calls."""

    type_name = "fs"
    features = frozenset({"start", "stop", "refresh"})

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self, pool):
        self.calls.append("start")

    async def stop(self, pool):
        self.calls.append("stop")

    async def refresh(self, pool):
        return RefreshResult(PoolStats(100, 10, 90), [VolumeDefinition("v", path="/x/v")])


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def pool_changed(self, pool):
        self.seen.append(("state", pool.state))

    def volume_removed(self, pool, volume):
        self.seen.append(("volume_removed", volume.name))


async def _running_pool(tmp_path: Path, devices: list[str]):
    backend = StorageOnDevices()
    manager = StorageManager(tmp_path / "c", tmp_path / "r", backend_factory=lambda t: backend)
    manager.store.prepare()
    sources = "".join(f"<device path='{d}'/>" for d in devices)
    pool = await manager.define_pool(
        f"<pool type='fs'><name>p</name><source>{sources}</source>"
        f"<target><path>{tmp_path / 'mnt'}</path></target></pool>")
    async with pool.lock:
        await pool.start()
    events = Events()
    manager.listeners.add(events)
    return manager, pool, backend, events


@pytest.mark.parametrize("how", ["removed", "no medium"])
async def test_only_device_gone_makes_pool_inaccessible(tmp_path, how):
    manager, pool, backend, events = await _running_pool(tmp_path, ["/dev/esnone9"])
    gone = BlockDevice(name="esnone9", path="/dev/esnone9", size=0)
    if how == "removed":
        manager.listeners.device_removed(gone)
    else:
        manager.listeners.device_changed(gone)
    assert pool.state == INACCESSIBLE and not pool.active
    assert pool.volumes == {} and pool.stats.capacity == 0
    assert ("volume_removed", "v") in events.seen and ("state", INACCESSIBLE) in events.seen
    # an unrelated device does nothing to another pool
    manager.listeners.device_removed(BlockDevice(name="other", path="/dev/esother"))
    assert pool.state == INACCESSIBLE

    # the device is back: Start clears the old activation and starts again
    async with pool.lock:
        await pool.start()
    assert pool.state == RUNNING and "v" in pool.volumes
    assert backend.calls == ["start", "stop", "start"]


async def test_one_of_several_devices_gone_degrades(tmp_path):
    manager, pool, backend, events = await _running_pool(tmp_path, ["/dev/esa9", "/dev/esb9"])
    manager.listeners.device_removed(BlockDevice(name="esb9", path="/dev/esb9"))
    assert pool.state == DEGRADED and pool.active
    assert "v" in pool.volumes


async def test_a_device_with_size_is_not_gone(tmp_path):
    manager, pool, backend, events = await _running_pool(tmp_path, ["/dev/esnone9"])
    manager.listeners.device_changed(BlockDevice(name="esnone9", path="/dev/esnone9", size=4096))
    assert pool.state == RUNNING and events.seen == []


async def test_inactive_pools_are_left_alone(tmp_path):
    manager, pool, backend, events = await _running_pool(tmp_path, ["/dev/esnone9"])
    await manager.destroy_pool(pool)
    manager.listeners.device_removed(BlockDevice(name="esnone9", path="/dev/esnone9"))
    assert pool.state == "inactive"


async def test_a_stale_record_of_a_present_device_is_ignored(tmp_path):
    """The registry's record may say size 0 for a device that has a size by now (events
    are coalesced): the kernel's word counts."""
    sizes = {p.name: int((p / "size").read_text() or 0) for p in Path("/sys/class/block").iterdir()}
    present = next((n for n, size in sorted(sizes.items()) if size > 0), None)
    if present is None:
        pytest.skip("no block device with a size on this machine")
    manager, pool, backend, events = await _running_pool(tmp_path, [f"/dev/{present}"])
    manager.listeners.device_changed(BlockDevice(name=present, path=f"/dev/{present}", size=0))
    manager.listeners.device_removed(BlockDevice(name=present, path=f"/dev/{present}"))
    assert pool.state == RUNNING and events.seen == []
