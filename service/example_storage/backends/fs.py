"""The 'fs' pool: a filesystem on a block device, mounted at the target directory."""

from __future__ import annotations

import asyncio
import contextlib
import os

from ..errors import Busy, InvalidArgument, InvalidState, NotSupported
from ..model.definitions import PoolDefinition
from ..system import blkid, mounts
from ..system.runner import run_command, which
from . import device_safety
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


class FsBackend(DirBackend):
    type_name = "fs"
    checks_mount = True            # volume_dir: the filesystem is mounted there
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
        return device_safety.require_block_device(devices[0].path)

    @staticmethod
    def _devno(device: str) -> int | None:
        return device_safety.devno_of(device)

    def _format(self, pool: PoolDefinition) -> str:
        fmt = (pool.source.format or "auto").lower()
        if fmt not in self.pool_formats:
            raise InvalidArgument(
                f"unknown filesystem format '{fmt}' (known: {', '.join(self.pool_formats)})"
            )
        return fmt

    def _check_unmounted(self, device: str, exc_type: type[Exception]) -> None:
        device_safety.check_unmounted(device, exc_type)

    def _check_unused(self, device: str) -> None:
        """Busy when the device or one of its partitions is mounted or held."""
        device_safety.check_unused(device)

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
        if entry is not None and _device_vanished(entry):
            # what is left of this pool's own mount after its device went away (the pool
            # was inaccessible): nothing can be read through it any more
            await mounts.unmount(target, lazy=True)
            entry = mounts.find_mount(os.path.realpath(target), mounts.read_mountinfo())
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

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
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


def _device_vanished(entry: mounts.MountEntry) -> bool:
    """A block-device mount whose device no longer exists (removed under the mount)."""
    if entry.major == 0:
        return False          # not a block device (tmpfs, nfs, ...): never ours to clear
    return not os.path.exists(f"/sys/dev/block/{entry.major}:{entry.minor}")
