"""A disk pool (partition table) on a real loop device over the bus: Build refusing to
overwrite data, partitions as volumes (create, grow, delete), free extents in the pool
XML, a daemon restart, and Build refused while a partition is mounted."""

import os
import shutil
import subprocess

import pytest
from lxml import etree

from tests.bus.helpers import POOL, VOLUME
from tests.harness.loop import LoopDevice, mounts_of
from tests.testdata import LIBVIRT_TESTDATA

E = "org.example.Storage.Error."
MiB = 1024 * 1024
TOOLS = ("parted", "sfdisk", "partx", "wipefs", "blkid", "mkfs.ext4", "blockdev")

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)}")


def disk_pool_xml(name: str, device: str, fmt: str = "gpt") -> str:
    return (f"<pool type='disk'><name>{name}</name><source><device path='{device}'/>"
            f"<format type='{fmt}'/></source><target><path>/dev</path></target></pool>")


def partition_xml(name: str, size_mib: int, fmt: str = "none") -> str:
    return (f"<volume><name>{name}</name><capacity unit='MiB'>{size_mib}</capacity>"
            f"<target><format type='{fmt}'/></target></volume>")


def _run(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


def _kernel_parts(dev: LoopDevice) -> list[str]:
    return sorted(n for n in os.listdir(f"/sys/block/{dev.name}")
                  if n.startswith(dev.name + "p"))


@pytest.fixture
def loop(tmp_path):
    try:
        dev = LoopDevice(tmp_path / "disk.img", 256 * MiB)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no loop device: {e}")
    try:
        yield dev
    finally:
        # A loop device keeps the partitions parted gave it after losetup -d: drop them
        # first, so the next user of this loopN finds no stale loopNpM.
        if dev.path and dev.attached_here():
            for point in mounts_of(dev.devnums()):
                _run("umount", point, check=False)
            if _kernel_parts(dev):
                _run("partx", "-d", dev.path, check=False)
        dev.detach()


def _blkid(dev: str, tag: str) -> str:
    return _run("blkid", "-p", "-o", "value", "-s", tag, dev, check=False).stdout.strip()


def _size(node: str) -> int:
    return int(_run("blockdev", "--getsize64", node).stdout)


def _table(dev: str) -> list[tuple[int, int, str]]:
    """(start, size, type) of every partition, in bytes, as sfdisk reads the table."""
    import json

    pt = json.loads(_run("sfdisk", "-J", dev).stdout)["partitiontable"]
    sector = pt["sectorsize"]
    return [(p["start"] * sector, p["size"] * sector, p["type"])
            for p in pt.get("partitions", [])]


def _usable_range(dev: str) -> tuple[int, int]:
    import json

    pt = json.loads(_run("sfdisk", "-J", dev).stdout)["partitiontable"]
    sector = pt["sectorsize"]
    return pt["firstlba"] * sector, (pt["lastlba"] + 1) * sector


def _free_extents(xml: str) -> list[tuple[int, int]]:
    root = etree.fromstring(xml.encode())
    return [(int(e.get("start")), int(e.get("end")))
            for e in root.findall("source/device/freeExtent")]


async def _volumes(svc, pool) -> dict[str, dict]:
    paths = await svc.call(pool, POOL, "ListVolumes", "a{sv}", {})
    out = {}
    for path in paths:
        props = await svc.props(path, VOLUME)
        out[props["Name"]] = props
    return out


async def test_disk_pool_life_cycle(svc, loop, tmp_path):
    n = loop.name
    _run("mkfs.ext4", "-q", "-F", loop.path)
    pool = await svc.manager("DefinePool", "sa{sv}", disk_pool_xml("dp", loop.path), {})

    # an ext4 filesystem on the device: refused without overwrite, nothing changed
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {})
    assert err.type == E + "InvalidState", err.text
    assert "ext4" in err.text and "overwrite" in err.text
    assert _blkid(loop.path, "TYPE") == "ext4"
    err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
    assert err.type == E + "InvalidState" and "Build" in err.text

    await svc.call(pool, POOL, "Build", "a{sv}", {"overwrite": svc.variant("b", True)})
    assert _blkid(loop.path, "PTTYPE") == "gpt" and _blkid(loop.path, "TYPE") == ""

    await svc.call(pool, POOL, "Start", "a{sv}", {})
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Capacity"] == 256 * MiB
    assert props["Allocation"] == 0

    # three partitions: the kernel's names, the sizes asked for, nodes that exist
    sizes = {1: 32, 2: 16, 3: 8}
    formats = {1: "none", 2: "linux-swap", 3: "linux-lvm"}
    vols = {}
    for i in (1, 2, 3):
        vols[i] = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                                 partition_xml(f"{n}p{i}", sizes[i], formats[i]), {})
        vp = await svc.props(vols[i], VOLUME)
        node = f"/dev/{n}p{i}"
        assert vp["Name"] == f"{n}p{i}" and vp["Path"] == vp["Key"] == node
        assert vp["Type"] == "block" and vp["Capacity"] == sizes[i] * MiB
        assert os.path.exists(node) and _size(node) == sizes[i] * MiB
    assert (await svc.props(vols[2], VOLUME))["Format"] == "linux-swap"
    assert (await svc.props(vols[3], VOLUME))["Format"] == "linux-lvm"
    assert [(s, z) for s, z, _ in _table(loop.path)] == [
        (1 * MiB, 32 * MiB), (33 * MiB, 16 * MiB), (49 * MiB, 8 * MiB)]

    # a name other than the partition's is refused, naming the one expected
    bad = partition_xml("sda1", 1)
    vol_partition = LIBVIRT_TESTDATA / "storagevolxml2xmlin" / "vol-partition.xml"
    if vol_partition.exists():
        bad = vol_partition.read_text()           # libvirt's own partition volume, 'sda1'
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}", bad, {})
    assert err.type == E + "InvalidArgument", err.text
    assert f"expected '{n}p4'" in err.text and "sda1" in err.text
    assert len(_table(loop.path)) == 3 and not os.path.exists(f"/dev/{n}p4")

    # grow the last partition into the free space after it
    await svc.call(vols[3], VOLUME, "Resize", "ta{sv}", 64 * MiB, {})
    assert (await svc.props(vols[3], VOLUME))["Capacity"] == 64 * MiB
    assert _size(f"/dev/{n}p3") == 64 * MiB
    # the middle one has no free space after it
    err = await svc.call_error(vols[2], VOLUME, "Resize", "ta{sv}", 20 * MiB, {})
    assert err.type == E + "NoSpace", err.text
    assert _size(f"/dev/{n}p2") == 16 * MiB

    await svc.call(vols[2], VOLUME, "Delete", "a{sv}", {})
    assert not os.path.exists(f"/dev/{n}p2")
    assert sorted(await _volumes(svc, pool)) == [f"{n}p1", f"{n}p3"]

    # free extents in the running pool's XML: the gaps between the partitions, current
    # right after the volume changes (no Refresh needed)
    xml = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {})
    first, end = _usable_range(loop.path)
    assert _free_extents(xml) == [(first, 1 * MiB), (33 * MiB, 49 * MiB), (113 * MiB, end)]
    assert "<format type='gpt'/>" in xml
    inactive = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}",
                              {"inactive": svc.variant("b", True)})
    assert _free_extents(inactive) == []           # output only, never in the definition
    props = await svc.props(pool, POOL)
    assert props["Allocation"] == 96 * MiB
    assert props["Available"] == 16 * MiB + (255 - 113) * MiB   # 1 MiB-aligned space

    # the daemon dies and comes back: the pool runs with the same volumes
    before = await _volumes(svc, pool)
    svc.daemon.kill9()
    await svc.restart()
    assert (await svc.props(pool, POOL))["State"] == "running"
    after = await _volumes(svc, pool)
    assert {k: (v["Capacity"], v["Format"], v["Path"]) for k, v in after.items()} == {
        k: (v["Capacity"], v["Format"], v["Path"]) for k, v in before.items()}
    xml = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {})
    assert _free_extents(xml) == [(first, 1 * MiB), (33 * MiB, 49 * MiB), (113 * MiB, end)]

    # a mounted partition: Build (even with overwrite) and Delete are refused
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    _run("mkfs.ext4", "-q", "-F", f"/dev/{n}p1")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _run("mount", f"/dev/{n}p1", str(mnt))
    try:
        err = await svc.call_error(pool, POOL, "Build", "a{sv}",
                                   {"overwrite": svc.variant("b", True)})
        assert err.type == E + "Busy", err.text
        assert f"{n}p1" in err.text and str(mnt) in err.text
        err = await svc.call_error(pool, POOL, "Delete", "a{sv}", {})
        assert err.type == E + "Busy", err.text
        assert _blkid(loop.path, "PTTYPE") == "gpt" and len(_table(loop.path)) == 2
        assert _blkid(f"/dev/{n}p1", "TYPE") == "ext4"
    finally:
        _run("umount", str(mnt))

    await svc.call(pool, POOL, "Delete", "a{sv}", {})
    assert _blkid(loop.path, "PTTYPE") == ""
    assert _kernel_parts(loop) == []


async def test_disk_pool_dos_and_wipe(svc, loop):
    """format 'unknown' builds a dos table (like libvirt); Wipe zeroes one partition."""
    n = loop.name
    pool = await svc.manager("DefinePool", "sa{sv}",
                             disk_pool_xml("dosp", loop.path, "unknown"), {})
    await svc.call(pool, POOL, "Build", "a{sv}", {})    # an empty device needs no overwrite
    assert _blkid(loop.path, "PTTYPE") == "dos"
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert "<format type='dos'/>" in await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {})
    v1 = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", partition_xml(f"{n}p1", 4), {})
    v2 = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                        partition_xml(f"{n}p2", 4, "fat32"), {})
    assert [t for _, _, t in _table(loop.path)] == ["83", "c"]
    for node in (f"/dev/{n}p1", f"/dev/{n}p2"):
        with open(node, "r+b") as f:
            f.write(b"\x55" * (4 * MiB))
    await svc.call(v1, VOLUME, "Wipe", "a{sv}", {})
    with open(f"/dev/{n}p1", "rb") as f:
        assert f.read() == bytes(4 * MiB)
    with open(f"/dev/{n}p2", "rb") as f:
        assert f.read() == b"\x55" * (4 * MiB)
    assert (await svc.props(v2, VOLUME))["Format"] == "fat32"
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               partition_xml(f"{n}p3", 1, "extended"), {})
    assert err.type == E + "NotSupported", err.text
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    await svc.call(pool, POOL, "Delete", "a{sv}", {})
    assert _blkid(loop.path, "PTTYPE") == "" and _kernel_parts(loop) == []
