"""One block device as the service describes it: identity, content, type; how a
device is described from sysfs, udev properties and a blkid probe."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..system import udev
from ..system.sysfs import SysBlock

if TYPE_CHECKING:
    pass

_MPATH_PREFIX = "mpath-"
_HEX = re.compile(r"^[0-9a-f]+$")


# -- one device ----------------------------------------------------------------
@dataclass(frozen=True)
class BlockDevice:
    """A block device as the service describes it. Empty text/0 means unknown/none."""

    name: str                       # kernel name: "sda", "loop0p1", "dm-0"
    path: str                       # device node: "/dev/sda"
    major_minor: str = ""
    size: int = 0
    type: str = "disk"              # see device_type()
    read_only: bool = False
    removable: bool = False
    wwn: str = ""                   # "0x600a0b8..." (NAA, lower-case hex) or as the device says
    serial: str = ""
    vendor: str = ""
    model: str = ""
    fs_type: str = ""               # blkid TYPE: ext4, xfs, swap, LVM2_member, ...
    fs_usage: str = ""              # filesystem, raid, crypto, other
    fs_uuid: str = ""
    fs_label: str = ""
    pt_type: str = ""               # partition table on this device: gpt, dos
    pt_uuid: str = ""
    part_uuid: str = ""             # this partition's entry in its parent's table
    part_label: str = ""
    part_type: str = ""
    part_number: int = 0
    parent: str = ""                # kernel name of the disk of a partition
    holders: tuple[str, ...] = ()   # kernel names of devices built on this one
    slaves: tuple[str, ...] = ()    # kernel names of devices this one is built on
    dm_name: str = ""
    dm_uuid: str = ""
    backing_file: str = ""          # of a loop device
    scsi_address: str = ""          # H:C:T:L
    diskseq: int = 0
    symlinks: tuple[str, ...] = ()  # /dev/disk/by-*, /dev/mapper/...
    # -- usage: derived from the other devices, the mount table and the pools --
    mount_points: tuple[str, ...] = ()
    in_use_reasons: tuple[str, ...] = ()
    pool: str = ""                  # name of the pool using it
    multipath: str = ""             # the multipath map this device is a path of
    udev_properties: bool = dataclasses.field(default=False, compare=False)

    @property
    def in_use(self) -> bool:
        return bool(self.in_use_reasons)

    @property
    def hidden(self) -> bool:
        """Multipath members are listed through their map only."""
        return bool(self.multipath)

    @property
    def display_name(self) -> str:
        return self.dm_name or self.name


USAGE_FIELDS = ("mount_points", "in_use_reasons", "pool", "multipath")


def device_type(sys: SysBlock) -> str:
    """partition, multipath, dm, loop, md, lun (a SCSI logical unit), rom, ram, nbd, disk."""
    name = sys.name
    if sys.devtype == "partition":
        return "partition"
    if sys.dm_uuid.startswith(_MPATH_PREFIX):
        return "multipath"
    if sys.dm_name or sys.dm_uuid or name.startswith("dm-"):
        return "dm"
    if name.startswith("loop"):
        return "loop"
    if name.startswith("md"):
        return "md"
    if name.startswith("sr"):
        return "rom"
    if sys.scsi_address:
        return "lun"
    if name.startswith(("zram", "ram")):
        return "ram"
    if name.startswith("nbd"):
        return "nbd"
    return "disk"


def normalize_wwn(value: str) -> str:
    """A WWN in one spelling: "naa.600A0B8.." / "0x600a0b8.." / "wwn-0x600a.." become
    "0x600a0b8..", a multipath WWID "3600a0b8.." (SCSI designator type 3 = NAA) too.
    Other identifiers (eui., t10., nvme.) are only lower-cased."""
    text = value.strip().lower()
    text = text.removeprefix("wwn-")
    for prefix in ("naa.", "0x"):
        if text.startswith(prefix) and _HEX.match(text[len(prefix):]):
            return "0x" + text[len(prefix):]
    if text.startswith("3") and len(text) in (17, 33) and _HEX.match(text):
        return "0x" + text[1:]
    return text


def wwn_keys(wwn: str) -> set[str]:
    """The spellings a lookup may use for ``wwn``: the full NAA and udev's ID_WWN (its
    first 64 bits, without the vendor extension)."""
    if not wwn:
        return set()
    full = normalize_wwn(wwn)
    keys = {full}
    if full.startswith("0x") and len(full) == 34:
        keys.add(full[:18])
    return keys


def _udev_content(props: dict[str, str]) -> dict[str, str]:
    """udev's ID_* properties in blkid's names."""
    mapping = {
        "ID_FS_TYPE": "TYPE", "ID_FS_USAGE": "USAGE", "ID_FS_UUID": "UUID",
        "ID_FS_LABEL": "LABEL", "ID_PART_TABLE_TYPE": "PTTYPE", "ID_PART_TABLE_UUID": "PTUUID",
        "ID_PART_ENTRY_UUID": "PART_ENTRY_UUID", "ID_PART_ENTRY_NAME": "PART_ENTRY_NAME",
        "ID_PART_ENTRY_TYPE": "PART_ENTRY_TYPE", "ID_PART_ENTRY_NUMBER": "PART_ENTRY_NUMBER",
    }
    out = {blkid_key: props[key] for key, blkid_key in mapping.items() if props.get(key)}
    if props.get("ID_FS_LABEL_ENC"):
        out["LABEL"] = udev.decode_udev_escapes(props["ID_FS_LABEL_ENC"])
    if props.get("ID_PART_ENTRY_NAME"):
        out["PART_ENTRY_NAME"] = udev.decode_udev_escapes(props["ID_PART_ENTRY_NAME"])
    return out


def has_udev_content(props: dict[str, str]) -> bool:
    return any(k.startswith(("ID_FS_", "ID_PART_")) for k in props)


def describe(sys: SysBlock, content: dict[str, str], udev_props: dict[str, str],
             symlinks: Iterable[str] = ()) -> BlockDevice:
    """A device from what sysfs says, what is on it (blkid's keys) and udev's properties.
    Pure: usage fields stay empty (see compute_usage)."""
    whole = sys.devtype != "partition"
    wwn = ""
    serial = vendor = model = ""
    if whole:
        wwn = (udev_props.get("ID_WWN_WITH_EXTENSION") or udev_props.get("ID_WWN")
               or sys.wwid)
        if not wwn and sys.dm_uuid.startswith(_MPATH_PREFIX):
            wwn = sys.dm_uuid[len(_MPATH_PREFIX):]
        wwn = normalize_wwn(wwn) if wwn else ""
        serial = (udev_props.get("ID_SCSI_SERIAL") or udev_props.get("ID_SERIAL_SHORT")
                  or sys.serial)
        vendor = sys.vendor or udev_props.get("ID_VENDOR", "").replace("_", " ")
        model = sys.model or udev_props.get("ID_MODEL", "").replace("_", " ")
    links = set(symlinks)
    if sys.dm_name:
        links.add("/dev/mapper/" + sys.dm_name)
    number = sys.partition or _int(content.get("PART_ENTRY_NUMBER"))
    return BlockDevice(
        name=sys.name,
        path=sys.node,
        major_minor=sys.major_minor,
        size=sys.size,
        type=device_type(sys),
        read_only=sys.read_only,
        removable=sys.removable,
        wwn=wwn,
        serial=serial,
        vendor=vendor,
        model=model,
        fs_type=content.get("TYPE", ""),
        fs_usage=content.get("USAGE", ""),
        fs_uuid=content.get("UUID", ""),
        fs_label=content.get("LABEL", ""),
        pt_type=content.get("PTTYPE", "") if whole else "",
        pt_uuid=content.get("PTUUID", "") if whole else "",
        part_uuid=content.get("PART_ENTRY_UUID", "") if not whole else "",
        part_label=content.get("PART_ENTRY_NAME", "") if not whole else "",
        part_type=content.get("PART_ENTRY_TYPE", "") if not whole else "",
        part_number=number if not whole else 0,
        parent=sys.parent or "",
        holders=sys.holders,
        slaves=sys.slaves,
        dm_name=sys.dm_name,
        dm_uuid=sys.dm_uuid,
        backing_file=sys.loop_backing_file.removesuffix(" (deleted)"),
        scsi_address=sys.scsi_address,
        diskseq=sys.diskseq or 0,
        symlinks=tuple(sorted(links)),
        udev_properties=has_udev_content(udev_props),
    )


def _int(text: str | None) -> int:
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


