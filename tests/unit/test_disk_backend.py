"""The disk pool backend on real loop devices (root only): partition tables written by
parted, partitions as volumes, and the kernel's partition nodes kept in step."""

import os
import shutil
import subprocess

import pytest
from example_storage.backends.disk import DiskBackend
from example_storage.errors import (
    Busy,
    InvalidArgument,
    InvalidState,
    NoSpace,
    NotFound,
    NotSupported,
)
from example_storage.model.definitions import (
    PoolDefinition,
    PoolSource,
    PoolTarget,
    SourceDevice,
    VolumeDefinition,
)
from example_storage.system import blkid, partitions

from tests.harness.loop import LoopDevice

TOOLS = ("losetup", "parted", "sfdisk", "partx", "wipefs", "blkid", "mkfs.ext4", "blockdev")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS),
                       reason=f"needs {', '.join(TOOLS)}"),
]

MiB = 1024 * 1024


def _run(*argv, check=True, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check, **kw)


def release(dev: LoopDevice) -> None:
    """Drop the partitions parted/partx gave the kernel, then detach. A loop device
    without partition scanning keeps BLKPG partitions after ``losetup -d``: the next
    user of the same loopN would find stale loopNpM nodes."""
    if dev.path and dev.attached_here():
        for point in _mounts_of(dev):
            _run("umount", point, check=False)
        if any(k for k in _kernel_parts(dev.path)):
            _run("partx", "-d", dev.path, check=False)
    dev.detach()


def _mounts_of(dev: LoopDevice) -> list[str]:
    from tests.harness.loop import mounts_of
    return mounts_of(dev.devnums())


def _kernel_parts(path: str) -> list[str]:
    name = os.path.basename(path)
    return sorted(n for n in os.listdir(f"/sys/block/{name}") if n.startswith(name + "p"))


@pytest.fixture
def disk(tmp_path):
    try:
        dev = LoopDevice(tmp_path / "disk.img", 256 * MiB)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no loop device: {e}")
    try:
        yield dev
    finally:
        release(dev)


def _pool(path: str, fmt: str = "gpt") -> PoolDefinition:
    return PoolDefinition(
        type="disk", name="dp",
        source=PoolSource(devices=[SourceDevice(path=path)], format=fmt),
        target=PoolTarget(path="/dev"),
    )


def _size(node: str) -> int:
    return int(_run("blockdev", "--getsize64", node).stdout)


def _table(path: str) -> partitions.PartitionTable:
    return partitions.parse_sfdisk_json(_run("sfdisk", "-J", path).stdout)


def _vol(name: str, capacity: int = 0, fmt: str | None = None) -> VolumeDefinition:
    return VolumeDefinition(name=name, capacity=capacity, format=fmt)


async def test_gpt_pool_life_cycle(disk):
    backend = DiskBackend()
    pool = _pool(disk.path)
    n = disk.name
    _run("mkfs.ext4", "-q", "-F", disk.path)

    with pytest.raises(InvalidState, match=r"holds an ext4 filesystem; pass option 'overwrite'"):
        await backend.build(pool, overwrite=False)
    assert (await blkid.probe(disk.path))["TYPE"] == "ext4"
    with pytest.raises(InvalidState, match=r"holds an ext4 filesystem.*run Build"):
        await backend.start(pool)
    assert not await backend.is_active(pool)

    await backend.build(pool, overwrite=True)
    props = await blkid.probe(disk.path)
    assert props["PTTYPE"] == "gpt" and "TYPE" not in props
    await backend.start(pool)
    assert await backend.is_active(pool)
    result = await backend.refresh(pool)
    assert result.volumes == [] and result.stats.capacity == 256 * MiB
    assert result.stats.allocation == 0
    assert result.stats.available == 254 * MiB        # 1 MiB aligned start, backup GPT

    made = []
    for i, (size, fmt) in enumerate([(32 * MiB, None), (10 * MiB + 1, "linux-swap"),
                                      (20 * MiB, "linux-lvm")], 1):
        vol = await backend.create_volume(pool, _vol(f"{n}p{i}", size, fmt))
        made.append(vol)
        assert vol.name == f"{n}p{i}" and vol.path == vol.key == f"/dev/{n}p{i}"
        assert vol.type == "block"
        assert os.path.exists(vol.path) and _size(vol.path) == vol.capacity
    assert [v.capacity for v in made] == [32 * MiB, 11 * MiB, 20 * MiB]   # MiB-aligned
    assert [v.format for v in made] == ["linux", "linux-swap", "linux-lvm"]
    table = _table(disk.path)
    assert [p.type for p in table.partitions] == [
        partitions.GPT_LINUX, partitions.GPT_SWAP, partitions.GPT_LVM]
    assert [p.start for p in table.partitions] == [1 * MiB, 33 * MiB, 44 * MiB]

    # the name must be the one the kernel will give; nothing is created otherwise
    with pytest.raises(InvalidArgument, match=f"expected '{n}p4'"):
        await backend.create_volume(pool, _vol("data", MiB))
    with pytest.raises(NoSpace, match="no free extent"):
        await backend.create_volume(pool, _vol(f"{n}p4", 300 * MiB))
    with pytest.raises(NotSupported, match="extended"):
        await backend.create_volume(pool, _vol(f"{n}p4", MiB, "extended"))
    assert len(_table(disk.path).partitions) == 3

    # grow the middle one: nothing free after it
    with pytest.raises(NoSpace, match="at most 0 bytes"):
        await backend.resize_volume(pool, made[1], 12 * MiB, False)
    # grow the last one into the free space after it, then shrink it back
    grown = await backend.resize_volume(pool, made[2], 100 * MiB, False)
    assert grown.capacity == 100 * MiB == _size(f"/dev/{n}p3")
    with pytest.raises(InvalidArgument, match="shrink"):
        await backend.resize_volume(pool, grown, 50 * MiB, False)
    shrunk = await backend.resize_volume(pool, grown, 50 * MiB, True)
    assert shrunk.capacity == 50 * MiB == _size(f"/dev/{n}p3")
    with pytest.raises(NoSpace):
        await backend.resize_volume(pool, shrunk, 300 * MiB, False)

    await backend.delete_volume(pool, made[1])
    assert not os.path.exists(f"/dev/{n}p2")
    with pytest.raises(NotFound):
        await backend.delete_volume(pool, made[1])

    result = await backend.refresh(pool)
    assert [(v.name, v.capacity) for v in result.volumes] == [(f"{n}p1", 32 * MiB),
                                                              (f"{n}p3", 50 * MiB)]
    extents = [(e.start, e.end) for e in result.source.devices[0].free_extents]
    table = _table(disk.path)
    assert extents == [(table.first_usable, 1 * MiB), (33 * MiB, 44 * MiB),
                       (94 * MiB, table.last_usable_end)]
    assert result.source.format == "gpt"
    assert pool.source.devices[0].free_extents == []          # the definition is untouched
    assert result.stats.allocation == 82 * MiB
    assert result.stats.available == 11 * MiB + (255 - 94) * MiB

    # the freed slot is reused: the next partition is number 2, in the best-fitting gap
    again = await backend.create_volume(pool, _vol(f"{n}p2", 5 * MiB, "linux-raid"))
    assert again.format == "linux-raid" and _table(disk.path).by_number(2).start == 33 * MiB

    await backend.stop(pool)
    await backend.delete(pool)
    assert await blkid.probe(disk.path) == {}
    assert _kernel_parts(disk.path) == []
    assert not await backend.is_active(pool)


async def test_dos_pool_primary_partitions_only(disk):
    backend = DiskBackend()
    pool = _pool(disk.path, "unknown")
    await backend.build(pool, overwrite=False)           # empty device: no overwrite needed
    assert (await blkid.probe(disk.path))["PTTYPE"] == "dos"  # 'unknown' builds dos
    await backend.start(pool)
    n = disk.name
    fmts = ["fat16", "fat32", "linux-raid", "none"]
    for i, fmt in enumerate(fmts, 1):
        await backend.create_volume(pool, _vol(f"{n}p{i}", 8 * MiB, fmt))
    assert [p.type for p in _table(disk.path).partitions] == ["e", "c", "fd", "83"]
    result = await backend.refresh(pool)
    assert [v.format for v in result.volumes] == ["fat16", "fat32", "linux-raid", "linux"]
    assert result.source.format == "dos"
    assert result.stats.available == 0                   # no primary slot left
    with pytest.raises(NotSupported, match="no free primary slot"):
        await backend.create_volume(pool, _vol(f"{n}p5", MiB))
    # the pool says gpt: this dos table is refused at Start
    with pytest.raises(InvalidState, match="carries a dos partition table"):
        await backend.start(_pool(disk.path, "gpt"))
    assert not await backend.is_active(_pool(disk.path, "gpt"))


async def test_existing_extended_and_logical_partitions(disk):
    n = disk.name
    _run("parted", "-s", disk.path, "mklabel", "msdos", "mkpart", "primary", "1MiB", "10MiB",
         "mkpart", "extended", "20MiB", "200MiB", "mkpart", "logical", "21MiB", "40MiB",
         "mkpart", "logical", "50MiB", "60MiB", "set", "5", "lvm", "on")
    backend = DiskBackend()
    pool = _pool(disk.path, "dos")
    _run("partx", "-d", disk.path)                        # as after attaching the device
    await backend.start(pool)                             # brings the nodes back
    assert _kernel_parts(disk.path) == [f"{n}p1", f"{n}p2", f"{n}p5", f"{n}p6"]
    result = await backend.refresh(pool)
    vols = {v.name: v for v in result.volumes}
    assert vols[f"{n}p2"].format == "extended"
    assert vols[f"{n}p2"].capacity == 180 * MiB and vols[f"{n}p2"].allocation == 29 * MiB
    assert vols[f"{n}p5"].format == "linux-lvm"
    assert result.stats.allocation == 9 * MiB + 29 * MiB
    # free space inside the extended partition is listed but not usable for primaries
    extents = [(e.start, e.end) for e in result.source.devices[0].free_extents]
    assert any(s == 40 * MiB and 49 * MiB < e <= 50 * MiB for s, e in extents)  # before an EBR
    assert result.stats.available == 10 * MiB + 56 * MiB

    with pytest.raises(Busy, match="logical"):
        await backend.delete_volume(pool, vols[f"{n}p2"])
    with pytest.raises(NotSupported, match="logical"):
        await backend.resize_volume(pool, vols[f"{n}p5"], 30 * MiB, False)
    await backend.delete_volume(pool, vols[f"{n}p5"])    # logicals renumber: p6 -> p5
    assert _kernel_parts(disk.path) == [f"{n}p1", f"{n}p2", f"{n}p5"]
    assert _size(f"/dev/{n}p5") == 10 * MiB


async def test_in_use_partitions_are_never_touched(disk, tmp_path):
    backend = DiskBackend()
    pool = _pool(disk.path)
    n = disk.name
    await backend.build(pool, overwrite=False)
    await backend.start(pool)
    p1 = await backend.create_volume(pool, _vol(f"{n}p1", 16 * MiB))
    p2 = await backend.create_volume(pool, _vol(f"{n}p2", 16 * MiB))
    _run("mkfs.ext4", "-q", "-F", p1.path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _run("mount", p1.path, str(mnt))
    try:
        for attempt in (backend.build(pool, overwrite=True), backend.delete(pool),
                        backend.delete_volume(pool, p1), backend.wipe_volume(pool, p1),
                        backend.resize_volume(pool, p1, 8 * MiB, True)):
            with pytest.raises(Busy, match=f"{n}p1 is mounted at {mnt}"):
                await attempt
        assert (await blkid.probe(p1.path))["TYPE"] == "ext4"
        assert _size(p1.path) == 16 * MiB
        # other partitions stay usable while one is mounted
        await backend.delete_volume(pool, p2)
        p2 = await backend.create_volume(pool, _vol(f"{n}p2", 8 * MiB))
        # a partition held open exclusively (as mkfs or a VM would) is refused too
        fd = os.open(p2.path, os.O_RDONLY | os.O_EXCL)
        try:
            with pytest.raises(Busy, match=f"{p2.path} is in use"):
                await backend.delete_volume(pool, p2)
        finally:
            os.close(fd)
        assert os.path.exists(p2.path)
    finally:
        _run("umount", str(mnt))
    assert (await blkid.probe(p1.path))["TYPE"] == "ext4"


async def test_wipe_zeroes_only_the_partition(disk):
    backend = DiskBackend()
    pool = _pool(disk.path)
    n = disk.name
    await backend.build(pool, overwrite=False)
    await backend.start(pool)
    p1 = await backend.create_volume(pool, _vol(f"{n}p1", 4 * MiB))
    p2 = await backend.create_volume(pool, _vol(f"{n}p2", 4 * MiB))
    for vol in (p1, p2):
        with open(vol.path, "r+b") as f:
            f.write(b"\xaa" * (4 * MiB))
    await backend.wipe_volume(pool, p1)
    with open(p1.path, "rb") as f:
        assert f.read() == bytes(4 * MiB)
    with open(p2.path, "rb") as f:
        assert f.read() == b"\xaa" * (4 * MiB)
    assert len(_table(disk.path).partitions) == 2         # the table itself is intact


async def test_build_refuses_a_physical_volume(disk, tmp_path):
    if not shutil.which("pvcreate"):
        pytest.skip("pvcreate (lvm2) is not installed")
    conf = tmp_path / "lvm"
    conf.mkdir()
    (conf / "lvm.conf").write_text(
        f'devices {{ filter = [ "a|^{disk.path}$|", "r|.*|" ]\n'
        f'  global_filter = [ "a|^{disk.path}$|", "r|.*|" ]\n'
        '  obtain_device_list_from_udev = 0\n  use_devicesfile = 0\n  hints = "none" }\n'
        f'global {{ activation = 0\n  locking_dir = "{conf}/lock"\n  use_lvmpolld = 0 }}\n'
        f'backup {{ backup_dir = "{conf}/backup"\n  archive_dir = "{conf}/archive" }}\n'
    )
    env = {**os.environ, "LVM_SYSTEM_DIR": str(conf)}
    _run("pvcreate", "-q", disk.path, env=env)
    backend = DiskBackend()
    with pytest.raises(InvalidState, match="LVM2 physical volume.*'overwrite'"):
        await backend.build(_pool(disk.path), overwrite=False)
    assert (await blkid.probe(disk.path))["TYPE"] == "LVM2_member"
    await backend.build(_pool(disk.path), overwrite=True)
    assert (await blkid.probe(disk.path)).get("PTTYPE") == "gpt"


async def test_bad_sources(disk, tmp_path):
    backend = DiskBackend()
    plain = tmp_path / "file"
    plain.write_bytes(b"x" * 4096)
    for path in (str(plain), str(tmp_path / "missing"), "relative/dev"):
        with pytest.raises(InvalidArgument):
            await backend.build(_pool(path), overwrite=True)
        assert not await backend.is_active(_pool(path))
    assert plain.read_bytes() == b"x" * 4096
    await backend.build(_pool(disk.path), overwrite=False)
    await backend.start(_pool(disk.path))
    part = (await backend.create_volume(_pool(disk.path), _vol(f"{disk.name}p1", MiB))).path
    with pytest.raises(InvalidArgument, match="is a partition"):
        await backend.build(_pool(part), overwrite=True)
    with pytest.raises(NotSupported, match="format 'mac'"):
        await backend.build(_pool(disk.path, "mac"), overwrite=True)
    with pytest.raises(InvalidState, match="holds a gpt partition table"):
        await backend.build(_pool(disk.path, "dos"), overwrite=False)
