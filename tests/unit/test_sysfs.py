"""The sysfs readers on a fake /sys tree (the layout the kernel uses), the udev database
parser, and the readers on this machine's real /sys."""

from __future__ import annotations

import os
from pathlib import Path

from example_storage.system import hostwatch, udev
from example_storage.system.sysfs import SysfsReader, parse_uevent, parse_vpd_pg80


def make_block(root: Path, devpath: str, *, dev: str, sectors: int = 2048,
               uevent: dict[str, str] | None = None, attrs: dict[str, str] | None = None,
               holders: tuple[str, ...] = (), slaves: tuple[str, ...] = (),
               partition: int | None = None) -> Path:
    """A block device at /sys/DEVPATH plus its /sys/class/block link; returns its dir."""
    devdir = root / "sys" / devpath.lstrip("/")
    devdir.mkdir(parents=True, exist_ok=True)
    name = devdir.name
    props = {"MAJOR": dev.split(":")[0], "MINOR": dev.split(":")[1], "DEVNAME": name,
             "DEVTYPE": "partition" if partition else "disk", **(uevent or {})}
    (devdir / "uevent").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (devdir / "dev").write_text(dev + "\n")
    (devdir / "size").write_text(f"{sectors}\n")
    (devdir / "ro").write_text("0\n")
    if partition:
        (devdir / "partition").write_text(f"{partition}\n")
    else:
        (devdir / "removable").write_text("0\n")
    for rel, value in (attrs or {}).items():
        (devdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (devdir / rel).write_text(value)
    for sub, names in (("holders", holders), ("slaves", slaves)):
        (devdir / sub).mkdir(exist_ok=True)
        for n in names:
            (devdir / sub / n).write_text("")
    link_dir = root / "sys" / "class" / "block"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / name
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(devdir, link_dir))
    return devdir


def make_scsi_disk(root: Path, name: str = "sda", dev: str = "8:0", *, wwid: str = "",
                   serial: str = "", vendor: str = "ATA     ", model: str = "Disk  ") -> Path:
    scsi = root / "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0"
    scsi.mkdir(parents=True, exist_ok=True)
    (scsi / "vendor").write_text(vendor + "\n")
    (scsi / "model").write_text(model + "\n")
    if wwid:
        (scsi / "wwid").write_text(wwid + "\n")
    if serial:
        (scsi / "vpd_pg80").write_bytes(bytes([0, 0x80, 0, len(serial)]) + serial.encode())
    devdir = make_block(root, str((scsi / "block" / name).relative_to(root / "sys")),
                        dev=dev, sectors=8388608)
    (devdir / "device").symlink_to("../../../0:0:0:0")
    return devdir


def test_parse_uevent_and_vpd():
    assert parse_uevent("MAJOR=8\nMINOR=0\nDEVNAME=sda\nbogus\n") == {
        "MAJOR": "8", "MINOR": "0", "DEVNAME": "sda"}
    assert parse_vpd_pg80(bytes([0, 0x80, 0, 10]) + b"  WD-12345") == "WD-12345"
    assert parse_vpd_pg80(bytes([0, 0x83, 0, 2]) + b"xx") == ""   # another page
    assert parse_vpd_pg80(b"\x00") == ""


def test_reads_a_scsi_disk_and_its_partition(tmp_path):
    disk = make_scsi_disk(tmp_path, wwid="naa.5000c500a1b2c3d4", serial="ZA1B2C3D")
    make_block(tmp_path, str((disk / "sda1").relative_to(tmp_path / "sys")), dev="8:1",
               sectors=1024, partition=1, holders=("dm-0",))
    reader = SysfsReader(tmp_path)
    assert reader.names() == ["sda", "sda1"]
    sda = reader.read("sda")
    assert sda.node == "/dev/sda" and sda.major_minor == "8:0"
    assert sda.size == 8388608 * 512 and sda.devtype == "disk"
    assert (sda.wwid, sda.serial, sda.vendor, sda.model) == (
        "naa.5000c500a1b2c3d4", "ZA1B2C3D", "ATA", "Disk")
    assert sda.scsi_address == "0:0:0:0" and sda.partition is None
    part = reader.read("sda1")
    assert part.devtype == "partition" and part.partition == 1 and part.parent == "sda"
    assert part.holders == ("dm-0",) and part.size == 1024 * 512
    assert part.wwid == "" and part.serial == ""          # identity is the disk's
    assert reader.read("sdz") is None and reader.read("../etc") is None


def test_reads_dm_multipath_loop_and_virtio(tmp_path):
    make_block(tmp_path, "devices/virtual/block/dm-0", dev="253:0",
               attrs={"dm/name": "mpatha\n", "dm/uuid": "mpath-3600a0b8\n"},
               slaves=("sdb", "sdc"))
    make_block(tmp_path, "devices/virtual/block/loop3", dev="7:3",
               attrs={"loop/backing_file": "/tmp/x.img (deleted)\n"},
               uevent={"DISKSEQ": "42"})
    vda = make_block(tmp_path, "devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
                     dev="254:0", attrs={"serial": "overlayblk\n"})
    (vda.parent.parent / "vendor").write_text("0x1af4\n")
    (vda / "device").symlink_to("../../../virtio1")
    reader = SysfsReader(tmp_path)
    dm = reader.read("dm-0")
    assert (dm.dm_name, dm.dm_uuid, dm.slaves) == ("mpatha", "mpath-3600a0b8", ("sdb", "sdc"))
    loop = reader.read("loop3")
    assert loop.loop_backing_file == "/tmp/x.img (deleted)" and loop.diskseq == 42
    v = reader.read("vda")
    assert v.serial == "overlayblk"
    assert v.vendor == ""    # virtio's numeric vendor id is no vendor name
    assert v.scsi_address == ""


def test_real_sysfs_is_readable():
    reader = SysfsReader()
    for dev in reader.read_all():
        assert dev.major_minor.count(":") == 1 and dev.node.startswith("/dev/")
        assert (dev.partition is not None) == (dev.devtype == "partition")
        if dev.parent:
            assert dev.parent in reader.names()


def test_udev_database_and_links(tmp_path):
    record = udev.parse_udev_db(
        "S:disk/by-id/wwn-0x5000c500a1b2c3d4\nS:disk/by-uuid/abcd\nI:123\n"
        "E:ID_FS_TYPE=ext4\nE:ID_FS_LABEL_ENC=my\\x20disk\nG:systemd\n")
    assert record.properties == {"ID_FS_TYPE": "ext4", "ID_FS_LABEL_ENC": "my\\x20disk"}
    assert record.symlinks == ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
                               "/dev/disk/by-uuid/abcd")
    assert udev.decode_udev_escapes("my\\x20disk\\x2fx") == "my disk/x"
    assert udev.read_udev_db(8, 0, tmp_path) is None

    by_id = tmp_path / "dev" / "disk" / "by-id"
    by_id.mkdir(parents=True)
    (tmp_path / "dev" / "sda").write_text("")
    (by_id / "wwn-0x5").symlink_to("../../sda")
    assert udev.disk_links(tmp_path) == {"/dev/sda": ("/dev/disk/by-id/wwn-0x5",)}
    assert udev.disk_links(tmp_path / "nothing") == {}


def test_choose_source(tmp_path):
    assert udev.choose_source("auto", tmp_path) == "kernel"
    assert udev.choose_source("none", tmp_path) is None
    assert udev.choose_source("kernel", tmp_path) == "kernel"
    (tmp_path / "run" / "udev").mkdir(parents=True)
    (tmp_path / "run" / "udev" / "control").write_text("")
    assert udev.choose_source("auto", tmp_path) == "udev"
    try:
        udev.choose_source("netlink", tmp_path)
    except ValueError as e:
        assert "netlink" in str(e)
    else:
        raise AssertionError("accepted an unknown source")


def test_inotify_events_and_swaps(tmp_path):
    import struct

    data = struct.pack("iIII", 3, 0x8, 0, 0) + struct.pack("iIII", 4, 0x8000, 0, 16) + b"\0" * 16
    assert hostwatch.parse_inotify_events(data) == [(3, 0x8), (4, 0x8000)]
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/dev/zram0 partition 8 0 100\n")
    assert hostwatch.read_swaps(str(swaps)) == ["/dev/zram0"]
    assert hostwatch.read_swaps(str(tmp_path / "none")) == []
