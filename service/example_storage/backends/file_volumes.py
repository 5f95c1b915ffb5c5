"""Volumes that are files in one directory: shared by the dir, fs and netfs pools.

Every function takes the pool's directory and a volume *name* (or a path the backend
built as ``pool_dir/name``); nothing here trusts a path from a caller's XML. New
volumes are made under a hidden temporary name in the same directory and then
linked into place without replacing anything, so a failed or concurrent create
leaves no partial file under the volume's name; a create returns once the volume
survives a crash (fsync of the file and of the directory, shared between creates
running side by side: dirsync.py). Slow file work runs in a thread that stops when
the awaiting task is cancelled; a sparse raw file of a local pool is made right on
the event loop (a few metadata calls). Volumes are described from their headers;
only image formats the service cannot read itself (vmdk, vdi ...) run qemu-img info.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import progress as progress_mod
from ..errors import (
    AlreadyExists,
    Cancelled,
    CommandFailed,
    Failed,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotSupported,
)
from ..model.definitions import BackingStore, Permissions, VolumeDefinition
from ..model.names import validate_name
from ..system import qemu_img
from ..system.libc import libc_call
from ..system.qemu_img import HEADER_PROBE_BYTES, QcowHeader, parse_qcow_header
from . import block_io, dirsync, transfer, unnamed
from .block_io import cancellable

log = logging.getLogger(__name__)

TEMP_PREFIX = ".es-tmp-"
RAW_FORMATS = ("raw",)
QEMU_FORMATS = ("qcow2", "qcow", "qed", "vdi", "vhdx", "vmdk", "vpc")
FORMATS = RAW_FORMATS + QEMU_FORMATS
MAX_CAPACITY = 2**63 - 1
DEFAULT_VOLUME_MODE = 0o600
_COPY_CHUNK = 8 * 1024 * 1024
_ZERO_CHUNK = 1024 * 1024
_QEMU_INFO_CONCURRENCY = 4
_MAX_BACKING_NAME = 4096

Progress = Callable[[int, int], None]


# -- small helpers -------------------------------------------------------------

def check_volume_name(name: str) -> str:
    validate_name(name, "volume name")
    if name.startswith(TEMP_PREFIX):
        raise InvalidArgument(f"volume names starting with '{TEMP_PREFIX}' are reserved")
    return name


def volume_path(pool_dir: str, name: str) -> str:
    return os.path.join(pool_dir, check_volume_name(name))


def _check_capacity(capacity: int | None) -> int:
    if capacity is None or capacity == 0:
        raise InvalidArgument("volume capacity must be given and larger than 0")
    if capacity < 0:
        raise InvalidArgument(f"volume capacity must not be negative: {capacity}")
    if capacity > MAX_CAPACITY:
        raise InvalidArgument(f"volume capacity {capacity} is larger than 2^63-1 bytes")
    return capacity


def free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _check_space(directory: str, needed: int, what: str) -> None:
    if needed <= 0:
        return
    free = free_bytes(directory)
    if needed > free:
        raise NoSpace(f"{what} needs {needed} bytes but only {free} bytes are free in {directory}")


def _os_error(exc: OSError, what: str) -> Exception:
    """Map an OSError from file work to the error a caller should see."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on the filesystem")
    if exc.errno == errno.EFBIG:
        return InvalidArgument(f"{what}: larger than the filesystem's largest file")
    if exc.errno == errno.ENOENT:
        return NotFound(f"{what}: {exc.strerror}")
    return Failed(f"{what}: {exc.strerror or exc}")


def _qemu_error(exc: CommandFailed, what: str) -> Exception:
    text = exc.stderr.lower()
    if "no space left" in text or "disk quota" in text:
        return NoSpace(f"{what}: {exc.stderr.strip()}")
    if "too large" in text or "too big" in text:
        return InvalidArgument(f"{what}: {exc.stderr.strip()}")
    return exc


def _temp_path(directory: str) -> str:
    return os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}")


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _mode_uid_gid(perms: Permissions | None, default_mode: int) -> tuple[int, int, int]:
    mode = default_mode
    uid = gid = -1
    if perms is not None:
        if perms.mode is not None and perms.mode != -1:
            if not 0 <= perms.mode <= 0o7777:
                raise InvalidArgument(f"invalid permission mode {perms.mode:o}")
            mode = perms.mode
        if perms.owner is not None and perms.owner != -1:
            uid = perms.owner
        if perms.group is not None and perms.group != -1:
            gid = perms.group
    return mode, uid, gid


def _apply_permissions_fd(fd: int, path: str, perms: Permissions | None,
                          default_mode: int) -> None:
    """apply_permissions on an open file."""
    mode, uid, gid = _mode_uid_gid(perms, default_mode)
    try:
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise Failed(f"cannot set owner/mode of {path}: {exc.strerror}") from None


def apply_permissions(path: str, perms: Permissions | None, default_mode: int) -> None:
    """chown (when owner/group are given and not -1), then chmod (chown clears set-id bits)."""
    mode, uid, gid = _mode_uid_gid(perms, default_mode)
    try:
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, mode, follow_symlinks=False)
    except OSError as exc:
        raise Failed(f"cannot set owner/mode of {path}: {exc.strerror}") from None


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAMEAT2_ARGS = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)


def _rename_noreplace(src: str, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE); a plain check-then-rename where that is missing."""
    try:
        libc_call("renameat2", _RENAMEAT2_ARGS, _AT_FDCWD, os.fsencode(src), _AT_FDCWD,
                  os.fsencode(dst), _RENAME_NOREPLACE, path=dst)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def publish_noreplace(tmp: str, final: str, *, what: str) -> None:
    """Give the finished temp file its final name, never replacing an existing one
    (a concurrent create of the same name loses with AlreadyExists)."""
    try:
        try:
            os.link(tmp, final, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            _rename_noreplace(tmp, final)   # filesystems without hard links
            return
    except FileExistsError:
        raise AlreadyExists(f"{what} already exists") from None
    except OSError as exc:
        raise _os_error(exc, f"cannot create {what}") from None
    os.unlink(tmp)


async def _in_thread(fn: Callable[..., Any], *args: Any, progress: Progress | None = None,
                     **kwargs: Any) -> Any:
    """Run ``fn(*args, cancel=Event, progress=cb, **kwargs)`` in a thread; cancelling the
    awaiting task sets the event and waits for the thread to stop (so cleanup can
    follow). ``progress`` (default: the running job's reporter) is called on the loop."""
    target = progress if progress is not None else progress_mod.reporter()
    return await cancellable(fn, *args, progress=progress_mod.on_loop(target), **kwargs)


# -- reading volumes -----------------------------------------------------------

@dataclass
class _Scan:
    name: str
    path: str          # pool_dir/name (what callers see)
    real_path: str     # the regular file (differs when path is a symlink inside the dir)
    st: os.stat_result
    format: str
    virtual_size: int | None
    qcow: QcowHeader | None
    backing_name: str | None


# The format a volume was created with, kept with the file itself: a guest may write
# an image header (with a backing file naming any host file) into a raw volume, and a
# probe would then read that host file through the backing chain. A raw volume stays
# raw. Filesystems without user xattrs fall back to probing, as libvirt does.
FORMAT_XATTR = "user.example-storage.format"


def _recorded_format(fd: int) -> str | None:
    try:
        value = os.getxattr(fd, FORMAT_XATTR).decode("ascii", "replace")
    except OSError:
        return None
    return value if value in FORMATS else None


def _record_format(path: str, fmt: str) -> None:
    try:
        os.setxattr(path, FORMAT_XATTR, fmt.encode())
    except OSError as exc:
        log.debug("cannot record the format of %s: %s", path, exc.strerror)


def _record_format_fd(fd: int, path: str, fmt: str) -> None:
    try:
        os.setxattr(fd, FORMAT_XATTR, fmt.encode())
    except OSError as exc:
        log.debug("cannot record the format of %s: %s", path, exc.strerror)


def _probe(fd: int) -> tuple[str, int | None, bytes]:
    """(format, virtual size, header) of an open image, trusting a recorded 'raw' (whose
    header is then not read: b"")."""
    if _recorded_format(fd) == "raw":
        return "raw", None, b""
    head = os.pread(fd, HEADER_PROBE_BYTES, 0)
    fmt, vsize = qemu_img.probe_image_format(head)
    return fmt, vsize, head


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_entry(pool_dir: str, path: str, regular: bool) -> tuple[int, str] | None:
    """(fd, real path) of the entry ``path`` (pool_dir/name): a regular file, or a symlink
    to one inside the pool; None for anything else. ``regular``: the directory listing
    said it is a regular file (d_type), so it is opened at once (O_NOFOLLOW: never
    through a symlink that replaced it meanwhile: that one takes the checked way)."""
    if regular:
        try:
            return os.open(path, _OPEN_FLAGS), path
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
    lst = os.lstat(path)
    real_path = path
    if stat.S_ISLNK(lst.st_mode):
        real_path = os.path.realpath(path)
        if not _inside(real_path, os.path.realpath(pool_dir)):
            return None   # never follow a symlink out of the pool
    elif not stat.S_ISREG(lst.st_mode):
        return None
    return os.open(real_path, _OPEN_FLAGS), real_path


def _scan_file(pool_dir: str, name: str, regular: bool = False) -> _Scan | None:
    """Stat and header-probe one entry; None if it is not a regular file of this dir.
    A file recorded as raw (FORMAT_XATTR) is not read at all."""
    path = os.path.join(pool_dir, name)
    opened = _open_entry(pool_dir, path, regular)
    if opened is None:
        return None
    fd, real_path = opened
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        fmt, vsize, head = _probe(fd)
        qcow = parse_qcow_header(head) if fmt in ("qcow", "qcow2") else None
        backing = None
        if qcow is not None and qcow.backing_offset and qcow.backing_size:
            backing = qcow.backing_filename(head)
            if backing is None and qcow.backing_size <= _MAX_BACKING_NAME:
                raw = os.pread(fd, qcow.backing_size, qcow.backing_offset)
                backing = raw.decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)
    return _Scan(name, path, real_path, st, fmt, vsize, qcow, backing)


def _resolve_backing(image_path: str, backing: str) -> str:
    """qemu resolves a relative backing name against the image's directory."""
    if os.path.isabs(backing) or ":" in backing.split("/", 1)[0]:
        return backing   # absolute, or a protocol such as nbd: / json:
    return os.path.normpath(os.path.join(os.path.dirname(image_path), backing))


def _to_definition(scan: _Scan, info: qemu_img.ImageInfo | None = None) -> VolumeDefinition:
    st = scan.st
    capacity = scan.virtual_size if scan.virtual_size is not None else st.st_size
    backing_name = scan.backing_name
    backing_fmt = scan.qcow.backing_format if scan.qcow else None
    compat = scan.qcow.compat if scan.qcow and scan.format == "qcow2" else None
    if info is not None:
        capacity = info.virtual_size
        backing_name = backing_name or info.backing_filename
        backing_fmt = backing_fmt or info.backing_format
        compat = compat or info.compat
    backing = None
    if backing_name:
        backing = BackingStore(path=_resolve_backing(scan.path, backing_name), format=backing_fmt)
    return VolumeDefinition(
        name=scan.name,
        type="file",
        key=scan.path,
        path=scan.path,
        capacity=capacity,
        allocation=st.st_blocks * 512,
        physical=st.st_size,
        format=scan.format,
        permissions=Permissions(mode=stat.S_IMODE(st.st_mode), owner=st.st_uid, group=st.st_gid),
        compat=compat,
        backing_store=backing,
    )


def _needs_qemu_info(scan: _Scan) -> bool:
    """Only for what the service cannot read itself: a raw volume's capacity is its file
    size; qcow/qcow2 headers give the virtual size, backing file and compat level. Other
    image formats (vmdk, vdi, vpc, qed, vhdx) go through qemu-img info."""
    if scan.format == "raw":
        return False
    if scan.format in ("qcow2", "qcow"):
        return scan.virtual_size is None
    return True


async def _describe(scan: _Scan, sem: asyncio.Semaphore | None = None) -> VolumeDefinition:
    info = None
    if _needs_qemu_info(scan):
        try:
            if sem is None:
                info = await qemu_img.info(scan.real_path, scan.format)
            else:
                async with sem:
                    info = await qemu_img.info(scan.real_path, scan.format)
        except (CommandFailed, NotSupported, Failed) as exc:
            log.info("qemu-img info %s: %s", scan.real_path, exc)
    return _to_definition(scan, info)


# An ASCII name that validate_name accepts (no control characters, no '/', not starting
# with '-', 1..255 characters, not '.' or '..'): the common case of a directory listing,
# checked without validate_name's per-character loop.
_PLAIN_NAME = re.compile(r"(?!-)[\x20-\x2e\x30-\x7e]{1,255}")


def _listable_name(name: str) -> bool:
    if name.startswith(TEMP_PREFIX):
        return False
    if name.isascii() and _PLAIN_NAME.fullmatch(name) is not None:
        return name not in (".", "..")
    try:
        name.encode("utf-8")   # D-Bus strings must be UTF-8: skip undecodable names
        validate_name(name)
    except (UnicodeEncodeError, InvalidArgument):
        return False
    return True


def _scan_dir(pool_dir: str) -> list[_Scan | VolumeDefinition]:
    """One pass over the directory (d_type tells regular files, which are opened at once):
    a VolumeDefinition for each volume described from its header, the _Scan of each
    that needs qemu-img info; sorted by name."""
    found: list[_Scan | VolumeDefinition] = []
    with os.scandir(pool_dir) as it:
        for entry in it:
            if not _listable_name(entry.name):
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
                scan = _scan_file(pool_dir, entry.name, regular)
            except OSError as exc:   # vanished meanwhile, unreadable, ...
                log.info("skipping %s: %s", entry.path, exc)
                continue
            if scan is not None:
                found.append(scan if _needs_qemu_info(scan) else _to_definition(scan))
    found.sort(key=lambda s: s.name)
    return found


async def list_volumes(pool_dir: str) -> list[VolumeDefinition]:
    """Every volume file in ``pool_dir``, sorted by name. Only images the service cannot
    read itself (vmdk, vdi ...) cost a qemu-img run."""
    try:
        found = await asyncio.to_thread(_scan_dir, pool_dir)
    except OSError as exc:
        raise _os_error(exc, f"cannot list {pool_dir}") from None
    scans = [s for s in found if isinstance(s, _Scan)]
    if scans:
        sem = asyncio.Semaphore(_QEMU_INFO_CONCURRENCY)
        described = iter(await asyncio.gather(*(_describe(s, sem) for s in scans)))
        found = [next(described) if isinstance(s, _Scan) else s for s in found]
    return [v for v in found if isinstance(v, VolumeDefinition)]


async def _scan_or_notfound(pool_dir: str, name: str) -> _Scan:
    try:
        scan = await asyncio.to_thread(_scan_file, pool_dir, name)
    except FileNotFoundError:
        scan = None
    except OSError as exc:
        raise _os_error(exc, f"cannot read volume '{name}'") from None
    if scan is None:
        raise NotFound(f"no volume '{name}' in {pool_dir}")
    return scan


async def volume_info(pool_dir: str, name: str) -> VolumeDefinition:
    """One volume, read afresh; NotFound if ``pool_dir/name`` is not a volume file."""
    check_volume_name(name)
    return await _describe(await _scan_or_notfound(pool_dir, name))


# -- create --------------------------------------------------------------------

def _set_nocow(fd: int) -> None:
    """chattr +C (btrfs); must happen while the file is empty. Best effort."""
    import fcntl
    import struct

    fs_ioc_getflags, fs_ioc_setflags, fs_nocow_fl = 0x80086601, 0x40086602, 0x00800000
    try:
        buf = fcntl.ioctl(fd, fs_ioc_getflags, struct.pack("l", 0))
        flags = struct.unpack("l", buf)[0] | fs_nocow_fl
        fcntl.ioctl(fd, fs_ioc_setflags, struct.pack("l", flags))
    except OSError:
        pass


def _size_raw(fd: int, path: str, capacity: int, allocation: int, nocow: bool,
              progress: Progress) -> None:
    """Give the new (empty) file ``fd`` its capacity, allocating ``allocation`` bytes."""
    if nocow:
        _set_nocow(fd)
    try:
        os.ftruncate(fd, capacity)
    except OSError as exc:
        if exc.errno in (errno.EFBIG, errno.EINVAL):
            raise InvalidArgument(
                f"capacity {capacity} is beyond the largest file the filesystem "
                f"of {os.path.dirname(path)} supports"
            ) from None
        raise _os_error(exc, "cannot size the new volume") from None
    if allocation > 0:
        try:
            os.posix_fallocate(fd, 0, allocation)
        except OSError as exc:
            raise _os_error(exc, f"cannot allocate {allocation} bytes") from None
        progress(allocation, allocation)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_raw(
    pool_dir: str, name: str, capacity: int, allocation: int, nocow: bool,
    perms: Permissions | None, published: dict[str, Any], *,
    cancel: threading.Event, progress: Progress,
) -> tuple[int, VolumeDefinition]:
    """A raw volume made and published, not yet made durable: the file made unnamed
    (unnamed.py; where that cannot be, under a hidden temp name), sized, its format
    recorded, owner and mode set, then linked into place without replacing anything.
    Returns the still open file (for the durability step: dirsync) and the volume
    described from it (no second scan). On failure or cancel nothing is left;
    ``published`` gets the (path, inode) the volume is published as.

    The durability step (dirsync.sync_round) comes after the link: the file holds no data
    (a sparse file; an allocation is unwritten extents), only metadata, and a journaling
    filesystem commits metadata in order, so a crash can never keep the name without the
    finished file; there the file's fsync commits the link as well (and the other new
    files of its round). Elsewhere the file and then the directory are fsync'd. A file
    whose allocation was written (no fallocate: glibc writes zeroes) is fsync'd before
    the link too."""
    final = os.path.join(pool_dir, name)
    # no check that ``final`` is free first: linking (or renaming) never replaces
    # anything, and refuses a taken name with AlreadyExists
    tmp: str | None = None
    try:
        fd = unnamed.open_unnamed(pool_dir, 0o600)
        if fd is None:
            tmp = _temp_path(pool_dir)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _os_error(exc, f"cannot create volume '{name}'") from None
    label = tmp or final                # what error messages call the file
    try:
        _size_raw(fd, label, capacity, allocation, nocow, progress)
        _record_format_fd(fd, label, "raw")
        _apply_permissions_fd(fd, label, perms, DEFAULT_VOLUME_MODE)
        if allocation > 0:
            os.fsync(fd)
        if cancel.is_set():
            raise Cancelled("create cancelled")
        st = os.fstat(fd)   # what linking changes (nlink, ctime) is not described
        # recorded first: _unpublish removes the name only while it holds this inode
        published["volume"] = (final, st.st_ino)
        if tmp is not None:
            publish_noreplace(tmp, final, what=f"volume '{name}'")
            linked = True
        else:
            linked = _link_new(fd, final, name)
    except BaseException as exc:
        os.close(fd)
        if tmp is not None:
            _unlink_quiet(tmp)
        _unpublish(published)
        if isinstance(exc, OSError):
            raise _os_error(exc, f"cannot create volume '{name}'") from None
        raise
    if not linked:      # this process cannot name an unnamed file: again, with a temp name
        os.close(fd)
        published.pop("volume", None)
        return _publish_raw(pool_dir, name, capacity, allocation, nocow, perms, published,
                            cancel=cancel, progress=progress)
    return fd, _to_definition(_Scan(name, final, final, st, "raw", None, None, None))


def _link_new(fd: int, final: str, name: str) -> bool:
    """Name the unnamed new file ``fd`` ``final`` (never replacing anything); False where
    this process cannot."""
    try:
        return unnamed.link_unnamed(fd, final)
    except FileExistsError:
        raise AlreadyExists(f"volume '{name}' already exists in "
                            f"{os.path.dirname(final)}") from None


def _make_raw_volume(
    pool_dir: str, name: str, capacity: int, allocation: int, nocow: bool,
    perms: Permissions | None, published: dict[str, Any], *,
    cancel: threading.Event, progress: Progress,
) -> VolumeDefinition:
    """_publish_raw and its durability (the file's fsync, then the directory's) in one
    go, for a thread."""
    fd, vol = _publish_raw(pool_dir, name, capacity, allocation, nocow, perms, published,
                           cancel=cancel, progress=progress)
    try:
        errors = dirsync.sync_round(pool_dir, [fd])   # closes fd
        if errors[0] is not None:
            raise errors[0]
    except OSError as exc:
        _unpublish(published)
        raise _os_error(exc, f"cannot create volume '{name}'") from None
    return vol


def _unpublish(published: dict[str, Any]) -> None:
    """Remove what a create that then failed or was cancelled published (only while the
    name holds the file that create made: never another create's volume)."""
    path, ino = published.get("volume", (None, None))
    if path is None:
        return
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == ino:
            os.unlink(path)


def _header_format(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return qemu_img.probe_image_format(f.read(HEADER_PROBE_BYTES))[0]
    except OSError as exc:
        raise InvalidArgument(f"cannot read backing file {path}: {exc.strerror}") from None


def _qemu_create_options(vol: VolumeDefinition, fmt: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    if fmt == "qcow2":
        for feature in vol.features or []:
            if feature != "lazy_refcounts":
                raise InvalidArgument(f"unsupported qcow2 feature '{feature}'")
            opts["lazy_refcounts"] = "on"
        if vol.nocow:
            opts["nocow"] = "on"
    return opts


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"unsupported volume format '{fmt}' (supported: {', '.join(FORMATS)})"
        )
    return fmt


async def _build_and_publish(
    pool_dir: str, name: str, fmt: str, perms: Permissions | None,
    build: Callable[[str], Awaitable[None]],
) -> None:
    """Make a new volume under a hidden temp name with ``build(tmp)``, record its format,
    set its permissions, fsync it (an image or a copy holds data: it is durable before it
    gets its name), rename it into place without replacing anything and fsync the
    directory; on any failure (or cancel) nothing is left behind."""
    tmp = _temp_path(pool_dir)
    published: dict[str, Any] = {}
    try:
        await build(tmp)
        _record_format(tmp, fmt)
        apply_permissions(tmp, perms, DEFAULT_VOLUME_MODE)
        await asyncio.to_thread(_fsync_path, tmp)
        published["volume"] = (os.path.join(pool_dir, name), os.lstat(tmp).st_ino)
        publish_noreplace(tmp, os.path.join(pool_dir, name), what=f"volume '{name}'")
        await asyncio.to_thread(dirsync.fsync_dir, pool_dir)
    except OSError as exc:
        _unlink_quiet(tmp)
        _unpublish(published)
        raise _os_error(exc, f"cannot create volume '{name}'") from None
    except BaseException:
        _unlink_quiet(tmp)
        _unpublish(published)
        raise


async def _create_raw(
    pool_dir: str, name: str, capacity: int, allocation: int, vol: VolumeDefinition, *,
    on_loop: bool, progress: Progress | None,
) -> VolumeDefinition:
    """A raw volume, made durable before it is returned. ``on_loop``: the file work (a
    few metadata calls on a local filesystem, nothing to allocate) runs right here and
    only the fsyncs go to a thread, in rounds shared with the other creates of the
    directory (dirsync); otherwise all of it runs in a thread."""
    published: dict[str, Any] = {}
    try:
        if not on_loop:
            return await _in_thread(_make_raw_volume, pool_dir, name, capacity, allocation,
                                    vol.nocow, vol.permissions, published, progress=progress)
        fd, made = _publish_raw(pool_dir, name, capacity, allocation, vol.nocow,
                                vol.permissions, published, cancel=_NOT_CANCELLED,
                                progress=_no_progress)
        try:
            await dirsync.sync_new_file(pool_dir, fd)
        except OSError as exc:
            _unpublish(published)
            raise _os_error(exc, f"cannot create volume '{name}'") from None
        return made
    except asyncio.CancelledError:
        _unpublish(published)
        raise


_NOT_CANCELLED = threading.Event()     # a create on the loop runs to its end: never set


def _no_progress(done: int, total: int) -> None:
    return None


async def create_volume(
    pool_dir: str, vol: VolumeDefinition, *, preallocation: str | None = None,
    progress: Progress | None = None, on_loop: bool = False,
) -> VolumeDefinition:
    """Create ``pool_dir/vol.name``: a sparse raw file (``vol.allocation`` bytes allocated),
    or an image made by qemu-img (qcow2 with backing store, compat, features ...).
    Returns once the new volume survives a crash (its file and directory entry fsync'd).

    ``preallocation`` ('off', 'metadata', 'falloc', 'full') applies to qemu formats.
    ``on_loop``: ``pool_dir`` is on a local filesystem, where a sparse raw file is made
    with a few quick calls right on the event loop (no thread hop; see _create_raw).
    """
    name = check_volume_name(vol.name)
    fmt = _check_format((vol.format or "raw").lower())
    capacity = _check_capacity(vol.capacity)
    if vol.encryption_format:
        raise NotSupported("encrypted volumes are not supported yet")
    if preallocation not in (None, "off", "metadata", "falloc", "full"):
        raise InvalidArgument(f"invalid preallocation '{preallocation}'")
    _mode_uid_gid(vol.permissions, DEFAULT_VOLUME_MODE)   # validate before any work
    if fmt == "raw":
        allocation = min(max(vol.allocation or 0, 0), capacity)
        _check_space(pool_dir, allocation, f"allocating {allocation} bytes for '{name}'")
        return await _create_raw(pool_dir, name, capacity, allocation, vol,
                                 on_loop=on_loop and allocation == 0, progress=progress)
    if preallocation in ("falloc", "full"):
        _check_space(pool_dir, capacity, f"preallocating '{name}'")
    final = os.path.join(pool_dir, name)
    if os.path.lexists(final):
        raise AlreadyExists(f"volume '{name}' already exists in {pool_dir}")

    async def build(tmp: str) -> None:
        backing = backing_fmt = None
        if vol.backing_store is not None and vol.backing_store.path:
            backing = vol.backing_store.path
            backing_fmt = vol.backing_store.format or await asyncio.to_thread(
                _header_format, _resolve_backing(final, backing)
            )
        try:
            await qemu_img.create(
                tmp, fmt, capacity, backing, backing_fmt,
                preallocation=preallocation,
                compat=vol.compat if fmt == "qcow2" else None,
                options=_qemu_create_options(vol, fmt),
            )
        except CommandFailed as exc:
            raise _qemu_error(exc, f"cannot create volume '{name}'") from None

    await _build_and_publish(pool_dir, name, fmt, vol.permissions, build)
    return await volume_info(pool_dir, name)


# -- delete / resize -------------------------------------------------------------

async def delete_volume(path: str) -> None:
    """Remove the volume file ``path`` (a symlink volume: the link, not its target; a
    directory is refused: unlink never removes one, Linux answers EISDIR)."""
    try:
        os.unlink(path)
    except IsADirectoryError:
        raise InvalidArgument(f"{path} is a directory, not a volume") from None
    except FileNotFoundError:
        raise NotFound(f"volume {path} does not exist") from None
    except OSError as exc:
        raise _os_error(exc, f"cannot delete {path}") from None


def _truncate(path: str, old: int, new: int, allocate: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, new)
        if allocate and new > old:
            os.posix_fallocate(fd, old, new - old)
    except OSError as exc:
        raise _os_error(exc, f"cannot resize {path} to {new} bytes") from None
    finally:
        os.close(fd)


async def resize_volume(
    path: str, capacity: int, shrink: bool, *, allocate: bool = False
) -> VolumeDefinition:
    """Set the volume's capacity. Shrinking needs ``shrink``; ``allocate`` also
    allocates the added space (and so checks that the filesystem has it)."""
    _check_capacity(capacity)
    pool_dir, name = os.path.split(path)
    scan = await _scan_or_notfound(pool_dir, name)
    current = (await _describe(scan)).capacity or 0
    if capacity == current:
        return await volume_info(pool_dir, name)
    if capacity < current and not shrink:
        raise InvalidArgument(
            f"new capacity {capacity} is smaller than the current {current} of '{name}'; "
            "use option 'shrink' to shrink it (data beyond the new end is lost)"
        )
    grow = capacity > current
    if allocate and grow:
        _check_space(pool_dir, capacity - current, f"growing '{name}'")
    if scan.format == "raw":
        await asyncio.to_thread(_truncate, scan.real_path, current, capacity, allocate)
    else:
        try:
            await qemu_img.resize(
                scan.real_path, capacity, scan.format, shrink=not grow,
                preallocation="falloc" if allocate and grow else None,
            )
        except CommandFailed as exc:
            raise _qemu_error(exc, f"cannot resize '{name}'") from None
    return await volume_info(pool_dir, name)


# -- sparse-aware data walking ---------------------------------------------------

def data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the parts of ``fd`` that hold data; all of it if the
    filesystem (or a block device) cannot tell holes apart."""
    return block_io.data_extents(fd, 0, size)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF)


def _copy_range(
    src: int, dst: int, start: int, end: int, state: dict[str, Any],
    cancel: threading.Event,
) -> None:
    off = start
    while off < end:
        if cancel.is_set():
            raise Cancelled("copy cancelled")
        n = min(_COPY_CHUNK, end - off)
        if state["cfr"]:
            try:
                copied = os.copy_file_range(src, dst, n, off, off)
            except OSError as exc:
                if exc.errno not in _NO_COPY_FILE_RANGE:
                    raise
                state["cfr"] = False
                continue
        else:
            buf = os.pread(src, n, off)
            copied = len(buf)
            if buf.count(0) != copied:   # all-zero chunks stay holes
                _pwrite_all(dst, buf, off)
        if copied == 0:
            return   # the source ended early
        block_io.start_writeback(dst, off, copied)   # overlaps the copy and the fsync
        off += copied
        state["done"] += copied
        if "report" in state:
            state["report"](off)


FICLONE = 0x40049409   # _IOW(0x94, 9, int): share the source's extents (xfs, btrfs)
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL,
                         errno.ENOTTY, errno.ENOSYS, errno.EBADF, errno.EPERM})


def _reflink(src: int, dst: int) -> bool:
    """FICLONE ``dst`` from ``src``; False where the filesystem (or pair) cannot."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


def _copy_file(
    src_path: str, dst_path: str, src_size: int, capacity: int, *,
    space_check: Callable[[], None] | None = None,
    cancel: threading.Event, progress: Progress,
) -> str:
    """Make ``dst_path`` a copy of ``src_path`` (``src_size`` bytes), then extend it to
    ``capacity``. A regular file on the same filesystem is reflinked (FICLONE: no data
    is copied, the extents are shared until written); otherwise ``space_check()`` runs
    and a sparse copy follows the source's data extents (copy_file_range, or read/write
    skipping all-zero chunks), so its time and space follow the data, not the size.
    Returns "reflink" or "copy"."""
    src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(
            dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            src_st = os.fstat(src)
            method = "copy"
            if (stat.S_ISREG(src_st.st_mode) and src_st.st_size == src_size
                    and src_st.st_dev == os.fstat(dst).st_dev and _reflink(src, dst)):
                method = "reflink"
                progress(src_size, src_size)
            else:
                if space_check is not None:
                    space_check()
                os.ftruncate(dst, src_size)
                state: dict[str, Any] = {"cfr": hasattr(os, "copy_file_range"), "done": 0,
                                         "report": lambda off: progress(off, src_size)}
                for start, end in data_segments(src, src_size):
                    _copy_range(src, dst, start, end, state, cancel)
                progress(src_size, src_size)
            if capacity > src_size:
                os.ftruncate(dst, capacity)
            os.fsync(dst)
            return method
        finally:
            os.close(dst)
    except OSError as exc:
        raise _os_error(exc, f"cannot copy {src_path}") from None
    finally:
        os.close(src)


def _zero_data(path: str, *, cancel: threading.Event, progress: Progress) -> list[str]:
    """Make every data region of ``path`` read as zeroes (holes already do); the size
    does not change. A sparse file gets holes punched (its space is freed); a fully
    allocated (preallocated) one keeps its allocation (FALLOC_FL_ZERO_RANGE); zeroes are
    written where the filesystem can do neither. Returns the methods used."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        size = st.st_size
        zeroer = block_io.RangeZeroer(
            fd, keep_allocation=block_io.fully_allocated(st), cancel=cancel, st=st
        )
        progress(0, size)
        for start, end in list(data_segments(fd, size)):
            zeroer.zero(start, end, progress, start, size)   # reports (offset, size)
        os.fsync(fd)
        progress(size, size)
        return sorted(zeroer.used)
    except OSError as exc:
        raise _os_error(exc, f"cannot wipe {path}") from None
    finally:
        os.close(fd)


# -- wipe ------------------------------------------------------------------------

async def wipe_volume(path: str, *, progress: Progress | None = None) -> None:
    """Make the volume read as zeroes, keeping its capacity.

    raw: its data regions made to read as zeroes in place: holes punched in a sparse
    volume (its allocation drops), FALLOC_FL_ZERO_RANGE in a fully allocated one (it
    stays allocated, as a preallocated volume should), zeroes written where the
    filesystem can do neither (as libvirt's zero wipe always does). Image formats:
    replaced by an empty image of the same format, virtual size and backing file
    (owner and mode kept). ``progress`` (default: the running job's) gets (done, total).
    """
    pool_dir, name = os.path.split(path)
    scan = await _scan_or_notfound(pool_dir, name)
    if scan.format == "raw":
        await _in_thread(_zero_data, scan.real_path, progress=progress)
        return
    vol = await _describe(scan)
    real_dir = os.path.dirname(scan.real_path)
    tmp = _temp_path(real_dir)
    backing = scan.backing_name
    backing_fmt = vol.backing_store.format if vol.backing_store else None
    if backing and not backing_fmt:
        backing_fmt = await asyncio.to_thread(
            _header_format, _resolve_backing(scan.path, backing)
        )
    opts: dict[str, str] = {}
    if scan.format == "qcow2" and scan.qcow and scan.qcow.cluster_size:
        opts["cluster_size"] = str(scan.qcow.cluster_size)
    try:
        try:
            await qemu_img.create(
                tmp, scan.format, vol.capacity or 0, backing, backing_fmt,
                compat=vol.compat if scan.format == "qcow2" else None, options=opts,
            )
        except CommandFailed as exc:
            raise _qemu_error(exc, f"cannot wipe '{name}'") from None
        apply_permissions(
            tmp,
            Permissions(mode=stat.S_IMODE(scan.st.st_mode), owner=scan.st.st_uid,
                        group=scan.st.st_gid),
            DEFAULT_VOLUME_MODE,
        )
        os.replace(tmp, scan.real_path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if progress is not None:
        progress(1, 1)


# -- upload / download -------------------------------------------------------------

def _transfer_worker(
    fn: Callable[..., int], path: str, fd: int, offset: int, length: int, what: str, *,
    cancel: threading.Event, progress: Progress,
) -> int:
    try:
        return fn(path, fd, offset, length, cancel=cancel, progress=progress)
    except OSError as exc:
        raise _os_error(exc, what) from None


async def upload_volume(
    path: str, fd: int, offset: int, length: int, *, progress: Progress | None = None
) -> int:
    """Write what ``fd`` holds (``length`` bytes, 0: until it ends) into the raw volume
    ``path`` at ``offset`` (transfer.upload: the source's holes and zero chunks become
    holes of a sparse volume); returns the bytes taken. Image formats are refused: the
    bytes of a qcow2 file are not what its guest sees."""
    pool_dir, name = os.path.split(path)
    scan = await _scan_or_notfound(pool_dir, name)
    if scan.format != "raw":
        raise NotSupported(
            f"'{name}' is a {scan.format} image; Upload writes only raw volumes"
        )
    return await _in_thread(_transfer_worker, transfer.upload_to_path, scan.real_path, fd,
                            offset, length, f"uploading into '{name}'", progress=progress)


async def download_volume(
    path: str, fd: int, offset: int, length: int, *, progress: Progress | None = None
) -> int:
    """Write the bytes of the volume ``path`` from ``offset`` (``length``, 0: to the end)
    into ``fd`` (transfer.download: holes stay holes in a seekable file); returns the
    bytes sent. An image (qcow2 ...) sends its file's own bytes, as libvirt does, and
    its range is the file's size."""
    pool_dir, name = os.path.split(path)
    scan = await _scan_or_notfound(pool_dir, name)
    return await _in_thread(_transfer_worker, transfer.download_from_path, scan.real_path, fd,
                            offset, length, f"downloading '{name}'", progress=progress)


# -- clone -----------------------------------------------------------------------

def _source_facts(path: str) -> tuple[str, int, int, bool]:
    """(format, capacity, allocated bytes, is_block) of a clone source."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        is_block = stat.S_ISBLK(st.st_mode)
        if not (is_block or stat.S_ISREG(st.st_mode)):
            raise InvalidArgument(f"{path} is neither a file nor a block device")
        size = os.lseek(fd, 0, os.SEEK_END) if is_block else st.st_size
        fmt, vsize, _ = _probe(fd)
        allocated = size if is_block else st.st_blocks * 512
        return fmt, (vsize if vsize is not None else size), allocated, is_block
    finally:
        os.close(fd)


_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2


def _plain_copy_size(
    path: str, src_fmt: str, dst_fmt: str, src_capacity: int, capacity: int,
    new_vol: VolumeDefinition,
) -> int | None:
    """The bytes to copy when a clone is a plain copy of the source's file (raw to raw:
    its capacity; a qcow2 image that needs no change: its file size), else None (the
    clone goes through qemu-img convert)."""
    if src_fmt != dst_fmt:
        return None
    if src_fmt == "raw":
        return src_capacity
    if src_fmt != "qcow2" or capacity != src_capacity:
        return None
    if new_vol.features or new_vol.nocow or new_vol.backing_store is not None:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = os.pread(fd, HEADER_PROBE_BYTES, 0)
    finally:
        os.close(fd)
    header = parse_qcow_header(head)
    if header is None or header.format != "qcow2" or header.external_data_file:
        return None
    if header.backing_offset and header.backing_size:
        return None   # a copy would keep the chain that convert flattens
    if new_vol.compat not in (None, header.compat):
        return None
    if header.version >= 3 and len(head) >= 80:
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        if incompatible & (_QCOW2_INCOMPAT_CORRUPT | _QCOW2_INCOMPAT_DATA_FILE):
            return None
    return st.st_size


def _copy_timeout(size: int) -> float:
    return 600 + size / (10 * 1024 * 1024)   # at least 10 MiB/s


async def clone_volume(
    pool_dir: str, new_vol: VolumeDefinition, source_vol: VolumeDefinition,
    *, progress: Progress | None = None,
) -> VolumeDefinition:
    """Create ``pool_dir/new_vol.name`` holding a copy of ``source_vol`` (its ``path``,
    which comes from the service's own records: a file or a block device).

    raw to raw, and qcow2 to qcow2 where the copy needs no change (no backing file, no
    external data file, same size and compat level, no new features), copy the file:
    a reflink (FICLONE) on the same reflink-capable filesystem, else a sparse-aware copy.
    Anything else goes through qemu-img convert (which flattens a backing chain).
    The new capacity is at least the source's; a larger one extends the copy.
    """
    name = check_volume_name(new_vol.name)
    dst_fmt = _check_format((new_vol.format or "raw").lower())
    src_path = source_vol.path or source_vol.key
    if not src_path:
        raise InvalidArgument(f"source volume '{source_vol.name}' has no path")
    if new_vol.encryption_format:
        raise NotSupported("encrypted volumes are not supported yet")
    try:
        src_fmt, src_capacity, src_alloc, _is_block = await asyncio.to_thread(
            _source_facts, src_path
        )
    except FileNotFoundError:
        raise NotFound(f"source volume {src_path} does not exist") from None
    except OSError as exc:
        raise _os_error(exc, f"cannot read source volume {src_path}") from None
    if src_fmt not in FORMATS:
        raise NotSupported(f"cannot clone a '{src_fmt}' volume")
    capacity = max(new_vol.capacity or 0, src_capacity)
    if capacity > MAX_CAPACITY:
        raise InvalidArgument(f"volume capacity {capacity} is larger than 2^63-1 bytes")
    final = os.path.join(pool_dir, name)
    if os.path.lexists(final):
        raise AlreadyExists(f"volume '{name}' already exists in {pool_dir}")
    _mode_uid_gid(new_vol.permissions, DEFAULT_VOLUME_MODE)
    copy_size = await asyncio.to_thread(
        _plain_copy_size, src_path, src_fmt, dst_fmt, src_capacity, capacity, new_vol
    )
    what = f"cloning into '{name}'"
    if copy_size is None:
        _check_space(pool_dir, src_alloc, what)

    async def build(tmp: str) -> None:
        if copy_size is not None:
            await _in_thread(
                _copy_file, src_path, tmp, copy_size, capacity if src_fmt == "raw" else copy_size,
                progress=progress,
                space_check=lambda: _check_space(pool_dir, src_alloc, what),
            )
            return
        opts = {"compat": new_vol.compat} if dst_fmt == "qcow2" and new_vol.compat else {}
        try:
            await qemu_img.convert(src_path, src_fmt, tmp, dst_fmt, options=opts,
                                   timeout=_copy_timeout(src_capacity))
            if capacity > src_capacity:
                await qemu_img.resize(tmp, capacity, dst_fmt)
        except CommandFailed as exc:
            raise _qemu_error(exc, f"cannot clone into '{name}'") from None

    await _build_and_publish(pool_dir, name, dst_fmt, new_vol.permissions, build)
    return await volume_info(pool_dir, name)
