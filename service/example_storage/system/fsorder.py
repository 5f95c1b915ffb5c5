"""Whether a filesystem commits metadata in the order it was changed.

On such a filesystem one fsync of a file makes durable every metadata change made on the
filesystem before that file's last change (its own, other files' sizes and xattrs, links
and unlinks in any directory): the journal (ext4: jbd2 transactions, committed in order;
a fast commit writes every inode changed since the last full commit) or the log (xfs:
a log force up to the inode's sequence covers all earlier ones) is written in order.
dirsync uses this to make a round of new, data-less files durable with one fsync.

Known here: xfs (always logs metadata) and ext4/ext3 with a journal (ext4 can run without
one: then each file needs its own fsync, and the directory its own). Anything else
(btrfs logs per inode, tmpfs, NFS, FUSE, ...) answers False: every file is fsync'd.
"""

from __future__ import annotations

import ctypes
import os

from .libc import libc_function

XFS_SUPER_MAGIC = 0x58465342
EXT4_SUPER_MAGIC = 0xEF53          # ext2, ext3 and ext4 alike
JBD2_DIR = "/proc/fs/jbd2"         # one entry per mounted journal: "<device>-<inode>"
SYS_DEV_BLOCK = "/sys/dev/block"

class _StatFs(ctypes.Structure):
    # struct statfs on Linux (64-bit and 32-bit with LFS alike: f_type leads)
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def filesystem_magic(fd: int) -> int | None:
    """The f_type of the filesystem holding ``fd`` (fstatfs), None if it cannot be read."""
    fstatfs = libc_function("fstatfs", ctypes.c_int, ctypes.POINTER(_StatFs))
    buf = _StatFs()
    if fstatfs is None or fstatfs(fd, ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


def block_device_name(dev: int) -> str | None:
    """The kernel's name of block device ``dev`` ("loop0", "dm-3", "sda1")."""
    try:
        target = os.readlink(f"{SYS_DEV_BLOCK}/{os.major(dev)}:{os.minor(dev)}")
    except OSError:
        return None
    return os.path.basename(target)


def has_jbd2_journal(device_name: str, jbd2_entries: list[str]) -> bool:
    """Whether ``jbd2_entries`` (the names under /proc/fs/jbd2) hold the journal of the
    filesystem on ``device_name`` (an internal journal is named "<device>-<inode>")."""
    prefix = device_name + "-"
    return any(e.startswith(prefix) and e[len(prefix):].isdigit() for e in jbd2_entries)


def metadata_in_order(fd: int) -> bool:
    """True when the filesystem of ``fd`` is known to commit metadata in order (see the
    module doc); False when it is not or it cannot be told."""
    magic = filesystem_magic(fd)
    if magic == XFS_SUPER_MAGIC:
        return True
    if magic != EXT4_SUPER_MAGIC:
        return False
    try:
        name = block_device_name(os.fstat(fd).st_dev)
        entries = os.listdir(JBD2_DIR)
    except OSError:
        return False
    return name is not None and has_jbd2_journal(name, entries)
