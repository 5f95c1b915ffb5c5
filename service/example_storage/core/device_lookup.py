"""Finding a block device by any of its names: path, link, kernel name, WWN, serial,
filesystem UUID or label, PARTUUID."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound
from ..system import udev
from .device_model import BlockDevice, normalize_wwn, wwn_keys

if TYPE_CHECKING:
    pass


# -- lookups ----------------------------------------------------------------------
_BY_LINK = {
    "/dev/disk/by-uuid/": "fs_uuid",
    "/dev/disk/by-partuuid/": "part_uuid",
    "/dev/disk/by-label/": "fs_label",
    "/dev/disk/by-partlabel/": "part_label",
    "/dev/mapper/": "dm_name",
}
_PREFIXED = {"UUID=": "fs_uuid", "PARTUUID=": "part_uuid", "LABEL=": "fs_label",
             "PARTLABEL=": "part_label"}


def _block_rdev(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode) or st.st_rdev == 0:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def same_device(a: str, b: str) -> bool:
    """Whether two paths name the same block device (equal, same target, same node)."""
    if not a or not b:
        return False
    if a == b or os.path.realpath(a) == os.path.realpath(b):
        return True
    rdev = _block_rdev(a)
    return rdev is not None and rdev == _block_rdev(b)


def _field_matches(devices: Iterable[BlockDevice], field: str, value: str,
                   fold: bool = False) -> list[BlockDevice]:
    if not value:
        return []
    if fold:
        value = value.lower()
        return [d for d in devices if getattr(d, field) and getattr(d, field).lower() == value]
    return [d for d in devices if getattr(d, field) == value]


def find_devices(devices: dict[str, BlockDevice], ident: str) -> list[BlockDevice]:
    """Every device ``ident`` names: a path (node, /dev/disk/by-* or any link to the
    node), a kernel or device-mapper name, a WWN, a serial, a filesystem UUID or a
    PARTUUID (also as UUID=..., PARTUUID=..., LABEL=..., PARTLABEL=...)."""
    all_devs = list(devices.values())
    if ident.startswith("/"):
        found = [d for d in all_devs if d.path == ident or ident in d.symlinks]
        if found:
            return found
        if os.path.lexists(ident):
            real = os.path.realpath(ident)
            found = [d for d in all_devs if d.path == real]
            if found:
                return found
            rdev = _block_rdev(ident)
            return [d for d in all_devs if rdev and d.major_minor == rdev]
        # udev's links do not exist without udevd: understand their names anyway
        for prefix, field in _BY_LINK.items():
            if ident.startswith(prefix):
                value = udev.decode_udev_escapes(ident[len(prefix):])
                return _field_matches(all_devs, field, value, fold=field.endswith("uuid"))
        if ident.startswith("/dev/disk/by-id/"):
            rest = ident[len("/dev/disk/by-id/"):]
            if rest.startswith("wwn-"):
                return _by_wwn(all_devs, rest)
            _, _, serialish = rest.partition("-")
            return [d for d in all_devs if d.serial and d.type != "partition"
                    and (serialish == d.serial or serialish.endswith("_" + d.serial))]
        return []
    for prefix, field in _PREFIXED.items():
        if ident.startswith(prefix):
            value = ident[len(prefix):]
            return _field_matches(all_devs, field, value, fold=field.endswith("uuid"))
    if ident in devices:
        return [devices[ident]]
    for finder in (
        lambda: _field_matches(all_devs, "dm_name", ident),
        lambda: _by_wwn(all_devs, ident),
        lambda: [d for d in all_devs if d.serial == ident and d.type != "partition"],
        lambda: _field_matches(all_devs, "fs_uuid", ident, fold=True),
        lambda: _field_matches(all_devs, "part_uuid", ident, fold=True),
    ):
        found = finder()
        if found:
            return found
    return []


def _by_wwn(devices: list[BlockDevice], ident: str) -> list[BlockDevice]:
    wanted = normalize_wwn(ident)
    return [d for d in devices if d.type != "partition" and wanted in wwn_keys(d.wwn)]


def pick_device(found: list[BlockDevice], ident: str,
                devices: dict[str, BlockDevice] | None = None) -> BlockDevice:
    """The one device a lookup means: a multipath map stands for its paths."""
    if not found:
        raise NotFound(f"no block device '{ident[:4096]}'")
    visible = [d for d in found if not d.hidden]
    maps_of_paths = {d.multipath for d in found if d.hidden}
    if len(found) == 1 and ident in (found[0].name, found[0].path):
        return found[0]   # named exactly: a multipath path by its own name or node
    if not visible and len(maps_of_paths) == 1 and devices:
        the_map = devices.get(maps_of_paths.pop())
        if the_map is not None:
            return the_map
    visible = visible or found
    maps = [d for d in visible if d.type == "multipath"]
    if len(maps) == 1:
        return maps[0]
    if len(visible) == 1:
        return visible[0]
    names = ", ".join(sorted(d.name for d in visible))
    raise InvalidArgument(f"'{ident[:4096]}' names several devices: {names}")


