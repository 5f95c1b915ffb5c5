"""Host block devices on real loop devices: a client subscribed to the service sees a loop
device attached, partitioned, formatted, mounted, used by a pool and detached, as
signals with the right properties; LookupDevice finds it by every identifier this
machine has (WWN and serial: tests/umockdev, loop devices have none).

This kernel keeps a loop device's partitions after ``losetup -d`` (it does not parse
partition tables), so detaching means ``partx -d`` then ``losetup -d``. Other work on the
machine may use other loop devices at the same time: every assertion looks at our own
device's signals only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from example_storage.adapter.paths import device_path, pool_path

from tests.bus.helpers import fs_pool_xml
from tests.harness.loop import LoopDevice

DEVICE = "org.example.Storage.Device"
E = "org.example.Storage.Error."
SIZE = 64 << 20


def _blkid(dev: str) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True,
                         text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _device_signal(path: str, member: str, **expected):
    """A predicate: Manager.<member> about ``path`` whose properties include ``expected``."""
    def match(s) -> bool:
        if s.member != member or not s.body or s.body[0] != path:
            return False
        props = s.body[1] if len(s.body) > 1 else {}
        return all(props.get(k) == v for k, v in expected.items())
    return match


def _signal_with(path: str, **expected):
    """DeviceAdded or DeviceChanged of ``path`` carrying ``expected``."""
    added = _device_signal(path, "DeviceAdded", **expected)
    changed = _device_signal(path, "DeviceChanged", **expected)
    return lambda s: added(s) or changed(s)


@pytest.fixture
def own_loop(tmp_path):
    """A loop device of our own; its partitions are deleted before it is detached."""
    loops: list[LoopDevice] = []

    def attach() -> LoopDevice:
        try:
            dev = LoopDevice(tmp_path / f"disk{len(loops)}.img", SIZE)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"no loop device: {e}")
        loops.append(dev)
        return dev

    yield attach
    for dev in loops:
        if dev.path and dev.attached_here():
            subprocess.run(["partx", "-d", dev.path], capture_output=True, check=False)
        dev.detach()


async def test_loop_device_life_cycle_as_signals(svc, own_loop, tmp_path):
    rec = await svc.recorder()
    loop = own_loop()
    obj = device_path(loop.name)

    # attached: loop0-7 exist before, so this is a change (a new loopN is an add)
    sig = await rec.wait_for(_signal_with(obj, Size=SIZE, BackingFile=str(loop.image)))
    props = await svc.props(obj, DEVICE)
    assert props["Size"] == SIZE and props["Type"] == "loop"
    assert props["Path"] == loop.path and props["Name"] == loop.name
    assert props["Parent"] == "/" and props["InUse"] is False
    assert await rec.wait_for(lambda s: s.member == "PropertiesChanged" and s.path == obj
                              or s.member == "InterfacesAdded" and s.body[0] == obj)
    assert obj in await svc.manager("ListDevices", "a{sv}", {})

    # partitioned (parted's BLKPG makes the node appear, the kernel says "add")
    start = len(rec.signals)
    subprocess.run(["parted", "-s", loop.path, "mklabel", "gpt", "mkpart", "data",
                    "1MiB", "33MiB"], check=True, capture_output=True)
    part = loop.path + "p1"
    part_obj = device_path(loop.name + "p1")
    table = _blkid(loop.path)
    entry = _blkid(part)
    sig = await rec.wait_for(_device_signal(part_obj, "DeviceAdded"), start=start)
    added = sig.body[1]
    assert added["PartUUID"] == entry["PART_ENTRY_UUID"]
    assert added["Parent"] == obj and added["Type"] == "partition"
    assert added["PartNumber"] == 1 and added["Size"] == 32 << 20
    assert added["PartLabel"] == "data"
    await rec.wait_for(lambda s: s.member == "InterfacesAdded" and s.body[0] == part_obj,
                       start=start)
    await rec.wait_for(_signal_with(obj, PartitionTableType="gpt",
                                    PartitionTableUUID=table["PTUUID"]), start=start)

    # formatted: no uevent for that; the service watches the node as udevd would
    start = len(rec.signals)
    subprocess.run(["mkfs.ext4", "-q", "-L", "devtest", part], check=True, capture_output=True)
    fs_uuid = _blkid(part)["UUID"]
    await rec.wait_for(_signal_with(part_obj, FsType="ext4", FsUUID=fs_uuid), start=start)
    props = await svc.props(part_obj, DEVICE)
    assert (props["FsType"], props["FsUUID"], props["FsLabel"]) == ("ext4", fs_uuid, "devtest")
    assert props["FsUsage"] == "filesystem"

    # found by every identifier it has
    link = tmp_path / "my-link"
    link.symlink_to(part)
    for ident in (part, loop.name + "p1", fs_uuid, fs_uuid.upper(), f"UUID={fs_uuid}",
                  entry["PART_ENTRY_UUID"], f"PARTUUID={entry['PART_ENTRY_UUID']}",
                  "LABEL=devtest", "PARTLABEL=data", f"/dev/disk/by-uuid/{fs_uuid}",
                  f"/dev/disk/by-partuuid/{entry['PART_ENTRY_UUID']}",
                  "/dev/disk/by-label/devtest", str(link)):
        assert await svc.manager("LookupDevice", "sa{sv}", ident, {}) == part_obj, ident
    assert await svc.manager("LookupDevice", "sa{sv}", loop.path, {}) == obj
    assert await svc.manager("LookupDevice", "sa{sv}", loop.name, {}) == obj
    if os.path.isdir("/dev/disk/by-uuid"):   # udevd made the links: they resolve
        by_uuid = f"/dev/disk/by-uuid/{fs_uuid}"
        if os.path.exists(by_uuid):
            assert by_uuid in (await svc.props(part_obj, DEVICE))["Symlinks"]

    # mounted: in use, and so is its disk
    start = len(rec.signals)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", part, str(mnt)], check=True)
    try:
        await rec.wait_for(_signal_with(part_obj, InUse=True, MountPoints=[str(mnt)]),
                           start=start)
        reasons = (await svc.props(part_obj, DEVICE))["InUseReasons"]
        assert reasons == [f"mounted at {mnt}"]
        disk = await svc.props(obj, DEVICE)
        assert disk["InUse"] and f"partition {loop.name}p1 in use" in disk["InUseReasons"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    await rec.wait_for(_signal_with(part_obj, InUse=False, MountPoints=[]), start=start)

    # detached: the partition goes away, the loop device is empty again
    start = len(rec.signals)
    subprocess.run(["partx", "-d", loop.path], check=True, capture_output=True)
    await rec.wait_for(_device_signal(part_obj, "DeviceRemoved"), start=start)
    await rec.wait_for(lambda s: s.member == "InterfacesRemoved" and s.body[0] == part_obj,
                       start=start)
    name, image = loop.name, str(loop.image)
    loop.detach()
    sig = await rec.wait_for(_signal_with(obj, Size=0, BackingFile=""), start=start)
    err = await svc.manager_error("LookupDevice", "sa{sv}", fs_uuid, {})
    assert err.type == E + "NotFound"
    # unless another test took the device meanwhile, it is there with nothing on it
    props = await svc.props(obj, DEVICE)
    assert props["Name"] == name and props["BackingFile"] != image


async def test_device_used_by_a_pool(svc, own_loop):
    rec = await svc.recorder()
    loop = own_loop()
    obj = device_path(loop.name)
    subprocess.run(["mkfs.ext4", "-q", loop.path], check=True, capture_output=True)
    await rec.wait_for(_signal_with(obj, FsType="ext4"))
    target = svc.workdir / "poolmnt"
    pool = await svc.manager("DefinePool", "sa{sv}",
                             fs_pool_xml("devpool", loop.path, target), {})
    assert pool == pool_path("devpool")
    # defined, not started: the pool claims the device but does not hold it
    await rec.wait_for(_signal_with(obj, Pool=pool))
    props = await svc.props(obj, DEVICE)
    assert props["Pool"] == pool and props["FsType"] == "ext4"

    await svc.call(pool, "org.example.Storage.Pool", "Start", "a{sv}", {})
    await rec.wait_for(_signal_with(obj, InUse=True))
    reasons = (await svc.props(obj, DEVICE))["InUseReasons"]
    assert "held by pool devpool" in reasons and f"mounted at {target}" in reasons

    await svc.call(pool, "org.example.Storage.Pool", "Destroy", "a{sv}", {})
    await svc.call(pool, "org.example.Storage.Pool", "Undefine", "a{sv}", {})
    await rec.wait_for(_signal_with(obj, Pool="/"))
    props = await svc.props(obj, DEVICE)
    assert props["InUse"] is False and props["InUseReasons"] == []


async def test_lookup_errors_and_listing(svc):
    err = await svc.manager_error("LookupDevice", "sa{sv}", "no-such-device-xyz", {})
    assert err.type == E + "NotFound" and "no-such-device-xyz" in err.text
    err = await svc.manager_error("LookupDevice", "sa{sv}", "/dev/null", {})
    assert err.type == E + "NotFound"
    err = await svc.manager_error("LookupDevice", "sa{sv}", "  ", {})
    assert err.type == E + "InvalidArgument"
    err = await svc.manager_error("ListDevices", "a{sv}", {"all": svc.variant("s", "yes")})
    assert err.type == E + "InvalidArgument"

    # every kernel block device is an object (this host has no multipath to hide); other
    # work may add or remove devices meanwhile: a device may take a moment to appear
    for _ in range(50):
        names = os.listdir("/sys/class/block")
        listed = await svc.manager("ListDevices", "a{sv}", {})
        missing = [n for n in names if device_path(n) not in listed
                   and os.path.exists(f"/sys/class/block/{n}")]
        if not missing:
            break
        await asyncio.sleep(0.1)
    assert missing == []
    objects = await svc.managed_objects()
    for path in listed:
        if path in objects:   # (unless it went away just now)
            assert DEVICE in objects[path]


async def test_without_a_monitor_the_start_up_scan_still_lists(tmp_path, own_loop):
    from tests.bus.conftest import Service
    from tests.harness.bus import PrivateBus
    from tests.harness.daemon import StorageDaemon

    loop = own_loop()
    bus = PrivateBus().start()
    daemon = StorageDaemon(bus, tmp_path / "d", extra_args=["--udev-source", "none"])
    svc = Service(bus, daemon, tmp_path)
    try:
        daemon.start()
        await svc.connect()
        props = await svc.props(device_path(loop.name), DEVICE)
        assert props["Size"] == SIZE and props["BackingFile"] == str(loop.image)
        assert "listening to" not in daemon.log()
    finally:
        await svc.close()
        daemon.stop()
        bus.stop()
