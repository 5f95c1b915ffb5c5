"""The 'fs' pool: a filesystem on a block device, mounted at the target directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat

from ..errors import Busy, InvalidArgument, InvalidState, NotSupported
from ..model.definitions import PoolDefinition
from ..system import blkid, mounts
from ..system.runner import run_command, which
from .dir import DirBackend

MKFS_TIMEOUT = 1800.0
WIPEFS_TIMEOUT = 120.0

# How Build makes each format (format 'auto' builds ext4).
MKFS: dict[str, list[str]] = {
    "ext2": ["mkfs.ext2", "-F", "-q"],
    "ext3": ["mkfs.ext3", "-F", "-q"],
    "ext4": ["mkfs.ext4", "-F", "-q"],
    "xfs": ["mkfs.xfs", "-f", "-q"],
    "btrfs": ["mkfs.btrfs", "-f", "-q"],
    "vfat": ["mkfs.vfat"],
}
# libvirt's format names that differ from the kernel's filesystem type.
_FSTYPE = {"hfs+": "hfsplus"}


def _sysfs_dir(devno: int) -> str:
    return f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}"


def holders(devno: int) -> list[str]:
    """Devices stacked on this one (device-mapper, md, ...), from sysfs."""
    try:
        return sorted(os.listdir(os.path.join(_sysfs_dir(devno), "holders")))
    except OSError:
        return []


def partitions(devno: int) -> list[int]:
    """Device numbers of this disk's partitions, from sysfs."""
    base = _sysfs_dir(devno)
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


class FsBackend(DirBackend):
    type_name = "fs"
    required_tools = ("mount", "umount", "blkid")
    optional_tools = ("qemu-img", "mkfs.ext4", "mkfs.xfs", "wipefs")
    pool_formats = (
        "auto", "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "ufs", "iso9660", "udf",
        "gfs", "gfs2", "hfs+", "ocfs2", "vmfs",
    )

    # -- source device -------------------------------------------------------
    @staticmethod
    def source_device(pool: PoolDefinition) -> str:
        devices = pool.source.devices
        if len(devices) != 1 or not devices[0].path:
            raise InvalidArgument(f"pool '{pool.name}' needs exactly one source device")
        path = devices[0].path
        if not os.path.isabs(path):
            raise InvalidArgument(f"source device '{path}' is not an absolute path")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidArgument(f"source device {path}: {exc.strerror}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidArgument(f"source device {path} is not a block device")
        return path

    @staticmethod
    def _devno(device: str) -> int | None:
        try:
            st = os.stat(device)
        except OSError:
            return None
        return st.st_rdev if stat.S_ISBLK(st.st_mode) else None

    def _format(self, pool: PoolDefinition) -> str:
        fmt = (pool.source.format or "auto").lower()
        if fmt not in self.pool_formats:
            raise InvalidArgument(
                f"unknown filesystem format '{fmt}' (known: {', '.join(self.pool_formats)})"
            )
        return fmt

    def _check_unmounted(self, device: str, exc_type: type[Exception]) -> None:
        devno = self._devno(device)
        if devno is None:
            return
        text = mounts.read_mountinfo()
        for dn in [devno, *partitions(devno)]:
            found = mounts.mounts_of_devno(dn, text)
            if found:
                where = ", ".join(sorted({e.mount_point for e in found}))
                raise exc_type(f"{device} is mounted at {where}")

    def _check_unused(self, device: str) -> None:
        """Busy when the device or one of its partitions is mounted or held."""
        self._check_unmounted(device, Busy)
        devno = self._devno(device)
        if devno is None:
            return
        for dn in [devno, *partitions(devno)]:
            users = holders(dn)
            if users:
                raise Busy(f"{device} is in use by {', '.join(users)}")
        # The kernel refuses an exclusive open of a device something has claimed.
        try:
            fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise Busy(f"{device} is in use") from None
            raise InvalidArgument(f"cannot open {device}: {exc.strerror}") from None
        os.close(fd)

    def _mounted_here(self, pool: PoolDefinition, mountinfo: str | None = None) -> bool:
        device = self.source_device(pool)
        target = os.path.realpath(self.target_path(pool))
        entry = mounts.find_mount(target, mountinfo)
        if entry is None:
            return False
        devno = self._devno(device)
        return (devno is not None and entry.devno == devno) or (
            os.path.realpath(entry.source) == os.path.realpath(device)
        )

    # -- pool ----------------------------------------------------------------
    async def volume_dir(self, pool: PoolDefinition) -> str:
        path = self.target_path(pool)
        if not self._mounted_here(pool):
            raise InvalidState(f"pool '{pool.name}' is not mounted at {path} (Start it first)")
        return path

    async def is_active(self, pool: PoolDefinition) -> bool:
        try:
            return self._mounted_here(pool)
        except InvalidArgument:
            return False

    async def build(self, pool: PoolDefinition, overwrite: bool) -> None:
        """mkfs on the source device; refuses a device that holds anything unless
        ``overwrite``, and always refuses one that is mounted or in use."""
        device = self.source_device(pool)
        fmt = self._format(pool)
        mkfs_fmt = "ext4" if fmt == "auto" else fmt
        if mkfs_fmt not in MKFS:
            raise NotSupported(f"building a '{fmt}' filesystem is not supported")
        self._check_unused(device)
        what = blkid.describe_signature(await blkid.probe(device))
        if what and not overwrite:
            raise InvalidState(
                f"{device} holds {what}; pass option 'overwrite' to format it anyway"
            )
        self._check_unused(device)
        if what and which("wipefs"):
            # Also drop signatures mkfs would leave behind (a backup GPT at the end, ...).
            await run_command(["wipefs", "-a", "-q", "--", device], timeout=WIPEFS_TIMEOUT)
        await run_command([*MKFS[mkfs_fmt], "--", device], timeout=MKFS_TIMEOUT)
        await asyncio.to_thread(self._make_target, pool)

    async def start(self, pool: PoolDefinition) -> None:
        device = self.source_device(pool)
        target = self.target_path(pool)
        fmt = self._format(pool)
        text = mounts.read_mountinfo()
        if self._mounted_here(pool, text):
            return
        entry = mounts.find_mount(os.path.realpath(target), text)
        if entry is not None and os.path.exists(target):
            raise Busy(f"{target} is already the mount point of {entry.source}")
        props = await blkid.probe(device)
        if props.get("USAGE") != "filesystem" or not props.get("TYPE"):
            what = blkid.describe_signature(props) or "no filesystem"
            raise InvalidState(f"{device} holds {what}, not a filesystem (run Build first)")
        fstype = _FSTYPE.get(fmt, fmt)
        if fmt != "auto" and props["TYPE"] != fstype:
            raise InvalidState(
                f"{device} holds {blkid.describe_signature(props)}, not {fmt}"
            )
        if not os.path.isdir(target):
            await asyncio.to_thread(self._make_target, pool)
        await mounts.mount(
            device, target, None if fmt == "auto" else fstype, list(pool.mount_opts)
        )

    async def stop(self, pool: PoolDefinition) -> None:
        if not self._mounted_here(pool):
            return
        await mounts.unmount(self.target_path(pool))

    async def delete(self, pool: PoolDefinition) -> None:
        """Erase the filesystem signature of the pool's own source device (never while
        mounted) and remove the empty target directory."""
        device = self.source_device(pool)
        self._check_unmounted(device, InvalidState)
        self._check_unused(device)
        await run_command(["wipefs", "-a", "-q", "--", device], timeout=WIPEFS_TIMEOUT)
        with contextlib.suppress(OSError):
            os.rmdir(self.target_path(pool))
