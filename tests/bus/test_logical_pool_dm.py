"""Every SolidICE LVM operation over D-Bus on a real kernel (device-mapper): runs in the
VM lane (tests/vm/test_vm_lane.py), skipped on a host without device-mapper.

What a user checks: the LV's device node holds what was written, through extend,
deactivate/activate, a snapshot (data as of its creation), moving a PV's data off it
(pvmove) and a wipe; the VG is listed by FindPoolSources and goes away cleanly.
"""

import os

import pytest
from lxml import etree

from tests.bus.helpers import POOL, VOLUME, raw_volume_xml
from tests.bus.test_logical_pool import logical_pool_xml, lvm_svc, pvs  # noqa: F401 (fixture)
from tests.harness.lvm import kernel_has_device_mapper

pytestmark = pytest.mark.skipif(not kernel_has_device_mapper(),
                                reason="needs device-mapper: runs in the VM lane")
MiB = 1 << 20


def _write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _pattern(tag: bytes) -> bytes:
    return (tag * (MiB // len(tag) + 1))[:MiB]


async def test_solidice_operations_on_a_real_kernel(lvm_svc):  # noqa: F811 (the fixture)
    svc, conf, (d0, d1, d2) = lvm_svc
    A, B, C = _pattern(b"A-data "), _pattern(b"B-data "), _pattern(b"C-data ")

    # createVolumeGroup
    pool = await svc.manager("DefinePool", "sa{sv}", logical_pool_xml("dm", "vgdm", [d0, d1]), {})
    await svc.call(pool, POOL, "Build", "a{sv}", {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})

    # createLV: an active LV with a device node
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("data", "16", "MiB"),
                         {})
    path = (await svc.props(vol, VOLUME))["Path"]
    assert path == "/dev/vgdm/data" and os.path.exists(path)
    _write(path, 0, A)

    # extendLV: the data survives, the new space is usable
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 32 * MiB, {})
    assert (await svc.props(vol, VOLUME))["Capacity"] == 32 * MiB
    assert _read(path, 0, MiB) == A
    _write(path, 20 * MiB, B)

    # snapshotLV: the snapshot keeps the data as of its creation
    snap = await svc.call(vol, VOLUME, "Snapshot", "sta{sv}", "data-snap", 8 * MiB, {})
    sprops = await svc.props(snap, VOLUME)
    assert sprops["BackingStore"] == path and sprops["Path"] == "/dev/vgdm/data-snap"
    _write(path, 0, C)
    assert _read(sprops["Path"], 0, MiB) == A
    assert _read(path, 0, MiB) == C

    # deactivate / activate the VG
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert not os.path.exists(path)
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert _read(path, 0, MiB) == C and _read(path, 20 * MiB, MiB) == B
    await svc.call(snap, VOLUME, "Delete", "a{sv}", {})

    # extendVolumeGroup, then removePV: its extents are moved first, data intact
    await svc.call(pool, POOL, "AddDevices", "asa{sv}", [d2], {})
    assert len((await svc.props(pool, POOL))["Devices"]) == 3
    await svc.call(pool, POOL, "RemoveDevice", "sa{sv}", d0, {})
    assert d0 not in pvs(conf)
    assert sorted(d[0] for d in (await svc.props(pool, POOL))["Devices"]) == sorted([d1, d2])
    assert _read(path, 0, MiB) == C and _read(path, 20 * MiB, MiB) == B

    # enumerateVGs
    sources = etree.fromstring(
        (await svc.manager("FindPoolSources", "ssa{sv}", "logical", "", {})).encode())
    (src,) = [s for s in sources.findall("source") if s.findtext("name") == "vgdm"]
    assert sorted(d.get("path") for d in src.findall("device")) == sorted([d1, d2])

    # wipe: zeroes over the whole LV
    await svc.call(vol, VOLUME, "Wipe", "a{sv}", {})
    assert _read(path, 0, 32 * MiB) == bytes(32 * MiB)

    # removeLV, removeVolumeGroup
    await svc.call(vol, VOLUME, "Delete", "a{sv}", {})
    assert not os.path.exists(path)
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    await svc.call(pool, POOL, "Delete", "a{sv}", {})
    assert pvs(conf) == {}
