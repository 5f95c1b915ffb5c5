"""Is a block device safe to overwrite? Shared by the backends that format or partition
whole devices (fs, disk).

A device is *in use* when it or one of its partitions is mounted, held by a stacked
device (device-mapper, md, ...: sysfs ``holders``) or opened exclusively by someone
else; such a device is never overwritten, whatever the caller's options. What it
*holds* (a filesystem, a partition table, an LVM PV: see ``blkid.describe_signature``)
is only overwritten when the caller passes ``overwrite``.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import Busy, InvalidArgument
from ..system import mounts


def require_block_device(path: str) -> str:
    """``path`` itself, checked to be an absolute path to a block device."""
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"source device '{path}' is not an absolute path")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"source device {path}: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"source device {path} is not a block device")
    return path


def devno_of(path: str) -> int | None:
    """The device number of the block device at ``path``; None if it is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def sysfs_dir(devno: int) -> str:
    return f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}"


def holders(devno: int) -> list[str]:
    """Devices stacked on this one (device-mapper, md, ...), from sysfs."""
    try:
        return sorted(os.listdir(os.path.join(sysfs_dir(devno), "holders")))
    except OSError:
        return []


def partitions(devno: int) -> list[int]:
    """Device numbers of this disk's partitions as the kernel knows them, from sysfs."""
    base = sysfs_dir(devno)
    found = []
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        if not os.path.exists(os.path.join(base, name, "partition")):
            continue
        try:
            with open(os.path.join(base, name, "dev")) as f:
                major, minor = (int(x) for x in f.read().strip().split(":"))
        except (OSError, ValueError):
            continue
        found.append(os.makedev(major, minor))
    return found


def _describe(device: str, devno: int, dn: int) -> str:
    """``device`` itself, or "<device>'s partition <name>" for one of its partitions."""
    if dn == devno:
        return device
    return f"{device}'s partition {os.path.basename(os.path.realpath(sysfs_dir(dn)))}"


def check_unmounted(device: str, exc_type: type[Exception] = Busy) -> None:
    """Raise ``exc_type`` when ``device`` or one of its partitions is mounted."""
    devno = devno_of(device)
    if devno is None:
        return
    text = mounts.read_mountinfo()
    for dn in [devno, *partitions(devno)]:
        found = mounts.mounts_of_devno(dn, text)
        if found:
            where = ", ".join(sorted({e.mount_point for e in found}))
            raise exc_type(f"{_describe(device, devno, dn)} is mounted at {where}")


def check_unused(device: str) -> None:
    """Busy when ``device`` or one of its partitions is mounted, held by a stacked
    device, or opened exclusively (the kernel refuses our own exclusive open then)."""
    check_unmounted(device, Busy)
    devno = devno_of(device)
    if devno is None:
        return
    for dn in [devno, *partitions(devno)]:
        users = holders(dn)
        if users:
            raise Busy(f"{_describe(device, devno, dn)} is in use by {', '.join(users)}")
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise Busy(f"{device} is in use") from None
        raise InvalidArgument(f"cannot open {device}: {exc.strerror}") from None
    os.close(fd)
