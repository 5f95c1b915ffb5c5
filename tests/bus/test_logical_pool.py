"""A logical (LVM) pool over the bus, host lane: the daemon runs LVM with a private config
(``--lvm-system-dir``) that sees only this test's three loop devices. Without
device-mapper LVM edits metadata only: Start checks that the VG is there (activation is a
no-op), LVs have no device nodes, and what needs them is refused clearly."""

import os
import subprocess

import pytest

from tests.bus.conftest import Service
from tests.bus.helpers import POOL, VOLUME, raw_volume_xml
from tests.harness.bus import PrivateBus
from tests.harness.daemon import StorageDaemon
from tests.harness.loop import LoopDevice
from tests.harness.lvm import PrivateLvm, kernel_has_device_mapper, lvm_installed
from tests.testdata import LIBVIRT_TESTDATA, needs_testdata

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the service runs as root"),
    pytest.mark.skipif(not lvm_installed(), reason="lvm2 is not installed (scripts/bootstrap)"),
]

E = "org.example.Storage.Error."
MiB = 1 << 20
PV_SIZE = 60 * MiB        # a 64 MiB loop device after LVM's label, metadata and alignment


def logical_pool_xml(name: str, vg: str, devices: list[str]) -> str:
    devs = "".join(f"<device path='{d}'/>" for d in devices)
    return (f"<pool type='logical'><name>{name}</name><source>{devs}<name>{vg}</name>"
            f"<format type='lvm2'/></source><target><path>/dev/{vg}</path></target></pool>")


@pytest.fixture
async def lvm_svc(tmp_path):
    """(Service, PrivateLvm, [3 loop device paths]): the daemon with the private LVM
    config. Teardown stops the daemon, removes what LVM sees (only our devices), detaches
    exactly our loop devices."""
    loops: list[LoopDevice] = []
    try:
        for i in range(3):
            loops.append(LoopDevice(tmp_path / f"pv{i}.img", 64 * MiB))
    except Exception as e:  # noqa: BLE001
        for dev in loops:
            dev.detach()
        pytest.skip(f"no loop device: {e}")
    conf = PrivateLvm(tmp_path / "lvm", [d.path for d in loops])
    bus = PrivateBus().start()
    daemon = StorageDaemon(bus, tmp_path / "daemon",
                           extra_args=["--lvm-system-dir", conf.system_dir])
    service = Service(bus, daemon, tmp_path)
    try:
        daemon.start()
        await service.connect()
        yield service, conf, [d.path for d in loops]
    finally:
        await service.close()
        daemon.stop()
        bus.stop()
        conf.cleanup()
        for dev in loops:
            dev.detach()


def pvs(conf):
    return {r["pv_name"]: r for r in conf.report("pvs", "pv_name,vg_name,pv_uuid,pv_size,pv_free")}


def lvs(conf, vg):
    return {r["lv_name"]: r for r in conf.report("lvs", "lv_name,lv_uuid,lv_size", vg)}


def blkid_type(dev):
    res = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip()


async def test_logical_pool_life_cycle(lvm_svc):
    svc, conf, (d0, d1, d2) = lvm_svc
    xml = logical_pool_xml("vms", "vgvms", [d0, d1])
    pool = await svc.manager("DefinePool", "sa{sv}", xml, {})
    assert (await svc.props(pool, POOL))["TargetPath"] == "/dev/vgvms"

    err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
    assert err.type == E + "InvalidState" and "Build" in err.text

    await svc.call(pool, POOL, "Build", "a{sv}", {})
    assert {p: r["vg_name"] for p, r in pvs(conf).items()} == {d0: "vgvms", d1: "vgvms"}
    # the daemon's LVM used the private config (its metadata backups land there)
    assert (conf.dir / "backup" / "vgvms").is_file()
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    props = await svc.props(pool, POOL)
    assert props["State"] == "running"
    assert (props["Capacity"], props["Allocation"], props["Available"]) == (
        2 * PV_SIZE, 0, 2 * PV_SIZE)
    uuids = {p: r["pv_uuid"] for p, r in pvs(conf).items()}
    assert sorted(props["Devices"]) == [[d0, uuids[d0], PV_SIZE, PV_SIZE],
                                        [d1, uuids[d1], PV_SIZE, PV_SIZE]]

    # an LV: Key = LV UUID, Path = /dev/VG/LV
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("disk1", "40", "MiB"), {})
    vprops = await svc.props(vol, VOLUME)
    assert vprops["Key"] == lvs(conf, "vgvms")["disk1"]["lv_uuid"]
    assert vprops["Path"] == "/dev/vgvms/disk1" and vprops["Type"] == "block"
    assert vprops["Capacity"] == vprops["Allocation"] == 40 * MiB
    assert (await svc.props(pool, POOL))["Available"] == 2 * PV_SIZE - 40 * MiB

    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               raw_volume_xml("huge", "1", "GiB"), {})
    assert err.type == E + "NoSpace", err.text
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               raw_volume_xml("snapshot0", "1", "MiB"), {})
    assert err.type == E + "InvalidArgument" and "reserved" in err.text
    assert set(lvs(conf, "vgvms")) == {"disk1"}

    # resize: grow across both PVs; shrink only with the option
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 80 * MiB, {})
    assert int(lvs(conf, "vgvms")["disk1"]["lv_size"]) == 80 * MiB
    assert (await svc.props(vol, VOLUME))["Capacity"] == 80 * MiB
    err = await svc.call_error(vol, VOLUME, "Resize", "ta{sv}", 20 * MiB, {})
    assert err.type == E + "InvalidArgument"
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 20 * MiB, {"shrink": svc.variant("b", True)})
    assert int(lvs(conf, "vgvms")["disk1"]["lv_size"]) == 20 * MiB

    # what needs device-mapper is refused clearly, nothing made
    if not kernel_has_device_mapper():
        err = await svc.call_error(vol, VOLUME, "Snapshot", "sta{sv}", "snap1", 8 * MiB, {})
        assert err.type == E + "NotSupported" and "device-mapper" in err.text
        err = await svc.call_error(vol, VOLUME, "Wipe", "a{sv}", {})
        assert err.type == E + "NotSupported" and "device-mapper" in err.text
        assert set(lvs(conf, "vgvms")) == {"disk1"}

    # the pool's XML lists its physical volumes
    desc = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {})
    assert f"<device path='{d0}'/>" in desc and f"<device path='{d1}'/>" in desc
    assert "<name>vgvms</name>" in desc and "<format type='lvm2'/>" in desc
    assert f"<capacity unit='bytes'>{2 * PV_SIZE}</capacity>" in desc

    # extend the VG with a third PV, then take it out again (it is empty)
    await svc.call(pool, POOL, "AddDevices", "asa{sv}", [d2], {})
    assert pvs(conf)[d2]["vg_name"] == "vgvms"
    props = await svc.props(pool, POOL)
    assert props["Capacity"] == 3 * PV_SIZE and len(props["Devices"]) == 3
    inactive_xml = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}",
                                  {"inactive": svc.variant("b", True)})
    assert f"<device path='{d2}'/>" in inactive_xml        # the definition keeps it

    # restart (a crash): still running, same volume, same devices
    svc.daemon.kill9()
    await svc.restart()
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and len(props["Devices"]) == 3
    vprops = await svc.props(vol, VOLUME)
    assert vprops["Capacity"] == 20 * MiB
    assert vprops["Key"] == lvs(conf, "vgvms")["disk1"]["lv_uuid"]

    await svc.call(pool, POOL, "RemoveDevice", "sa{sv}", d2, {})
    assert d2 not in pvs(conf) and blkid_type(d2) == ""
    props = await svc.props(pool, POOL)
    assert props["Capacity"] == 2 * PV_SIZE and len(props["Devices"]) == 2
    desc = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {})
    assert f"<device path='{d2}'/>" not in desc

    # Delete refuses a VG that still holds LVs
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    err = await svc.call_error(pool, POOL, "Delete", "a{sv}", {})
    assert err.type == E + "Busy" and "disk1" in err.text
    assert set(lvs(conf, "vgvms")) == {"disk1"}

    await svc.call(pool, POOL, "Start", "a{sv}", {})
    await svc.call(vol, VOLUME, "Delete", "a{sv}", {})
    assert lvs(conf, "vgvms") == {}
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    await svc.call(pool, POOL, "Delete", "a{sv}", {})
    assert pvs(conf) == {}
    assert blkid_type(d0) == blkid_type(d1) == ""


async def test_logical_build_refuses_a_filesystem(lvm_svc):
    svc, conf, (d0, d1, _d2) = lvm_svc
    subprocess.run(["mkfs.ext4", "-q", "-F", d1], check=True)
    pool = await svc.manager("DefinePool", "sa{sv}",
                             logical_pool_xml("fsp", "vgfs", [d0, d1]), {})
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {})
    assert err.type == E + "InvalidState", err.text
    assert "ext4" in err.text and "overwrite" in err.text
    assert blkid_type(d1) == "ext4" and pvs(conf) == {}

    await svc.call(pool, POOL, "Build", "a{sv}", {"overwrite": svc.variant("b", True)})
    assert {p: r["vg_name"] for p, r in pvs(conf).items()} == {d0: "vgfs", d1: "vgfs"}

    # a PV of another VG is refused the same way
    other = await svc.manager("DefinePool", "sa{sv}",
                              logical_pool_xml("other", "vgother", [d1]), {})
    err = await svc.call_error(other, POOL, "Build", "a{sv}", {})
    assert err.type == E + "InvalidState" and "vgfs" in err.text
    assert pvs(conf)[d1]["vg_name"] == "vgfs"


@needs_testdata("storagevolxml2xmlin")
async def test_libvirt_logical_volume_xml(lvm_svc, tmp_path):
    """libvirt's vol-logical.xml (a 1.94 GiB LV 'Swap' in VG HostVG) is created as it is;
    the key it carries is LVM's to choose. vol-logical-backing.xml asks for a snapshot."""
    svc, conf, _ = lvm_svc
    big = LoopDevice(tmp_path / "big.img", 3 << 30)      # sparse: metadata only
    conf.allow(big.path)
    try:
        pool = await svc.manager("DefinePool", "sa{sv}",
                                 logical_pool_xml("HostVG", "HostVG", [big.path]), {})
        await svc.call(pool, POOL, "Build", "a{sv}", {})
        await svc.call(pool, POOL, "Start", "a{sv}", {})
        xml = (LIBVIRT_TESTDATA / "storagevolxml2xmlin" / "vol-logical.xml").read_text()
        vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", xml, {})
        props = await svc.props(vol, VOLUME)
        assert props["Path"] == "/dev/HostVG/Swap" and props["Capacity"] == 2080374784
        assert props["Key"] == lvs(conf, "HostVG")["Swap"]["lv_uuid"]
        assert props["Key"] != "r4xkCv-MQhr-WKIT-R66x-Epn2-e8hG-1Z5gY0"
        desc = await svc.call(vol, VOLUME, "GetXMLDesc", "a{sv}", {})
        assert "<volume type='block'>" in desc and "<path>/dev/HostVG/Swap</path>" in desc

        backing = (LIBVIRT_TESTDATA / "storagevolxml2xmlin" / "vol-logical-backing.xml")
        xml = backing.read_text().replace("<name>Swap</name>", "<name>Swap2</name>")
        err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}", xml, {})
        # /dev/HostVG/snapshot does not exist; were it there, the host would need dm
        assert err.type == E + "NotFound" and "snapshot" in err.text
        assert set(lvs(conf, "HostVG")) == {"Swap"}
        await svc.call(vol, VOLUME, "Delete", "a{sv}", {})
        await svc.call(pool, POOL, "Destroy", "a{sv}", {})
        await svc.call(pool, POOL, "Delete", "a{sv}", {})
        assert big.path not in pvs(conf)
    finally:
        conf.cleanup()
        conf.forget(big.path)
        big.detach()


async def test_find_pool_sources_lists_volume_groups(lvm_svc):
    """SolidICE enumerateVGs: every VG with its PVs, as libvirt's source list, ready to
    be pasted into a pool definition."""
    from lxml import etree

    svc, conf, (d0, d1, d2) = lvm_svc
    xml = await svc.manager("FindPoolSources", "ssa{sv}", "logical", "", {})
    assert etree.fromstring(xml.encode()).findall("source") == []
    for name, vg, devs in (("a", "vga", [d0, d1]), ("b", "vgb", [d2])):
        pool = await svc.manager("DefinePool", "sa{sv}", logical_pool_xml(name, vg, devs), {})
        await svc.call(pool, POOL, "Build", "a{sv}", {})
    xml = await svc.manager("FindPoolSources", "ssa{sv}", "logical", "<source/>", {})
    found = {
        src.findtext("name"): (sorted(d.get("path") for d in src.findall("device")),
                               src.find("format").get("type"))
        for src in etree.fromstring(xml.encode()).findall("source")
    }
    assert found == {"vga": (sorted([d0, d1]), "lvm2"), "vgb": ([d2], "lvm2")}
    # the same answer LVM itself gives
    assert {r["pv_name"]: r["vg_name"] for r in pvs(conf).values()} == {
        d0: "vga", d1: "vga", d2: "vgb"}
