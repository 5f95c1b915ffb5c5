"""The logical (LVM) backend on real loop devices, host lane: LVM with a private config
that sees only this test's loop devices and, without device-mapper, edits metadata only
(tests/harness/lvm.py). What needs device-mapper must fail clearly and change nothing."""

import os
import subprocess

import pytest
from example_storage.backends.logical import LogicalBackend
from example_storage.errors import (
    AlreadyExists,
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
from example_storage.model.poolxml import format_pool_sources_xml
from example_storage.system import lvm

from tests.harness.loop import LoopDevice
from tests.harness.lvm import PrivateLvm, kernel_has_device_mapper, lvm_installed

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices)"),
    pytest.mark.skipif(not lvm_installed(), reason="lvm2 is not installed (scripts/bootstrap)"),
]

MiB = 1 << 20
EXTENT = 4 * MiB
DISK = 64 * MiB        # a PV of 60 MiB (15 extents) after LVM's label and metadata
PV_SIZE = 60 * MiB
HOST_ONLY = pytest.mark.skipif(kernel_has_device_mapper(),
                               reason="checks the metadata-only host (no device-mapper)")


@pytest.fixture
def disks(tmp_path, monkeypatch):
    """Three loop devices and a private LVM config that sees exactly them."""
    devs = []
    try:
        for i in range(3):
            devs.append(LoopDevice(tmp_path / f"pv{i}.img", DISK))
    except Exception as e:  # noqa: BLE001
        for d in devs:
            d.detach()
        pytest.skip(f"no loop device: {e}")
    conf = PrivateLvm(tmp_path / "lvm", [d.path for d in devs])
    for key, value in conf.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield conf, [d.path for d in devs]
    finally:
        conf.cleanup()
        for d in devs:
            d.detach()


def pool_def(vg, devices, name=None):
    return PoolDefinition(
        type="logical", name=name or vg,
        source=PoolSource(name=vg, format="lvm2", devices=[SourceDevice(d) for d in devices]),
        target=PoolTarget(path=f"/dev/{vg}"),
    )


def vol_def(name, capacity, allocation=None):
    return VolumeDefinition(name=name, type="block", capacity=capacity, allocation=allocation)


def pvs_of(conf):
    return {r["pv_name"]: r for r in conf.report("pvs", "pv_name,vg_name,pv_size,pv_free,pv_uuid")}


def blkid_type(dev):
    res = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip()


async def test_vg_life_cycle(disks):
    conf, (d0, d1, d2) = disks
    backend = LogicalBackend()
    pool = pool_def("vgtest", [d0, d1])
    assert not await backend.is_active(pool)
    err = None
    try:
        await backend.start(pool)
    except InvalidState as e:
        err = e
    assert err is not None and "does not exist" in err.message

    await backend.build(pool, overwrite=False)
    pvs = pvs_of(conf)
    assert pvs[d0]["vg_name"] == pvs[d1]["vg_name"] == "vgtest"
    assert d2 not in pvs
    [vg] = conf.report("vgs", "vg_name,vg_size,vg_free", "vgtest")
    assert int(vg["vg_size"]) == 2 * PV_SIZE

    with pytest.raises(AlreadyExists, match="on these devices"):
        await backend.build(pool, overwrite=True)
    with pytest.raises(AlreadyExists, match="on other devices"):
        await backend.build(pool_def("vgtest", [d2], name="other"), overwrite=True)
    assert d2 not in pvs_of(conf)

    await backend.start(pool)          # metadata only: checks the VG, activation is a no-op
    assert await backend.is_active(pool)
    result = await backend.refresh(pool)
    assert (result.stats.capacity, result.stats.allocation, result.stats.available) == (
        2 * PV_SIZE, 0, 2 * PV_SIZE)
    assert result.volumes == []
    assert [d.path for d in result.source.devices] == [d0, d1]
    assert result.source.name == "vgtest" and result.source.format == "lvm2"
    assert [(d.path, d.uuid, d.size, d.free) for d in result.devices] == [
        (p, pvs[p]["pv_uuid"], PV_SIZE, PV_SIZE) for p in (d0, d1)]

    # find sources: the VG with its PVs, as libvirt's source list
    sources = await backend.find_sources(None)
    assert [(s.name, [d.path for d in s.devices], s.format) for s in sources] == [
        ("vgtest", [d0, d1], "lvm2")]
    xml = format_pool_sources_xml(sources, "logical")
    assert f"<device path='{d0}'/>" in xml and "<name>vgtest</name>" in xml
    assert "<format type='lvm2'/>" in xml

    # extend with a third PV
    await backend.add_devices(pool, [d2], overwrite=False)
    assert pvs_of(conf)[d2]["vg_name"] == "vgtest"
    result = await backend.refresh(pool)
    assert result.stats.capacity == 3 * PV_SIZE
    assert [d.path for d in result.devices] == [d0, d1, d2]
    with pytest.raises(AlreadyExists):
        await backend.add_devices(pool, [d2], overwrite=True)

    # an empty PV can be removed: vgreduce + pvremove
    await backend.remove_device(pool, d2)
    assert d2 not in pvs_of(conf)
    assert blkid_type(d2) == ""
    assert (await backend.refresh(pool)).stats.capacity == 2 * PV_SIZE
    with pytest.raises(NotFound):
        await backend.remove_device(pool, d2)

    # "Define with more devices, then Build" extends the VG too
    pool = pool_def("vgtest", [d0, d1, d2])
    await backend.build(pool, overwrite=False)
    assert pvs_of(conf)[d2]["vg_name"] == "vgtest"
    await backend.remove_device(pool, d2)

    await backend.stop(pool)
    await backend.delete(pool)
    assert pvs_of(conf) == {}
    assert blkid_type(d0) == blkid_type(d1) == ""
    assert not await backend.is_active(pool)


async def test_volumes(disks):
    conf, (d0, d1, _d2) = disks
    backend = LogicalBackend()
    pool = pool_def("vgvol", [d0, d1])
    await backend.build(pool, overwrite=False)
    await backend.start(pool)

    vol = await backend.create_volume(pool, vol_def("data", 40 * MiB))
    [row] = conf.report("lvs", "lv_name,lv_uuid,lv_size", "vgvol")
    assert (vol.name, vol.key, vol.capacity, vol.allocation) == (
        "data", row["lv_uuid"], 40 * MiB, 40 * MiB)
    assert vol.path == "/dev/vgvol/data" and vol.type == "block"

    # sizes round up to whole extents; allocation < capacity without a thin pool: full LV
    odd = await backend.create_volume(pool, vol_def("odd", 5 * MiB + 1, allocation=0))
    assert odd.capacity == odd.allocation == 2 * EXTENT

    result = await backend.refresh(pool)
    lvs = {r["lv_name"]: r for r in conf.report("lvs", "lv_name,lv_uuid,lv_size", "vgvol")}
    assert {v.name: (v.key, v.capacity) for v in result.volumes} == {
        n: (r["lv_uuid"], int(r["lv_size"])) for n, r in lvs.items()}
    [vg] = conf.report("vgs", "vg_size,vg_free", "vgvol")
    assert result.stats.available == int(vg["vg_free"]) == 2 * PV_SIZE - 48 * MiB
    assert result.stats.allocation == 48 * MiB
    assert (await backend.stats(pool)) == result.stats

    # grow across both PVs, shrink only with shrink
    vol = await backend.resize_volume(pool, vol, 80 * MiB, shrink=False)
    assert vol.capacity == 80 * MiB
    assert int(conf.report("lvs", "lv_size", "vgvol/data")[0]["lv_size"]) == 80 * MiB
    with pytest.raises(InvalidArgument, match="shrink"):
        await backend.resize_volume(pool, vol, 20 * MiB, shrink=False)
    vol = await backend.resize_volume(pool, vol, 20 * MiB, shrink=True)
    assert vol.capacity == 20 * MiB
    with pytest.raises(NoSpace):
        await backend.resize_volume(pool, vol, 1 << 30, shrink=False)
    assert (await backend.volume_info(pool, "data")).capacity == 20 * MiB

    # no room / bad names: refused, nothing created
    with pytest.raises(NoSpace):
        await backend.create_volume(pool, vol_def("huge", 1 << 30))
    for bad in ("snapshot1", "x_tmeta", "a b", "-x"):
        with pytest.raises(InvalidArgument):
            await backend.create_volume(pool, vol_def(bad, MiB))
    with pytest.raises(AlreadyExists):
        await backend.create_volume(pool, vol_def("data", MiB))
    assert {r["lv_name"] for r in conf.report("lvs", "lv_name", "vgvol")} == {"data", "odd"}

    # a VG with LVs is not deleted behind the caller's back
    with pytest.raises(Busy, match="data, odd"):
        await backend.delete(pool)

    await backend.delete_volume(pool, vol)
    await backend.delete_volume(pool, odd)
    assert conf.report("lvs", "lv_name", "vgvol") == []
    with pytest.raises(NotFound):
        await backend.delete_volume(pool, vol)
    await backend.delete(pool)
    assert pvs_of(conf) == {}


@HOST_ONLY
async def test_device_mapper_operations_refused_on_host(disks):
    conf, (d0, d1, _d2) = disks
    backend = LogicalBackend()
    pool = pool_def("vgdm", [d0, d1])
    await backend.build(pool, overwrite=False)
    await backend.start(pool)
    vol = await backend.create_volume(pool, vol_def("data", 20 * MiB))
    assert {"snapshot_volume", "wipe_volume", "create_volume_from"}.isdisjoint(
        backend.features)
    assert {"build", "add_devices", "remove_device", "find_sources"} <= backend.features

    with pytest.raises(NotSupported, match="device-mapper"):
        await backend.snapshot_volume(pool, vol, "snap", 8 * MiB)
    with pytest.raises(NotSupported, match="device-mapper"):
        await backend.wipe_volume(pool, vol)
    with pytest.raises(NotSupported, match="device-mapper"):
        await backend.create_volume_from(pool, vol_def("copy", 20 * MiB), vol)
    # LVM itself refuses too (the error a caller would see without our pre-check)
    with pytest.raises(NotSupported, match="device-mapper"):
        await lvm.lvcreate_snapshot("vgdm", "data", "snap", 8 * MiB)
    with pytest.raises(NotSupported, match="device-mapper"):
        await lvm.lvcreate_thin_pool("vgdm", "tpool", 8 * MiB)

    # a PV holding data cannot be moved off without device-mapper, even though the other
    # PV has room (pvmove is never run here: it would leave a half-done move behind)
    pvs = {r["pv_name"]: r for r in conf.report("pvs", "pv_name,pv_used")}
    loaded = d0 if int(pvs[d0]["pv_used"]) else d1
    assert int(pvs[loaded]["pv_used"]) == 20 * MiB
    with pytest.raises(NotSupported, match="pvmove"):
        await backend.remove_device(pool, loaded)
    assert {r["lv_name"] for r in conf.report("lvs", "lv_name", "-a", "vgdm")} == {"data"}
    assert conf.report("pvs", "vg_name", loaded)[0]["vg_name"] == "vgdm"
    assert conf.report("lvs", "lv_name,lv_size", "vgdm") == [
        {"lv_name": "data", "lv_size": str(20 * MiB)}]


async def test_remove_device_refusals(disks):
    conf, (d0, d1, d2) = disks
    backend = LogicalBackend()
    pool = pool_def("vgrm", [d0, d1])
    await backend.build(pool, overwrite=False)
    # 100 MiB: both PVs hold data, neither can take the other's
    await backend.create_volume(pool, vol_def("big", 100 * MiB))
    with pytest.raises(NoSpace, match="losing data"):
        await backend.remove_device(pool, d0)
    with pytest.raises(NotFound):
        await backend.remove_device(pool, d2)       # not in this VG
    single = pool_def("vgone", [d2])
    await backend.build(single, overwrite=False)
    with pytest.raises(InvalidState, match="last physical volume"):
        await backend.remove_device(single, d2)
    assert len(conf.report("pvs", "pv_name")) == 3


async def test_build_refuses_data_unless_overwrite(disks, tmp_path):
    conf, (d0, d1, d2) = disks
    backend = LogicalBackend()
    subprocess.run(["mkfs.ext4", "-q", "-F", d1], check=True)
    pool = pool_def("vgfs", [d0, d1])
    with pytest.raises(InvalidState, match="ext4") as info:
        await backend.build(pool, overwrite=False)
    assert "overwrite" in info.value.message
    assert blkid_type(d1) == "ext4" and pvs_of(conf) == {}   # nothing changed, not even d0

    # a mounted device is refused whatever the options say
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", d1, str(mnt)], check=True)
    try:
        with pytest.raises(Busy):
            await backend.build(pool, overwrite=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert blkid_type(d1) == "ext4" and pvs_of(conf) == {}

    await backend.build(pool, overwrite=True)
    assert blkid_type(d1) == "LVM2_member" and pvs_of(conf)[d1]["vg_name"] == "vgfs"

    # a PV of another VG, or a bare PV, is data too
    other = pool_def("vgother", [d1])
    with pytest.raises(InvalidState, match="volume group 'vgfs'"):
        await backend.build(other, overwrite=False)
    conf.run("pvcreate", "-y", d2)
    with pytest.raises(InvalidState, match="physical volume"):
        await backend.add_devices(pool, [d2], overwrite=False)
    await backend.add_devices(pool, [d2], overwrite=True)
    assert pvs_of(conf)[d2]["vg_name"] == "vgfs"


async def test_bad_definitions(disks, tmp_path):
    _conf, (d0, _d1, _d2) = disks
    backend = LogicalBackend()
    with pytest.raises(InvalidArgument, match="no source device"):
        await backend.build(pool_def("vgnone", []), overwrite=False)
    with pytest.raises(InvalidArgument, match="twice"):
        await backend.build(pool_def("vgtwice", [d0, d0]), overwrite=False)
    plain = tmp_path / "file"
    plain.write_bytes(b"x" * 4096)
    with pytest.raises(InvalidArgument, match="not a block device"):
        await backend.build(pool_def("vgfile", [str(plain)]), overwrite=False)
    with pytest.raises(InvalidArgument):
        await backend.build(pool_def("bad name", [d0]), overwrite=False)
    assert blkid_type(d0) == ""


async def test_start_checks_the_defined_devices(disks):
    _conf, (d0, d1, d2) = disks
    backend = LogicalBackend()
    await backend.build(pool_def("vgchk", [d0, d1]), overwrite=False)
    with pytest.raises(InvalidState, match=f"{d2} is not a physical volume"):
        await backend.start(pool_def("vgchk", [d0, d2]))
    await backend.start(pool_def("vgchk", []))     # no devices named: any PVs will do


# -- with device-mapper (a real kernel: the VM lane) ----------------------------------------

DM_ONLY = pytest.mark.skipif(
    not kernel_has_device_mapper(),
    reason="needs device-mapper: runs in the VM lane "
           "(scripts/vm-test tests/unit/test_logical_backend.py)")


def write_at(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path, offset, size):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


A = b"A" * MiB
B = b"B" * MiB


@DM_ONLY
async def test_dm_activation_data_and_snapshots(disks):
    conf, (d0, d1, d2) = disks
    backend = LogicalBackend()
    assert {"snapshot_volume", "wipe_volume", "create_volume_from"} <= backend.features
    pool = pool_def("vgdm", [d0, d1, d2])
    await backend.build(pool, overwrite=False)
    await backend.start(pool)
    assert await backend.is_active(pool)
    vol = await backend.create_volume(pool, vol_def("data", 16 * MiB))
    write_at(vol.path, 0, A)
    write_at(vol.path, 15 * MiB, B)

    # grow: the data stays
    vol = await backend.resize_volume(pool, vol, 40 * MiB, shrink=False)
    assert read_at(vol.path, 0, MiB) == A and read_at(vol.path, 15 * MiB, MiB) == B

    # Destroy deactivates (no device node), Start brings it back
    held = os.open(vol.path, os.O_RDONLY)
    try:
        with pytest.raises(Busy):
            await backend.stop(pool)           # an open LV is not pulled away
    finally:
        os.close(held)
    await backend.stop(pool)
    assert not os.path.exists(vol.path) and not await backend.is_active(pool)
    await backend.start(pool)
    assert await backend.is_active(pool) and read_at(vol.path, 0, MiB) == A

    # a snapshot keeps the data as of its creation
    snap = await backend.snapshot_volume(pool, vol, "data-snap", 8 * MiB)
    assert snap.backing_store.path == vol.path
    assert (snap.capacity, snap.allocation) == (40 * MiB, 8 * MiB)
    write_at(vol.path, 0, B)
    assert read_at(snap.path, 0, MiB) == A and read_at(vol.path, 0, MiB) == B
    with pytest.raises(Busy, match="data-snap"):
        await backend.delete_volume(pool, vol)
    with pytest.raises(NotSupported):
        await backend.snapshot_volume(pool, snap, "snap-of-snap", 4 * MiB)
    full = await backend.snapshot_volume(pool, vol, "full-snap", 0)
    assert full.allocation >= 40 * MiB
    assert {v.name for v in (await backend.refresh(pool)).volumes} == {
        "data", "data-snap", "full-snap"}

    # clone: the copy holds the snapshot's data, the larger rest reads zeroes
    copy = await backend.create_volume_from(pool, vol_def("copy", 48 * MiB), snap)
    assert copy.capacity == 48 * MiB and copy.backing_store is None
    assert read_at(copy.path, 0, MiB) == A and read_at(copy.path, 15 * MiB, MiB) == B
    assert read_at(copy.path, 44 * MiB, MiB) == bytes(MiB)

    # wipe: zeroes through the device; not while a small snapshot would overflow
    with pytest.raises(Busy, match="data-snap"):
        await backend.wipe_volume(pool, vol)
    assert read_at(snap.path, 0, MiB) == A
    await backend.delete_volume(pool, snap)
    await backend.wipe_volume(pool, vol)
    assert read_at(vol.path, 0, MiB) == bytes(MiB)
    assert read_at(vol.path, 39 * MiB, MiB) == bytes(MiB)
    assert read_at(full.path, 0, MiB) == B and read_at(full.path, 15 * MiB, MiB) == B

    for name in ("copy", "full-snap", "data"):
        await backend.delete_volume(pool, await backend.volume_info(pool, name))
    await backend.stop(pool)
    await backend.delete(pool)
    assert pvs_of(conf) == {}


@DM_ONLY
async def test_dm_thin_volumes(disks):
    _conf, (d0, d1, _d2) = disks
    backend = LogicalBackend()
    pool = pool_def("vgthin", [d0, d1])
    await backend.build(pool, overwrite=False)
    await backend.start(pool)
    # without a thin pool, allocation < capacity still makes a full LV
    full = await backend.create_volume(pool, vol_def("full", 8 * MiB, allocation=0))
    assert full.allocation == 8 * MiB
    await lvm.lvcreate_thin_pool("vgthin", "tpool", 48 * MiB)
    thin = await backend.create_volume(pool, vol_def("thin", 200 * MiB, allocation=0))
    assert thin.capacity == 200 * MiB and thin.allocation == 0
    write_at(thin.path, 0, A * 4)
    thin = await backend.volume_info(pool, "thin")
    assert 4 * MiB <= thin.allocation < 8 * MiB
    assert "tpool" not in {v.name for v in (await backend.refresh(pool)).volumes}

    tsnap = await backend.snapshot_volume(pool, thin, "thin-snap", 0)   # a thin snapshot
    assert tsnap.backing_store.path == thin.path and tsnap.capacity == 200 * MiB
    await backend.wipe_volume(pool, thin)                 # discarded: space comes back
    assert read_at(thin.path, 0, MiB) == bytes(MiB)
    assert read_at(tsnap.path, 0, MiB) == A
    assert (await backend.volume_info(pool, "thin")).allocation < MiB
    await backend.delete_volume(pool, tsnap)
    await backend.delete_volume(pool, thin)
    await backend.delete_volume(pool, full)


@DM_ONLY
async def test_dm_remove_device_moves_data(disks):
    conf, (d0, d1, d2) = disks
    backend = LogicalBackend()
    pool = pool_def("vgmove", [d0, d1])
    await backend.build(pool, overwrite=False)
    await backend.start(pool)
    vol = await backend.create_volume(pool, vol_def("data", 20 * MiB))
    for i in range(20):
        write_at(vol.path, i * MiB, bytes([i + 1]) * MiB)
    pvs = {r["pv_name"]: r for r in conf.report("pvs", "pv_name,pv_used")}
    loaded = d0 if int(pvs[d0]["pv_used"]) else d1
    await backend.remove_device(pool, loaded)            # pvmove, vgreduce, pvremove
    assert loaded not in pvs_of(conf)
    for i in range(20):
        assert read_at(vol.path, i * MiB, MiB) == bytes([i + 1]) * MiB
    await backend.add_devices(pool, [loaded, d2], overwrite=False)
    assert (await backend.refresh(pool)).stats.capacity == 3 * PV_SIZE
