"""Overwriting a volume's bytes in place: Wipe's algorithms.

"zero" (the default) is each backend's own fast way to make a volume read as zeroes
(it may discard or punch holes). The other algorithms really write every byte of the
volume: "random" writes random bytes (as libvirt's scrub-based "random"). The work runs
in a worker thread (``block_io.cancellable``) that stops between chunks when cancelled,
reporting (bytes done, bytes total) as it goes.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable

from ..errors import Cancelled, Failed, InvalidArgument, NoSpace, NotSupported

ZERO = "zero"
RANDOM = "random"
ALGORITHMS = (ZERO, RANDOM)
# libvirt's other virStorageVolWipeAlgorithm names: known, not implemented here.
LIBVIRT_ALGORITHMS = ("nnsa", "dod", "bsi", "gutmann", "schneier", "pfitzner7",
                      "pfitzner33", "trim")
CHUNK = 1024 * 1024

Progress = Callable[[int, int], None]


def check_algorithm(name: str) -> str:
    """The algorithm name, or InvalidArgument (unknown) / NotSupported (libvirt's others)."""
    if name in ALGORITHMS:
        return name
    if name in LIBVIRT_ALGORITHMS:
        raise NotSupported(f"wipe algorithm '{name}' is not supported "
                           f"(supported: {', '.join(ALGORITHMS)})")
    raise InvalidArgument(f"unknown wipe algorithm '{name[:64]}' "
                          f"(supported: {', '.join(ALGORITHMS)})")


def _chunk(algorithm: str, n: int, zeroes: memoryview) -> bytes | memoryview:
    if algorithm == RANDOM:
        return os.urandom(n)
    return zeroes[:n]


def fill_fd(fd: int, start: int, end: int, algorithm: str, *, cancel: threading.Event,
            progress: Progress) -> None:
    """Write ``algorithm``'s bytes over [start, end) of ``fd``, then fsync."""
    check_algorithm(algorithm)
    zeroes = memoryview(bytes(CHUNK))
    total = end - start
    off = start
    progress(0, total)
    while off < end:
        if cancel.is_set():
            raise Cancelled("wipe cancelled")
        view = memoryview(_chunk(algorithm, min(CHUNK, end - off), zeroes))
        while view:
            n = os.pwrite(fd, view, off)
            if n <= 0:
                raise Failed(f"short write at byte {off}")
            view = view[n:]
            off += n
        progress(off - start, total)
    os.fsync(fd)


def _os_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left")
    return Failed(f"{what}: {exc.strerror or exc}")


def overwrite_file(path: str, algorithm: str, *, cancel: threading.Event,
                   progress: Progress) -> None:
    """Overwrite every byte of the regular file ``path`` (its holes become data; the
    size stays). Refused up front when the filesystem lacks room for the holes."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc, f"cannot open {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} is not a regular file")
        holes = max(0, st.st_size - st.st_blocks * 512)
        vfs = os.fstatvfs(fd)
        free = vfs.f_bavail * vfs.f_frsize
        if holes > free:
            raise NoSpace(f"overwriting {path} needs up to {holes} more bytes; "
                          f"only {free} are free")
        fill_fd(fd, 0, st.st_size, algorithm, cancel=cancel, progress=progress)
    except OSError as exc:
        raise _os_error(exc, f"cannot wipe {path}") from None
    finally:
        os.close(fd)


def overwrite_device(path: str, algorithm: str, *, cancel: threading.Event,
                     progress: Progress) -> None:
    """Overwrite the whole block device ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc, f"cannot open {path}") from None
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{path} is not a block device")
        size = os.lseek(fd, 0, os.SEEK_END)
        fill_fd(fd, 0, size, algorithm, cancel=cancel, progress=progress)
    except OSError as exc:
        raise _os_error(exc, f"cannot wipe {path}") from None
    finally:
        os.close(fd)
