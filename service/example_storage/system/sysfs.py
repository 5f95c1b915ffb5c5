"""Readers of the kernel's view of block devices (/sys/class/block), without udev.

Everything is read from files below ``root`` (default ``/``), so tests can point a
reader at a fake tree, and umockdev's preload library (which redirects ``/sys``) works
unchanged. A device that disappears while being read gives ``None``, never an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SECTOR = 512
_SCSI_ADDRESS = re.compile(r"^\d+:\d+:\d+:\d+$")
_HEX_ID = re.compile(r"^0x[0-9a-fA-F]+$")


@dataclass(frozen=True)
class SysBlock:
    """One block device as sysfs shows it. Sizes are bytes; text is stripped."""

    name: str                      # kernel name: the entry in /sys/class/block ("sda1", "dm-0")
    devname: str                   # DEVNAME from uevent ("sda1", "cciss/c0d0"); node /dev/<devname>
    major: int
    minor: int
    size: int
    read_only: bool
    removable: bool
    devtype: str                   # "disk" or "partition"
    partition: int | None = None   # partition number
    parent: str | None = None      # kernel name of the disk a partition belongs to
    holders: tuple[str, ...] = ()  # devices built on this one (dm maps, md arrays)
    slaves: tuple[str, ...] = ()   # devices this one is built on
    wwid: str = ""                 # as sysfs has it: "naa.600a0b8...", "eui.00...", "t10.ATA ..."
    serial: str = ""
    vendor: str = ""
    model: str = ""
    dm_name: str = ""
    dm_uuid: str = ""              # "mpath-<wwid>" for a multipath map, "LVM-..." for an LV
    loop_backing_file: str = ""
    scsi_address: str = ""         # "H:C:T:L" of a SCSI device
    diskseq: int | None = None
    uevent: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def node(self) -> str:
        return "/dev/" + self.devname

    @property
    def major_minor(self) -> str:
        return f"{self.major}:{self.minor}"


def parse_uevent(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a sysfs ``uevent`` file."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            props[key.strip()] = value.strip()
    return props


def parse_vpd_pg80(data: bytes) -> str:
    """The unit serial number of a SCSI VPD page 0x80 (as in sysfs ``vpd_pg80``)."""
    if len(data) < 4 or data[1] != 0x80:
        return ""
    length = int.from_bytes(data[2:4], "big")
    return data[4 : 4 + length].decode("ascii", "replace").strip(" \0")


def _clean(text: str) -> str:
    return text.replace("\0", "").strip()


class SysfsReader:
    """Reads /sys/class/block below ``root``."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    @property
    def class_dir(self) -> Path:
        return self.root / "sys" / "class" / "block"

    def names(self) -> list[str]:
        """Kernel names of all block devices, sorted (disks before their partitions)."""
        try:
            return sorted(os.listdir(self.class_dir))
        except OSError:
            return []

    def exists(self, name: str) -> bool:
        return (self.class_dir / name / "dev").exists()

    def read_all(self) -> list[SysBlock]:
        found = (self.read(name) for name in self.names())
        return [dev for dev in found if dev is not None]

    # -- one device -------------------------------------------------------------
    def read(self, name: str) -> SysBlock | None:
        """The device ``name``, or None when it does not exist (any more)."""
        if not name or "/" in name or name in (".", ".."):
            return None
        link = self.class_dir / name
        try:
            devdir = Path(os.path.realpath(link))
            uevent = parse_uevent((devdir / "uevent").read_text(errors="replace"))
            major, minor = (int(x) for x in read_attr(devdir / "dev").split(":", 1))
        except (OSError, ValueError):
            return None
        is_partition = (devdir / "partition").exists()
        parent = devdir.parent.name if is_partition else None
        disk_dir = devdir.parent if is_partition else devdir
        device_dir = disk_dir / "device"
        return SysBlock(
            name=name,
            devname=uevent.get("DEVNAME") or name.replace("!", "/"),
            major=major,
            minor=minor,
            size=_read_int(devdir / "size") * SECTOR,
            read_only=read_attr(devdir / "ro") == "1",
            removable=read_attr(disk_dir / "removable") == "1",
            devtype="partition" if is_partition else (uevent.get("DEVTYPE") or "disk"),
            partition=_read_int(devdir / "partition") if is_partition else None,
            parent=parent,
            holders=list_dir(devdir / "holders"),
            slaves=list_dir(devdir / "slaves"),
            wwid="" if is_partition else _first(devdir / "wwid", device_dir / "wwid"),
            serial="" if is_partition else self._serial(devdir, device_dir),
            vendor="" if is_partition else _name_text(read_attr(device_dir / "vendor")),
            model="" if is_partition else read_attr(device_dir / "model"),
            dm_name=read_attr(devdir / "dm" / "name"),
            dm_uuid=read_attr(devdir / "dm" / "uuid"),
            loop_backing_file=read_attr(devdir / "loop" / "backing_file"),
            scsi_address="" if is_partition else _scsi_address(device_dir),
            diskseq=_read_int_or_none(disk_dir / "diskseq") or parse_int(uevent.get("DISKSEQ")),
            uevent=uevent,
        )

    @staticmethod
    def _serial(devdir: Path, device_dir: Path) -> str:
        text = _first(devdir / "serial", device_dir / "serial")   # virtio; NVMe, MMC
        if text:
            return text
        try:
            return parse_vpd_pg80((device_dir / "vpd_pg80").read_bytes())   # SCSI
        except OSError:
            return ""


def read_attr(path: Path) -> str:
    try:
        return _clean(path.read_text(errors="replace"))
    except OSError:
        return ""


def _name_text(text: str) -> str:
    """A vendor name; virtio's numeric vendor id ("0x1af4") is not one."""
    return "" if _HEX_ID.match(text) else text


def _first(*paths: Path) -> str:
    for path in paths:
        text = read_attr(path)
        if text:
            return text
    return ""


def parse_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_int_or_none(path: Path) -> int | None:
    return parse_int(read_attr(path) or None)


def _read_int(path: Path) -> int:
    return _read_int_or_none(path) or 0


def list_dir(path: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def _scsi_address(device_dir: Path) -> str:
    try:
        target = os.path.basename(os.path.realpath(device_dir))
    except OSError:
        return ""
    return target if device_dir.exists() and _SCSI_ADDRESS.match(target) else ""
