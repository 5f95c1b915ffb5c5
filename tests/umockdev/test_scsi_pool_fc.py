"""A 'scsi' pool on a Fibre Channel HBA found by its WWNN/WWPN (<adapter type='fc_host'>).

This is a fake: no FC HBA exists on these machines (nor in the VM lane's guest), so umockdev
plays one, laid out as the kernel's scsi_transport_fc does (the HBA's fc_host with
node_name/port_name/fabric_name, its scsi_host with a scan attribute, a disk LUN behind a
remote port), and the real daemon runs on it under umockdev-wrapper. Covered: Define +
Start finds the HBA by its WWNs and lists the LUN (Key = WWN); a wrong WWPN and a wrong
parent are clear errors; a LUN that appears on the HBA (a uevent) is announced as
Pool.LunsChanged with no Refresh call.
"""

from __future__ import annotations

from example_storage.adapter.paths import device_path

from tests.bus.helpers import POOL, VOLUME

E = "org.example.Storage.Error."
HBA = "/devices/pci0000:00/0000:00:11.0/host5"
WWNN = "20000000c9831b4b"
WWPN = "10000000c9831b4b"
DEVICE = "org.example.Storage.Device"


def _pg80(serial: str) -> str:
    return (bytes([0, 0x80, 0, len(serial)]) + serial.encode()).hex().upper()


def fc_hba() -> str:
    """The HBA: a SCSI host with its fc_host and scsi_host class devices."""
    return (
        f"P: {HBA}\nE: DEVTYPE=scsi_host\nE: SUBSYSTEM=scsi\n\n"
        f"P: {HBA}/fc_host/host5\nE: SUBSYSTEM=fc_host\n"
        f"A: node_name=0x{WWNN}\nA: port_name=0x{WWPN}\nA: fabric_name=0x2001000dec9877c1\n"
        "A: port_state=Online\nA: vport_create=\nL: device=../../../host5\n\n"
        f"P: {HBA}/scsi_host/host5\nE: SUBSYSTEM=scsi_host\nA: unique_id=5\n"
        "A: proc_name=lpfc\nA: scan=\nL: device=../../../host5\n\n"
    )


def fc_lun(lun: int, name: str, minor: int, wwid: str, serial: str,
           sectors: int = 2097152) -> tuple[str, str]:
    """(record, sysfs path of the block device) of a disk LUN behind remote port 0."""
    scsi = f"{HBA}/rport-5:0-0/target5:0:0/5:0:0:{lun}"
    record = (
        f"P: {scsi}\nE: SUBSYSTEM=scsi\nE: DEVTYPE=scsi_device\nA: type=0\n"
        f"A: vendor=ACME    \nA: model=FC-ARRAY        \nA: wwid={wwid}\nA: state=running\n"
        f"H: vpd_pg80={_pg80(serial)}\n\n"
        f"P: {scsi}/block/{name}\nN: {name}\nE: SUBSYSTEM=block\nE: DEVNAME=/dev/{name}\n"
        f"E: DEVTYPE=disk\nE: MAJOR=8\nE: MINOR={minor}\nA: dev=8:{minor}\n"
        f"A: size={sectors}\nA: ro=0\nA: removable=0\nL: device=../../../5:0:0:{lun}\n\n"
    )
    return record, f"/sys{scsi}/block/{name}"


def fc_pool_xml(name: str, wwpn: str = WWPN, extra: str = "") -> str:
    return (f"<pool type='scsi'><name>{name}</name><source><adapter type='fc_host' "
            f"wwnn='{WWNN}' wwpn='{wwpn}'{extra}/></source>"
            "<target><path>/dev/disk/by-path</path></target></pool>")


async def test_fc_host_adapter_found_by_wwns_and_lists_its_luns(testbed, mock_service):
    lun0, _ = fc_lun(0, "sde", 64, "naa.600a0b800012345600000000", "FCSER0")
    testbed.request("add", record=fc_hba() + lun0)
    svc = await mock_service()

    # a WWPN no port has: not found, and vHBAs are not created here
    bad = await svc.manager("DefinePool", "sa{sv}", fc_pool_xml("bad", "10000000c9831b4c"), {})
    err = await svc.call_error(bad, POOL, "Start", "a{sv}", {})
    assert err.type == E + "NotSupported" and "vport_create" in err.text, err.text
    assert "10000000c9831b4c" in err.text
    assert (await svc.props(bad, POOL))["State"] == "inactive"
    # a parent that is not the port's: refused (this HBA is physical: no parent host)
    wrong = await svc.manager("DefinePool", "sa{sv}",
                              fc_pool_xml("wrong", extra=" parent='host2'"), {})
    err = await svc.call_error(wrong, POOL, "Start", "a{sv}", {})
    assert err.type == E + "InvalidArgument" and "physical HBA" in err.text, err.text
    # malformed WWNs never get that far
    err = await svc.manager_error("DefinePool", "sa{sv}", fc_pool_xml("x", "10000000c98"), {})
    assert err.type == E + "InvalidArgument"

    pool = await svc.manager("DefinePool", "sa{sv}", fc_pool_xml("fc"), {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    (vol,) = await svc.call(pool, POOL, "ListVolumes", "a{sv}", {})
    props = await svc.props(vol, VOLUME)
    assert props["Name"] == "unit:0:0:0" and props["Key"] == "600a0b800012345600000000"
    assert props["Capacity"] == 2097152 * 512 and props["Path"] == "/dev/sde"
    assert (await svc.props(pool, POOL))["State"] == "running"
    dev = await svc.props(device_path("sde"), DEVICE)
    assert dev["Type"] == "lun" and dev["ScsiAddress"] == "5:0:0:0"

    # a LUN appears on the HBA (the array mapped one, the kernel found it): announced
    rec = await svc.recorder()
    lun1, sdf = fc_lun(1, "sdf", 80, "naa.600a0b800012345600000001", "FCSER1", 4194304)
    testbed.request("add", record=lun1)
    testbed.request("uevent", syspath=sdf, action="add")
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=20)
    assert sig.path == pool
    added, removed = sig.body
    assert removed == [] and len(added) == 1 and added[0].endswith("/unit_3a0_3a0_3a1")
    assert (await svc.props(added[0], VOLUME))["Capacity"] == 4194304 * 512
    assert (await svc.props(pool, POOL))["Capacity"] == (2097152 + 4194304) * 512
    assert "Refresh" not in svc.daemon.log()

    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert (await svc.props(pool, POOL))["State"] == "inactive"
