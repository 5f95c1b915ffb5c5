"""Device objects for hardware this machine lacks, faked with umockdev: a SCSI disk with
WWN/serial/vendor/model, two paths under a multipath map, hotplug, and a storm of
10,000 change events. The daemon is the real one, under umockdev-wrapper."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from example_storage.adapter.paths import device_path

from tests.bus.helpers import MANAGER_PATH

MANAGER = "org.example.Storage.Manager"
DEVICE = "org.example.Storage.Device"
E = "org.example.Storage.Error."

SCSI_WWN = "0x5000c500a1b2c3d4"
SCSI_SERIAL = "ZA1B2C3D"
MPATH_WWID = "360014055f0a1b2c3d4e5f60718293a4b"    # as multipathd names it (type 3 = NAA)
MPATH_WWN = "0x60014055f0a1b2c3d4e5f60718293a4b"
MPATH_SERIAL = "MPSER0001"
HBA = "/devices/pci0000:00/0000:00:10.0"
SDA = f"/sys{HBA}/host0/target0:0:0/0:0:0:0/block/sda"
SDD_LUN = f"/sys{HBA}/host3/target3:0:0/3:0:0:0"
SDD = f"{SDD_LUN}/block/sdd"


def _pg80(serial: str) -> str:
    """A SCSI VPD page 0x80 (unit serial number) as the hex umockdev's H: lines want."""
    data = bytes([0, 0x80, 0, len(serial)]) + serial.encode()
    return data.hex().upper()


def scsi_disk(host: int, lun: int, name: str, major_minor: str, wwid: str, serial: str,
              sectors: int = 2097152, holders: tuple[str, ...] = ()) -> str:
    """A SCSI LUN and its sd block device, as umockdev-record would write them."""
    scsi = f"{HBA}/host{host}/target{host}:0:0/{host}:0:0:{lun}"
    major, minor = major_minor.split(":")
    held = "".join(f"A: holders/{h}=\n" for h in holders)
    return (
        f"P: {scsi}\nE: SUBSYSTEM=scsi\nE: DEVTYPE=scsi_device\n"
        f"A: vendor=ACME    \nA: model=SuperDisk 9000  \nA: wwid={wwid}\n"
        f"H: vpd_pg80={_pg80(serial)}\n\n"
        f"P: {scsi}/block/{name}\nN: {name}\nE: SUBSYSTEM=block\nE: DEVNAME=/dev/{name}\n"
        f"E: DEVTYPE=disk\nE: MAJOR={major}\nE: MINOR={minor}\n"
        f"A: dev={major_minor}\nA: size={sectors}\nA: ro=0\nA: removable=0\n{held}"
        f"L: device=../../../{host}:0:0:{lun}\n\n"
    )


def multipath_map(name: str, dm_name: str, wwid: str, slaves: tuple[str, ...]) -> str:
    return (
        f"P: /devices/virtual/block/{name}\nN: {name}\nE: SUBSYSTEM=block\n"
        f"E: DEVNAME=/dev/{name}\nE: DEVTYPE=disk\nE: MAJOR=252\nE: MINOR=0\n"
        f"A: dev=252:0\nA: size=4194304\nA: ro=0\nA: removable=0\n"
        f"A: dm/name={dm_name}\nA: dm/uuid=mpath-{wwid}\n"
        + "".join(f"A: slaves/{s}=\n" for s in slaves) + "\n"
    )


def host_records() -> str:
    return (
        scsi_disk(0, 0, "sda", "8:0", f"naa.{SCSI_WWN[2:].upper()}", SCSI_SERIAL)
        + scsi_disk(1, 1, "sdb", "8:16", f"naa.{MPATH_WWN[2:]}", MPATH_SERIAL,
                    4194304, holders=("dm-0",))
        + scsi_disk(2, 1, "sdc", "8:32", f"naa.{MPATH_WWN[2:]}", MPATH_SERIAL,
                    4194304, holders=("dm-0",))
        + multipath_map("dm-0", "mpatha", MPATH_WWID, ("sdb", "sdc"))
    )


async def _lookup(svc, ident: str) -> str:
    return await svc.manager("LookupDevice", "sa{sv}", ident, {})


async def start_on_host(testbed, mock_service):
    testbed.request("add", record=host_records())
    testbed.request("symlink", target="../../sda", link=f"/dev/disk/by-id/wwn-{SCSI_WWN}")
    return await mock_service()


async def test_scsi_disk_with_wwn_serial_vendor_model(testbed, mock_service):
    svc = await start_on_host(testbed, mock_service)
    sda = device_path("sda")
    props = await svc.props(sda, DEVICE)
    assert props["Type"] == "lun"
    assert props["WWN"] == SCSI_WWN
    assert props["Serial"] == SCSI_SERIAL
    assert (props["Vendor"], props["Model"]) == ("ACME", "SuperDisk 9000")
    assert props["ScsiAddress"] == "0:0:0:0"
    assert props["Size"] == 2097152 * 512
    assert props["Path"] == "/dev/sda" and props["MajorMinor"] == "8:0"
    assert props["Symlinks"] == [f"/dev/disk/by-id/wwn-{SCSI_WWN}"]
    assert props["InUse"] is False and props["Parent"] == "/"

    for ident in (SCSI_WWN, SCSI_WWN.upper().replace("0X", "naa."), f"wwn-{SCSI_WWN}",
                  SCSI_WWN[:18], SCSI_SERIAL, "sda", "/dev/sda",
                  f"/dev/disk/by-id/wwn-{SCSI_WWN}"):
        assert await _lookup(svc, ident) == sda, ident

    err = await svc.manager_error("LookupDevice", "sa{sv}", "0x5000c500ffffffff", {})
    assert err.type == E + "NotFound"
    err = await svc.manager_error("LookupDevice", "sa{sv}", "", {})
    assert err.type == E + "InvalidArgument"


async def test_multipath_map_stands_for_its_paths(testbed, mock_service):
    svc = await start_on_host(testbed, mock_service)
    dm0, sdb, sdc = device_path("dm-0"), device_path("sdb"), device_path("sdc")

    listed = await svc.manager("ListDevices", "a{sv}", {})
    assert dm0 in listed and device_path("sda") in listed
    assert sdb not in listed and sdc not in listed
    everything = await svc.manager("ListDevices", "a{sv}", {"all": svc.variant("b", True)})
    assert {dm0, sdb, sdc, device_path("sda")} <= set(everything)

    for ident in (MPATH_WWN, MPATH_WWID, f"naa.{MPATH_WWN[2:]}", MPATH_SERIAL, "mpatha",
                  "/dev/mapper/mpatha", "dm-0", "/dev/dm-0"):
        assert await _lookup(svc, ident) == dm0, ident
    # a path can still be named on its own
    assert await _lookup(svc, "sdb") == sdb

    m = await svc.props(dm0, DEVICE)
    assert m["Type"] == "multipath" and m["DmName"] == "mpatha"
    assert m["DmUUID"] == f"mpath-{MPATH_WWID}"
    assert m["WWN"] == MPATH_WWN and m["Serial"] == MPATH_SERIAL
    assert m["Slaves"] == [sdb, sdc]
    assert "/dev/mapper/mpatha" in m["Symlinks"]
    for member in (sdb, sdc):
        p = await svc.props(member, DEVICE)
        assert p["Multipath"] == dm0 and p["Holders"] == [dm0]
        assert p["InUse"] is True and p["InUseReasons"] == ["member of multipath mpatha"]


async def test_hotplug_add_and_remove_are_signalled_in_order(testbed, mock_service):
    svc = await start_on_host(testbed, mock_service)
    rec = await svc.recorder()
    sdd = device_path("sdd")
    record = scsi_disk(3, 0, "sdd", "8:48", "naa.5000c500deadbeef", "HOTPLUG1")

    testbed.request("add", record=record)
    testbed.request("uevent", syspath=SDD, action="add")
    added = await rec.wait_for(lambda s: s.member == "DeviceAdded" and s.body[0] == sdd)
    assert added.body[1]["WWN"] == "0x5000c500deadbeef"
    assert added.body[1]["Serial"] == "HOTPLUG1" and added.body[1]["Type"] == "lun"
    assert await _lookup(svc, "HOTPLUG1") == sdd
    await rec.wait_for(lambda s: s.member == "InterfacesAdded" and s.body[0] == sdd)

    testbed.request("uevent", syspath=SDD, action="remove")
    testbed.request("remove", syspath=SDD, also=[SDD_LUN])
    await rec.wait_for(lambda s: s.member == "DeviceRemoved" and s.body[0] == sdd)
    await rec.wait_for(lambda s: s.member == "InterfacesRemoved" and s.body[0] == sdd)
    err = await svc.manager_error("LookupDevice", "sa{sv}", "HOTPLUG1", {})
    assert err.type == E + "NotFound"

    # add/remove in quick succession: none is lost, none reordered
    rec.clear()
    testbed.request("cycle", record=record, syspath=SDD, also=[SDD_LUN], times=5)
    await asyncio.sleep(0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seq = [s.member for s in rec.signals
               if s.member in ("DeviceAdded", "DeviceRemoved") and s.body[0] == sdd]
        if len(seq) >= 10:
            break
        await asyncio.sleep(0.1)
    assert seq == ["DeviceAdded", "DeviceRemoved"] * 5
    assert sdd not in await svc.manager("ListDevices", "a{sv}", {"all": svc.variant("b", True)})


async def test_storm_of_change_events_is_coalesced(testbed, mock_service):
    svc = await start_on_host(testbed, mock_service)
    sda = device_path("sda")
    rec = await svc.recorder()
    # a hundred different sizes: without coalescing, a hundred signals at least
    sizes = [str(2097152 + 2048 * i) for i in range(1, 101)]
    rss_before = _rss_kib(svc.daemon.pid)

    result = testbed.request("storm", syspath=SDA, count=10_000, attribute="size",
                             values=sizes)
    storm_seconds = result["seconds"]
    final = int(sizes[-1]) * 512
    await rec.wait_for(lambda s: s.member == "DeviceChanged" and s.body[0] == sda
                       and s.body[1].get("Size") == final, timeout=30)
    await asyncio.sleep(1.0)   # anything still pending would come now

    changed = rec.matching(lambda s: s.member == "DeviceChanged" and s.body[0] == sda)
    props_changed = rec.matching(lambda s: s.member == "PropertiesChanged" and s.path == sda)
    # one refresh at once, then at most one per 200 ms interval
    bound = 2 + storm_seconds / 0.2 + 2
    assert 1 <= len(changed) <= bound, (len(changed), storm_seconds)
    assert len(props_changed) == len(changed)
    props = await svc.props(sda, DEVICE)
    assert props["Size"] == final
    assert props["WWN"] == SCSI_WWN and props["Serial"] == SCSI_SERIAL
    # nothing else was announced for other devices
    assert not rec.matching(lambda s: s.member.startswith("Device") and s.body[0] != sda)
    rss_after = _rss_kib(svc.daemon.pid)
    if rss_before and rss_after:
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
    print(f"storm: 10000 events in {storm_seconds:.2f}s -> {len(changed)} DeviceChanged")


def _rss_kib(pid: int | None) -> int:
    """Resident memory of the daemon (the python under the wrapper: same pid, exec'd)."""
    if pid is None:
        return 0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_manager_path_is_the_object_manager(testbed, mock_service):
    svc = await start_on_host(testbed, mock_service)
    objects = await svc.managed_objects()
    devices = {p for p in objects if p.startswith(MANAGER_PATH + "/devices/")}
    assert devices == {device_path(n) for n in ("sda", "sdb", "sdc", "dm-0")}
    assert objects[device_path("sda")][DEVICE]["Serial"] == SCSI_SERIAL
