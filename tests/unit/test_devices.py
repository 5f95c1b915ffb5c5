"""The device registry on a fake /sys tree: describing devices, usage, lookups, and the
event coalescing (storms bounded, add/remove never lost or reordered)."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

import pytest
from example_storage.core import device_model as core
from example_storage.core.device_events import ADD, CHANGE, REMOVE, PendingEvents
from example_storage.core.device_lookup import find_devices, pick_device
from example_storage.core.device_model import BlockDevice, normalize_wwn, wwn_keys
from example_storage.core.device_usage import HostUsage, compute_usage
from example_storage.core.devices import DeviceRegistry
from example_storage.core.events import ListenerSet
from example_storage.errors import InvalidArgument, NotFound
from example_storage.system.sysfs import SysfsReader
from example_storage.system.udev import UEvent

from tests.unit.test_sysfs import make_block, make_scsi_disk


# -- pure parts ----------------------------------------------------------------------
def test_wwn_spellings():
    assert normalize_wwn("naa.600A0B80001234560000ABCD12345678") == \
        "0x600a0b80001234560000abcd12345678"
    assert normalize_wwn("3600a0b80001234560000abcd12345678") == \
        "0x600a0b80001234560000abcd12345678"
    assert normalize_wwn("wwn-0x5000C500A1B2C3D4") == "0x5000c500a1b2c3d4"
    assert normalize_wwn("eui.0025388B91B2C3D4") == "eui.0025388b91b2c3d4"
    assert wwn_keys("0x600a0b80001234560000abcd12345678") == {
        "0x600a0b80001234560000abcd12345678", "0x600a0b8000123456"}
    assert wwn_keys("") == set()


def test_pending_events_coalesce_changes_and_keep_add_remove():
    q = PendingEvents()
    for _ in range(10_000):
        q.push("sda", CHANGE)
    assert q.actions("sda") == [CHANGE] and len(q) == 1
    q.push("sda", REMOVE)                     # a queued change is moot once removed
    q.push("sda", CHANGE)
    q.push("sda", ADD, {"DEVNAME": "sda"})
    q.push("sda", CHANGE)                     # the add reads everything anyway
    q.push("sda", REMOVE)
    q.push("sda", REMOVE)                     # a duplicate adds nothing
    assert q.actions("sda") == [REMOVE, ADD, REMOVE] and len(q) == 3
    q.push("sdb", "move")
    assert q.actions("sdb") == [CHANGE]
    assert q.pop("sda") == (REMOVE, {})
    assert q.pop("sda") == (ADD, {"DEVNAME": "sda"})
    assert len(q) == 2


def test_pending_events_overflow_drops_everything():
    q = PendingEvents(limit=5)
    for i in range(3):
        q.push(f"d{i}", ADD)
        q.push(f"d{i}", REMOVE)
    assert q.overflowed and len(q) == 0 and q.names() == []


def dev(name: str, **kw) -> BlockDevice:
    return BlockDevice(name=name, path=f"/dev/{name}", **kw)


def test_usage_reasons():
    devs = {
        "sda": dev("sda", major_minor="8:0", holders=("dm-0",), wwn="0x1"),
        "sdb": dev("sdb", major_minor="8:16", holders=("dm-0",), wwn="0x1"),
        "dm-0": dev("dm-0", type="multipath", dm_name="mpatha", slaves=("sda", "sdb")),
        "loop1": dev("loop1", major_minor="7:1", type="loop"),
        "loop1p1": dev("loop1p1", major_minor="259:0", type="partition", parent="loop1"),
        "loop2": dev("loop2", major_minor="7:2", fs_type="LVM2_member", holders=("dm-1",)),
        "dm-1": dev("dm-1", type="dm", dm_name="vg-lv", slaves=("loop2",)),
        "zram0": dev("zram0", major_minor="253:0"),
    }

    @dataclass
    class Pool:
        name: str
        active: bool

    def pool_of(path: str):
        return Pool("p", True) if path == "/dev/loop2" else None

    host = HostUsage({"259:0": ("/mnt/a", "/mnt/b")}, frozenset({"/dev/zram0"}), pool_of)
    out = compute_usage(devs, host)
    assert out["sda"].in_use_reasons == ("member of multipath mpatha",)
    assert out["sda"].multipath == "dm-0" and out["sda"].hidden
    assert out["dm-0"].wwn == "0x1" and not out["dm-0"].in_use
    assert out["loop1p1"].in_use_reasons == ("mounted at /mnt/a", "mounted at /mnt/b")
    assert out["loop1p1"].mount_points == ("/mnt/a", "/mnt/b")
    assert out["loop1"].in_use_reasons == ("partition loop1p1 in use",)
    assert out["loop2"].in_use_reasons == (
        "LVM physical volume", "held by vg-lv", "held by pool p")
    assert out["loop2"].pool == "p"
    assert out["zram0"].in_use_reasons == ("active swap",)


def test_lookups_prefer_the_multipath_map():
    devs = compute_usage({
        "sdb": dev("sdb", wwn="0x600a0b80001234560000abcd12345678", serial="S1",
                   holders=("dm-0",)),
        "sdc": dev("sdc", wwn="0x600a0b80001234560000abcd12345678", serial="S1",
                   holders=("dm-0",)),
        "dm-0": dev("dm-0", type="multipath", dm_name="mpatha", slaves=("sdb", "sdc"),
                    dm_uuid="mpath-3600a0b80001234560000abcd12345678",
                    wwn="0x600a0b80001234560000abcd12345678"),
        "loop0p1": dev("loop0p1", type="partition", fs_uuid="AbCd-1234", part_uuid="p-1",
                       fs_label="x"),
        "loop5": dev("loop5", fs_uuid="dup"), "loop6": dev("loop6", fs_uuid="dup"),
    }, HostUsage({}))

    def lookup(ident):
        return pick_device(find_devices(devs, ident), ident, devs).name

    for ident in ("0x600a0b80001234560000abcd12345678", "naa.600A0B80001234560000ABCD12345678",
                  "3600a0b80001234560000abcd12345678", "0x600a0b8000123456", "S1", "mpatha",
                  "/dev/mapper/mpatha", "/dev/disk/by-id/wwn-0x600a0b8000123456"):
        assert lookup(ident) == "dm-0", ident
    assert lookup("sdb") == "sdb" and lookup("/dev/sdc") == "sdc"
    for ident in ("abcd-1234", "UUID=ABCD-1234", "/dev/disk/by-uuid/AbCd-1234", "p-1",
                  "PARTUUID=p-1", "LABEL=x", "/dev/disk/by-partuuid/p-1"):
        assert lookup(ident) == "loop0p1", ident
    with pytest.raises(NotFound):
        lookup("/dev/disk/by-uuid/nope")
    with pytest.raises(InvalidArgument, match="loop5, loop6"):
        lookup("dup")


# -- the registry on a fake tree --------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, BlockDevice]] = []

    def device_added(self, d):
        self.events.append(("added", d))

    def device_removed(self, d):
        self.events.append(("removed", d))

    def device_changed(self, d):
        self.events.append(("changed", d))

    def of(self, name: str) -> list[tuple[str, BlockDevice]]:
        return [(kind, d) for kind, d in self.events if d.name == name]


@pytest.fixture
async def registry(tmp_path):
    probes: list[str] = []
    content: dict[str, dict[str, str]] = {}

    async def prober(node: str) -> dict[str, str]:
        probes.append(node)
        await asyncio.sleep(0.001)   # a probe takes time, as blkid does
        return dict(content.get(node, {}))

    listeners = ListenerSet()
    rec = Recorder()
    listeners.add(rec)
    reg = DeviceRegistry(listeners, sysfs=SysfsReader(tmp_path), prober=prober,
                         interval=0.05, host_usage=lambda pool_of: HostUsage({}),
                         udev_root=str(tmp_path))
    reg.test_probes = probes
    reg.test_content = content
    reg.test_recorder = rec
    yield reg
    await reg.close()


def loop_dev(root, name: str, minor: int, sectors: int = 2048):
    return make_block(root, f"devices/virtual/block/{name}", dev=f"7:{minor}", sectors=sectors)


async def settle(reg: DeviceRegistry, seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


async def test_coldplug_describes_every_device(registry, tmp_path):
    loop_dev(tmp_path, "loop0", 0)
    make_scsi_disk(tmp_path, wwid="naa.5000C500A1B2C3D4", serial="SER1")
    registry.test_content["/dev/loop0"] = {"TYPE": "ext4", "UUID": "u-1", "USAGE": "filesystem"}
    await registry.start(None, watch_host=False)
    rec = registry.test_recorder
    assert sorted(d.name for kind, d in rec.events if kind == "added") == ["loop0", "sda"]
    loop0 = registry.get("loop0")
    assert (loop0.type, loop0.fs_type, loop0.fs_uuid, loop0.size) == ("loop", "ext4", "u-1",
                                                                        2048 * 512)
    sda = registry.get("sda")
    assert (sda.type, sda.wwn, sda.serial, sda.scsi_address) == (
        "lun", "0x5000c500a1b2c3d4", "SER1", "0:0:0:0")
    assert registry.lookup("0x5000c500a1b2c3d4").name == "sda"
    assert [d.name for d in registry.list()] == ["loop0", "sda"]


async def test_storm_of_changes_is_bounded_and_ends_correct(registry, tmp_path):
    devdir = loop_dev(tmp_path, "loop0", 0)
    await registry.start(None, watch_host=False)
    rec = registry.test_recorder
    rec.events.clear()
    registry.test_probes.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    peak = 0
    for i in range(10_000):
        if i % 100 == 0:
            (devdir / "size").write_text(f"{4096 + i}\n")
            await asyncio.sleep(0.003)   # spread the storm over ~0.3 s
        registry.handle_uevent(UEvent(CHANGE, "loop0"))
        peak = max(peak, len(registry.pending))
    seconds = loop.time() - started
    await settle(registry)
    changed = rec.of("loop0")
    assert all(kind == "changed" for kind, _ in changed)
    assert peak <= 1                                    # memory: one flag per device
    print(f"storm over {seconds:.2f}s: {len(changed)} changes, {len(registry.test_probes)} probes")
    assert 1 <= len(changed) <= 2 + seconds / registry.interval + 1, (len(changed), seconds)
    assert len(registry.test_probes) <= 2 + seconds / registry.interval + 1
    assert registry.get("loop0").size == (4096 + 9900) * 512   # the last state


async def test_add_and_remove_are_never_lost_or_reordered(registry, tmp_path):
    await registry.start(None, watch_host=False)
    rec = registry.test_recorder
    props = {"DEVNAME": "loop7", "MAJOR": "7", "MINOR": "7", "DEVTYPE": "disk"}
    # four cycles queued at once: the device is gone again before any is applied
    for _ in range(4):
        registry.handle_uevent(UEvent(ADD, "loop7", props))
        registry.handle_uevent(UEvent(CHANGE, "loop7"))
        registry.handle_uevent(UEvent(REMOVE, "loop7"))
    await settle(registry)
    assert [kind for kind, _ in rec.of("loop7")] == ["added", "removed"] * 4
    assert rec.of("loop7")[0][1].path == "/dev/loop7"
    assert "loop7" not in registry.devices

    # a device that stays: added once, then present with its real properties
    loop_dev(tmp_path, "loop7", 7, sectors=4096)
    registry.handle_uevent(UEvent(ADD, "loop7", props))
    registry.handle_uevent(UEvent(CHANGE, "loop7"))
    await settle(registry)
    assert [kind for kind, _ in rec.of("loop7")][-1] == "added"
    assert registry.get("loop7").size == 4096 * 512


async def test_partitions_follow_their_disk(registry, tmp_path):
    disk = loop_dev(tmp_path, "loop1", 1, sectors=8192)
    await registry.start(None, watch_host=False)
    rec = registry.test_recorder
    registry.test_content["/dev/loop1"] = {"PTTYPE": "gpt", "PTUUID": "t-1"}
    registry.test_content["/dev/loop1p1"] = {"PART_ENTRY_UUID": "pu-1",
                                             "PART_ENTRY_NUMBER": "1"}
    make_block(tmp_path, str((disk / "loop1p1").relative_to(tmp_path / "sys")),
               dev="259:3", sectors=2048, partition=1)
    registry.handle_uevent(UEvent(ADD, "loop1p1"))
    await settle(registry)
    part = registry.get("loop1p1")
    assert (part.parent, part.part_uuid, part.part_number, part.type) == (
        "loop1", "pu-1", 1, "partition")
    # the disk is re-read after a partition appeared
    assert registry.get("loop1").pt_type == "gpt"
    assert ("changed", registry.get("loop1")) in rec.events

    shutil.rmtree(disk / "loop1p1")
    (tmp_path / "sys/class/block/loop1p1").unlink()
    registry.handle_uevent(UEvent(REMOVE, "loop1p1"))
    await settle(registry)
    assert [k for k, _ in rec.of("loop1p1")] == ["added", "removed"]
    with pytest.raises(NotFound):
        registry.lookup("pu-1")


async def test_lost_events_mean_a_rescan(registry, tmp_path):
    loop_dev(tmp_path, "loop0", 0)
    registry.pending.limit = 3
    await registry.start(None, watch_host=False)
    rec = registry.test_recorder
    loop_dev(tmp_path, "loop1", 1)
    for name in ("a", "b", "c", "d"):
        registry.handle_uevent(UEvent(ADD, name))   # too many: dropped, rescanned
    await settle(registry)
    assert set(registry.devices) == {"loop0", "loop1"}
    assert [k for k, _ in rec.of("loop1")] == ["added"]
    registry.handle_uevent(UEvent("overflow", "", overflow=True))
    await settle(registry)
    assert set(registry.devices) == {"loop0", "loop1"}


async def test_usage_changes_are_announced(registry, tmp_path):
    loop_dev(tmp_path, "loop0", 0)
    mounts: dict[str, tuple[str, ...]] = {}
    registry.host_usage = lambda pool_of: HostUsage(dict(mounts))
    await registry.start(None, watch_host=False)
    rec = registry.test_recorder
    mounts["7:0"] = ("/srv",)
    registry.usage_changed()
    await settle(registry, 0.1)
    assert registry.get("loop0").in_use_reasons == ("mounted at /srv",)
    assert rec.events[-1] == ("changed", registry.get("loop0"))
    count = len(rec.events)
    registry.usage_changed()    # nothing changed: nothing announced
    await settle(registry, 0.1)
    assert len(rec.events) == count


def test_listener_set_skips_listeners_without_the_event():
    calls = []

    class OnlyPools:
        def pool_added(self, pool):
            calls.append(pool)

    listeners = ListenerSet()
    listeners.add(OnlyPools())
    listeners.device_added(object())   # no error
    listeners.pool_added("p")
    assert calls == ["p"]


def test_describe_prefers_udev_properties(tmp_path):
    make_scsi_disk(tmp_path, wwid="naa.5000c500a1b2c3d4", serial="FROMSYSFS")
    sys = SysfsReader(tmp_path).read("sda")
    d = core.describe(sys, core._udev_content({"ID_FS_TYPE": "xfs", "ID_FS_UUID": "x-1",
                                               "ID_FS_LABEL_ENC": "a\\x20b"}),
                      {"ID_SERIAL_SHORT": "FROMUDEV", "ID_FS_TYPE": "xfs"},
                      ["/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"])
    assert (d.fs_type, d.fs_uuid, d.fs_label, d.serial) == ("xfs", "x-1", "a b", "FROMUDEV")
    assert d.symlinks == ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",)
    assert d.udev_properties
