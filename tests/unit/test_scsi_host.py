"""SCSI hosts and LUNs from sysfs (system/scsi_host.py) on trees captured in the VM lane's
guest (tests/unit/data/scsi: scsi_debug's host, an iSCSI session's host), and the scsi
pool's adapter matching (backends/scsi.py) on a hand-made Fibre Channel tree: no FC HBA
exists on these machines, so the FC layout (fc_host's node_name/port_name, a vport below
its parent HBA) is written after the kernel's scsi_transport_fc."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from example_storage.backends.scsi import ScsiBackend, lun_refresh_result, volume_path
from example_storage.errors import InvalidArgument, NotFound, NotSupported
from example_storage.model.poolxml import parse_pool_xml
from example_storage.system.scsi_host import (
    ScsiSysfs,
    fc_parent_of,
    format_pci_address,
    normalize_wwn,
    parse_host_name,
    parse_scsi_address,
    parse_vpd_pg83,
    pci_address_of,
    stable_link,
    wwn_from_wwid,
)

from tests.unit import sysfs_capture

DATA = Path(__file__).parent / "data" / "scsi"
MiB = 1 << 20


@pytest.fixture
def debug_root(tmp_path) -> Path:
    return sysfs_capture.load(DATA / "scsi-debug.json", tmp_path / "root")


@pytest.fixture
def iscsi_root(tmp_path) -> Path:
    return sysfs_capture.load(DATA / "iscsi-session.json", tmp_path / "root")


# -- pure parsers ----------------------------------------------------------------------
def test_names_and_addresses():
    assert parse_host_name("host3") == 3 and parse_host_name("scsi_host12") == 12
    assert parse_host_name("host") is None and parse_host_name("sda") is None
    assert parse_host_name("host3/../x") is None
    assert parse_scsi_address("2:0:0:1") == (2, 0, 0, 1)
    assert parse_scsi_address("target2:0:0") is None and parse_scsi_address("host2") is None
    assert normalize_wwn("0x20000000C9831B4B") == "20000000c9831b4b"
    assert normalize_wwn("20000000c9831b4b") == "20000000c9831b4b"
    assert normalize_wwn("0x2000") == "" and normalize_wwn("zz000000c9831b4b") == ""
    assert format_pci_address({"domain": "0x0000", "bus": "0x00", "slot": "0x1f",
                               "function": "0x2", "unique_id": "1"}) == "0000:00:1f.2"
    assert pci_address_of("/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/host5") \
        == "0000:02:00.0"
    assert pci_address_of("/sys/devices/platform/host1") == ""
    assert fc_parent_of("/sys/devices/pci0000:00/0000:00:11.0/host5/vport-5:0-0/host7") \
        == "host5"
    assert fc_parent_of("/sys/devices/pci0000:00/0000:00:11.0/host5") == ""
    assert wwn_from_wwid("naa.60000000000000000E00000000010001") \
        == "60000000000000000e00000000010001"
    assert wwn_from_wwid("eui.0025388b71b4a5e1") == "0025388b71b4a5e1"
    assert wwn_from_wwid("t10.ATA     QEMU HARDDISK") == ""


def test_vpd_page_83_of_scsi_debug(debug_root):
    raw = (debug_root / "sys/bus/scsi/devices/0:0:0:1/vpd_pg83").read_bytes()
    designators = parse_vpd_pg83(raw)
    kinds = [(d.type, d.association) for d in designators]
    assert (1, 0) in kinds and (3, 0) in kinds          # T10 vendor id, NAA of the LU
    naa = [d for d in designators if (d.type, d.association) == (3, 0)]
    assert naa[0].hex == "33333330000007d1"
    assert [d.text for d in designators if d.type == 1][0].startswith("Linux")
    assert parse_vpd_pg83(b"") == [] and parse_vpd_pg83(b"\x00\x80\x00\x00") == []
    assert len(parse_vpd_pg83(raw[:40])) < len(designators)   # truncated: what is whole


# -- the reader on captured trees -------------------------------------------------------
def test_scsi_debug_host_and_luns(debug_root):
    r = ScsiSysfs(debug_root)
    (host,) = r.hosts()
    assert (host.name, host.number, host.proc_name, host.unique_id) == \
        ("host0", 0, "scsi_debug", 0)
    assert host.pci_address == "" and host.fc is None
    assert r.host("host7") is None and r.host("sda") is None
    luns = r.luns(0)
    assert [(lun.address, lun.volume_name, lun.node) for lun in luns] == [
        ("0:0:0:0", "unit:0:0:0", "/dev/sda"), ("0:0:0:1", "unit:0:0:1", "/dev/sdb")]
    assert [lun.wwn for lun in luns] == ["33333330000007d0", "33333330000007d1"]
    assert [lun.serial for lun in luns] == ["2000", "2001"]
    assert all(lun.size == 16 * MiB and lun.device_type == 0 for lun in luns)
    assert luns[0].vendor == "Linux" and luns[0].model == "scsi_debug"
    assert r.luns(1) == [] and r.lun("9:0:0:0") is None


def test_iscsi_session_host_and_luns(iscsi_root):
    r = ScsiSysfs(iscsi_root)
    (host,) = r.hosts()
    assert (host.name, host.proc_name) == ("host1", "iscsi_tcp")
    controller, lun1, lun2 = r.luns(1)
    assert controller.device_type == 12 and controller.block == ""   # tgtd's controller
    assert (lun1.volume_name, lun1.size, lun1.serial) == ("unit:0:0:1", 8 * MiB, "CAPSER1")
    assert lun2.size == 12 * MiB + 4096
    assert lun1.wwn == "60000000000000000e00000000010001"
    assert lun2.wwn == "60000000000000000e00000000010002"
    assert lun1.node.startswith("/dev/sd") and lun1.state == "running"


def test_luns_as_volumes(iscsi_root):
    luns = ScsiSysfs(iscsi_root).luns(1)
    result = lun_refresh_result(luns, "/dev/disk/by-path")
    assert [v.name for v in result.volumes] == ["unit:0:0:1", "unit:0:0:2"]
    v1, v2 = result.volumes
    assert v1.key == "60000000000000000e00000000010001" and v1.type == "block"
    assert v1.capacity == v1.allocation == 8 * MiB and v1.path == luns[1].node
    assert v1.serial == "CAPSER1"
    assert result.stats.capacity == 20 * MiB + 4096 and result.stats.available == 0
    assert [d.path for d in result.devices] == [v1.path, v2.path]


def test_stable_link_when_udev_made_one(tmp_path):
    node = tmp_path / "sdc"
    node.write_text("")
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    (by_path / "ip-10.0.2.2:3260-iscsi-iqn.x-lun-1").symlink_to(node)
    (by_path / "other").symlink_to(tmp_path / "sdd")
    assert stable_link(str(by_path), str(node)) == str(by_path / "ip-10.0.2.2:3260-iscsi-iqn"
                                                                  ".x-lun-1")
    assert stable_link(str(tmp_path / "missing"), str(node)) == ""
    # only a /dev/disk/by-* style target is searched; /dev itself or elsewhere: the node
    assert volume_path("/dev", "/dev/sdc") == "/dev/sdc"
    assert volume_path("/srv/luns", "/dev/sdc") == "/dev/sdc"
    assert volume_path("/dev/disk/by-esnone", "/dev/sdc") == "/dev/sdc"


# -- Fibre Channel and PCI adapters (a hand-made tree) ---------------------------------
HBA = "sys/devices/pci0000:00/0000:00:11.0/host5"
VHBA = f"{HBA}/vport-5:0-0/host7"


def _host(root: Path, devdir: str, name: str, unique_id: int, proc: str) -> None:
    sh = root / devdir / "scsi_host" / name
    sh.mkdir(parents=True)
    (sh / "unique_id").write_text(f"{unique_id}\n")
    (sh / "proc_name").write_text(f"{proc}\n")
    (sh / "scan").write_text("")
    (sh / "device").symlink_to("../../../" + name)
    link = root / "sys/class/scsi_host" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(sh, link.parent))


def _fc(root: Path, devdir: str, name: str, wwnn: str, wwpn: str, fabric: str,
        vport_create: bool) -> None:
    fc = root / devdir / "fc_host" / name
    fc.mkdir(parents=True)
    for attr, value in (("node_name", wwnn), ("port_name", wwpn), ("fabric_name", fabric),
                        ("port_state", "Online")):
        (fc / attr).write_text(value + "\n")
    if vport_create:
        (fc / "vport_create").write_text("")
    link = root / "sys/class/fc_host" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(fc, link.parent))


@pytest.fixture
def fc_root(tmp_path) -> Path:
    root = tmp_path / "fc"
    _host(root, HBA, "host5", 5, "lpfc")
    _fc(root, HBA, "host5", "0x20000000c9831b4b", "0x10000000c9831b4b", "0x2001000dec9877c1",
        True)
    _host(root, VHBA, "host7", 7, "lpfc")
    _fc(root, VHBA, "host7", "0x5001a4a1b2c3d4e5", "0x5001a4a1b2c3d4e6", "0x2001000dec9877c1",
        False)
    lun = root / VHBA / "rport-7:0-0/target7:0:0/7:0:0:3"
    (lun / "block/sdh").mkdir(parents=True)
    (lun / "type").write_text("0\n")
    (lun / "wwid").write_text("naa.600a0b800012345600000003\n")
    (lun / "block/sdh/size").write_text("4096\n")
    (lun / "block/sdh/uevent").write_text("MAJOR=8\nMINOR=112\nDEVNAME=sdh\nDEVTYPE=disk\n")
    bus = root / "sys/bus/scsi/devices"
    bus.mkdir(parents=True)
    (bus / "7:0:0:3").symlink_to(os.path.relpath(lun, bus))
    return root


def test_fc_hosts_found_by_wwns_with_their_parent(fc_root):
    r = ScsiSysfs(fc_root)
    hba = r.find_fc_host("0x20000000C9831B4B", "10000000c9831b4b")
    assert hba is not None and hba.name == "host5" and hba.pci_address == "0000:00:11.0"
    assert hba.fc.parent == "" and hba.fc.vport_capable
    vhba = r.find_fc_host("5001a4a1b2c3d4e5", "5001a4a1b2c3d4e6")
    assert vhba.name == "host7" and vhba.fc.parent == "host5" and not vhba.fc.vport_capable
    assert vhba.fc.fabric_name == "2001000dec9877c1"
    assert r.find_fc_host("5001a4a1b2c3d4e5", "5001a4a1b2c3d4e7") is None
    assert r.find_by_parentaddr("0000:00:11.0", 5).name == "host5"
    assert r.find_by_parentaddr("0000:00:11.0", 6) is None
    assert [lun.volume_name for lun in r.luns(7)] == ["unit:0:0:3"]


def _scsi_pool(adapter: str) -> object:
    return parse_pool_xml(f"<pool type='scsi'><name>s</name><source>{adapter}</source>"
                          "<target><path>/dev/disk/by-path</path></target></pool>")


VPORT = "wwnn='5001a4a1b2c3d4e5' wwpn='5001a4a1b2c3d4e6'"


@pytest.mark.parametrize("adapter, host", [
    ("<adapter type='scsi_host' name='host5'/>", "host5"),
    ("<adapter name='host7'/>", "host7"),                    # libvirt's legacy form
    ("<adapter type='scsi_host' name='scsi_host7'/>", "host7"),
    ("<adapter type='scsi_host'><parentaddr unique_id='5'><address domain='0x0000' "
     "bus='0x00' slot='0x11' function='0x0'/></parentaddr></adapter>", "host5"),
    (f"<adapter type='fc_host' {VPORT}/>", "host7"),
    (f"<adapter type='fc_host' parent='host5' {VPORT}/>", "host7"),
    (f"<adapter type='fc_host' parent_wwnn='20000000c9831b4b' "
     f"parent_wwpn='10000000c9831b4b' {VPORT}/>", "host7"),
    (f"<adapter type='fc_host' parent_fabric_wwn='2001000dec9877c1' {VPORT}/>", "host7"),
    ("<adapter type='fc_host' wwnn='0x20000000C9831B4B' wwpn='0x10000000C9831B4B'/>", "host5"),
])
def test_adapter_matching(fc_root, adapter, host):
    backend = ScsiBackend(ScsiSysfs(fc_root))
    pool = _scsi_pool(adapter)
    assert backend.find_host(pool).name == host
    assert asyncio.run(backend.is_active(pool)) is True


@pytest.mark.parametrize("adapter, error, words", [
    ("<adapter type='scsi_host' name='host9'/>", NotFound, "host9"),
    ("<adapter type='scsi_host'><parentaddr unique_id='9'><address domain='0' bus='0' "
     "slot='0x11' function='0'/></parentaddr></adapter>", NotFound, "0000:00:11.0"),
    ("<adapter type='fc_host' wwnn='5001a4a1b2c3d4e5' wwpn='5001a4a1b2c3d4e7'/>",
     NotSupported, "vport_create"),
    (f"<adapter type='fc_host' parent='host6' {VPORT}/>", InvalidArgument, "host5"),
    ("<adapter type='fc_host' parent='host1' wwnn='20000000c9831b4b' "
     "wwpn='10000000c9831b4b'/>", InvalidArgument, "physical HBA"),
    (f"<adapter type='fc_host' parent='nohost' {VPORT}/>", InvalidArgument, "nohost"),
    (f"<adapter type='fc_host' parent_wwnn='20000000c9831b4c' "
     f"parent_wwpn='10000000c9831b4b' {VPORT}/>", InvalidArgument, "parent_wwnn"),
    (f"<adapter type='fc_host' parent_fabric_wwn='2001000dec9877c2' {VPORT}/>",
     InvalidArgument, "fabric"),
])
def test_adapter_mismatch_is_a_clear_error(fc_root, adapter, error, words):
    backend = ScsiBackend(ScsiSysfs(fc_root))
    pool = _scsi_pool(adapter)
    with pytest.raises(error) as info:
        backend.find_host(pool)
    assert words in info.value.message
    assert backend.lun_host(pool) is None
    with pytest.raises(error):
        asyncio.run(backend.start(pool))


def test_scsi_backend_lists_and_rescans(fc_root):
    backend = ScsiBackend(ScsiSysfs(fc_root))
    pool = _scsi_pool(f"<adapter type='fc_host' {VPORT}/>")
    result = asyncio.run(backend.refresh(pool))
    (vol,) = result.volumes
    assert (vol.name, vol.key, vol.capacity, vol.path) == (
        "unit:0:0:3", "600a0b800012345600000003", 4096 * 512, "/dev/sdh")
    # the rescan wrote the kernel's "scan everything" wildcard to the host's scan file
    assert (fc_root / VHBA / "scsi_host/host7/scan").read_text() == "- - -"
    (fc_root / VHBA / "scsi_host/host7/scan").unlink()
    with pytest.raises(NotFound):
        asyncio.run(backend.refresh(pool))
