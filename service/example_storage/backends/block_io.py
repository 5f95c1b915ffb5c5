"""Writing through block devices and files in place: make a range read as zeroes the
cheapest honest way (BLKZEROOUT, punch-hole, zero-range; writing zeroes otherwise), zero
a whole device, copy data into one (wipe and clone of volumes that are device nodes,
such as LVM logical volumes), and walk a file's data extents.

The work runs in a worker thread; cancelling the awaiting task stops it between chunks
and waits for it, so the caller can clean up afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import inspect
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import progress as progress_mod
from ..errors import Busy, Cancelled, Failed, InvalidArgument, NoSpace, NotFound
from ..system.libc import FALLOCATE_ARGS, libc_call, libc_function

CHUNK = 1024 * 1024
# One BLKZEROOUT / fallocate call covers at most this much: cancel and progress are
# checked between calls (offloaded zeroing of 1 GiB can take a while on real disks).
RANGE_STEP = 64 * 1024 * 1024

Progress = Callable[[int, int], None]

# <linux/fs.h>
BLKSSZGET = 0x1268
BLKDISCARD = 0x1277
BLKDISCARDZEROES = 0x127C
BLKZEROOUT = 0x127F
# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# errno values meaning "this file/device/kernel cannot do that operation"
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY,
                          errno.EINVAL})

_ZEROES = bytes(CHUNK)


def _no_progress(done: int, total: int) -> None:
    return None


def device_size(path: str) -> int:
    """Size in bytes of a block device or regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_size(fd, path)
    finally:
        os.close(fd)


def fd_size(fd: int, what: str = "the volume") -> int:
    """Size in bytes of an open block device or regular file."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    raise InvalidArgument(f"{what} is neither a block device nor a file")


def is_zero(buf: bytes | bytearray | memoryview) -> bool:
    """True when every byte of ``buf`` is 0."""
    if len(buf) == CHUNK:
        return buf == _ZEROES
    return bytes(buf).count(0) == len(buf)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise Failed(f"short write at byte {offset}")
        view = view[n:]
        offset += n


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite until every byte of ``data`` is written at ``offset``."""
    _pwrite_all(fd, memoryview(data), offset)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (Python's os module only has posix_fallocate)."""
    libc_call("fallocate", FALLOCATE_ARGS, fd, mode, offset, length)


SYNC_FILE_RANGE_WRITE = 2


def _libc_sync_file_range() -> Any:
    return libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_uint)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes at ``offset`` of ``fd`` to its storage, not waiting
    (sync_file_range WRITE): a copy that does this after each chunk has its data mostly
    on the disk when it ends, so its final fsync (still needed: this makes nothing
    durable, not even the file's metadata) waits for little. Only a hint: where the call
    is missing or refused nothing happens, and a write error comes from that fsync."""
    fn = _libc_sync_file_range()
    if fn is not None:
        fn(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the parts of [start, end) of ``fd`` that hold data; all of it if
    the filesystem (or a block device) cannot tell holes apart."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end
                return
            raise
        if data >= end:
            return
        stop = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, stop
        pos = stop


def fully_allocated(st: os.stat_result) -> bool:
    """A regular file whose every (whole) block is allocated: a preallocated volume."""
    return st.st_blocks * 512 >= st.st_size - st.st_size % 4096


# -- making a range read as zeroes ------------------------------------------------

class RangeZeroer:
    """Makes ranges of an open file or block device read as zeroes.

    Regular files: ``keep_allocation`` False punches holes (FALLOC_FL_PUNCH_HOLE, the
    space is freed); True uses FALLOC_FL_ZERO_RANGE, so a preallocated volume stays
    allocated. Block devices: BLKZEROOUT (the kernel offloads it where the device
    can, e.g. WRITE ZEROES, and never unmaps); where that is refused, BLKDISCARD only
    if the device promises discarded blocks read as zeroes (BLKDISCARDZEROES; current
    kernels always say no). Anything unsupported falls back to writing zeroes. The
    first method that fails as unsupported is not tried again for this object.
    """

    def __init__(self, fd: int, *, keep_allocation: bool, cancel: threading.Event,
                 st: os.stat_result | None = None) -> None:
        self.fd = fd
        self.cancel = cancel
        st = st or os.fstat(fd)
        self.block = stat.S_ISBLK(st.st_mode)
        if not (self.block or stat.S_ISREG(st.st_mode)):
            raise InvalidArgument("only files and block devices can be zeroed")
        self.align = 1
        if self.block:
            self.methods = ["zeroout", "discard"]
            self.align = max(512, _logical_block_size(fd))
        elif keep_allocation:
            self.methods = ["zero_range"]
        else:
            self.methods = ["punch", "zero_range"]
        self.used: set[str] = set()   # what really ran (tests and logs)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled")

    def zero(self, start: int, end: int, progress: Progress = _no_progress,
             base: int = 0, total: int = 0) -> None:
        """Make [start, end) read as zeroes; reports (base + bytes done, total)."""
        if end <= start:
            return
        if self.block:
            head = min(end, -(-start // self.align) * self.align)
            tail = max(head, end - end % self.align)
            self._write_zeroes(start, head)
            self._offload(head, tail, progress, base + head - start, total)
            self._write_zeroes(tail, end)
        else:
            self._offload(start, end, progress, base, total)
        progress(base + end - start, total)

    def _offload(self, start: int, end: int, progress: Progress, base: int, total: int
                 ) -> None:
        off = start
        while off < end:
            self._check_cancel()
            n = min(RANGE_STEP, end - off)
            if not self._one_call(off, n):
                self._write_zeroes(off, end, progress, base + off - start, total)
                return
            off += n
            progress(base + off - start, total)

    def _one_call(self, off: int, n: int) -> bool:
        """One offloaded call; False once no method works (the caller writes zeroes)."""
        while self.methods:
            method = self.methods[0]
            try:
                self._call(method, off, n)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise Busy("the device is in use (mounted or held by the kernel)"
                               ) from None
                if exc.errno not in _UNSUPPORTED and exc.errno != errno.EPERM:
                    raise
                self.methods.pop(0)
                continue
            self.used.add(method)
            return True
        return False

    def _call(self, method: str, off: int, n: int) -> None:
        if method == "zeroout":
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", off, n))
        elif method == "discard":
            if not _discard_zeroes_data(self.fd):
                raise OSError(errno.EOPNOTSUPP, "discarded blocks need not read as zeroes")
            fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("QQ", off, n))
        elif method == "punch":
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n)
        else:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, n)

    def _write_zeroes(self, start: int, end: int, progress: Progress = _no_progress,
                      base: int = 0, total: int = 0) -> None:
        off = start
        zero = memoryview(_ZEROES)
        while off < end:
            self._check_cancel()
            n = min(CHUNK, end - off)
            _pwrite_all(self.fd, zero[:n], off)
            off += n
            self.used.add("write")
            progress(base + off - start, total)


def _logical_block_size(fd: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, struct.pack("i", 0)))[0]
    except OSError:
        return 512


def _discard_zeroes_data(fd: int) -> bool:
    try:
        return struct.unpack("I", fcntl.ioctl(fd, BLKDISCARDZEROES, struct.pack("I", 0)))[0] == 1
    except OSError:
        return False


def _open_block_for_writing(path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"{path} is not a block device")
    return fd


def zero_device(path: str, start: int = 0, *, cancel: threading.Event,
                progress: Progress | None = None) -> None:
    """Make the block device ``path`` read as zeroes from ``start`` to its end
    (BLKZEROOUT where the kernel takes it, else zeroes written)."""
    fd = _open_block_for_writing(path)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        zeroer = RangeZeroer(fd, keep_allocation=True, cancel=cancel)
        zeroer.zero(start, size, progress or _no_progress, 0, max(size - start, 0))
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_into_device(src_path: str, dst_path: str, *, skip_zero: bool,
                     cancel: threading.Event, progress: Progress | None = None) -> int:
    """Copy the bytes of ``src_path`` (file or device) to the start of the block device
    ``dst_path`` and zero the rest of it; returns the bytes copied.

    ``skip_zero``: leave all-zero chunks unwritten (a fresh thin volume reads zeroes
    where nothing was written; writing them would only allocate space).
    """
    report = progress or _no_progress
    src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        src_size = device_size(src_path)
        dst = _open_block_for_writing(dst_path)
        try:
            dst_size = os.lseek(dst, 0, os.SEEK_END)
            if src_size > dst_size:
                raise InvalidArgument(
                    f"{src_path} ({src_size} bytes) does not fit into {dst_path} "
                    f"({dst_size} bytes)"
                )
            total = src_size if skip_zero else dst_size
            off = 0
            while off < src_size:
                if cancel.is_set():
                    raise Cancelled("cancelled")
                buf = os.pread(src, min(CHUNK, src_size - off), off)
                if not buf:
                    break
                if not (skip_zero and is_zero(buf)):
                    _pwrite_all(dst, buf, off)
                off += len(buf)
                report(off, total)
            if not skip_zero:
                zeroer = RangeZeroer(dst, keep_allocation=True, cancel=cancel)
                zeroer.zero(off, dst_size, report, off, total)
            os.fsync(dst)
            return off
        finally:
            os.close(dst)
    finally:
        os.close(src)


# -- running the work in a thread ---------------------------------------------------

def _takes_progress(fn: Callable[..., Any]) -> bool:
    try:
        return "progress" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


async def cancellable(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, cancel=Event, **kwargs)`` in a thread. Cancelling the awaiting task
    sets the event and waits for the thread to stop, so cleanup can follow."""
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    fut = loop.run_in_executor(None, functools.partial(fn, *args, cancel=cancel, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(BaseException):
            await fut
        raise


async def in_thread(fn: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Any:
    """``cancellable``, with OSError turned into a clear StorageError naming ``what``.
    A ``fn`` with a ``progress`` parameter that was not given one reports to the
    running job (``progress.reporter()``)."""
    if "progress" not in kwargs and _takes_progress(fn):
        kwargs["progress"] = progress_mod.reporter()
    try:
        return await cancellable(fn, *args, **kwargs)
    except FileNotFoundError as exc:
        raise NotFound(f"{what}: {exc.filename}: no such file or device") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"{what}: no space left") from None
        if exc.errno == errno.EBUSY:
            raise Busy(f"{what}: the device is in use (mounted or held)") from None
        raise Failed(f"{what}: {exc.strerror or exc}") from None
