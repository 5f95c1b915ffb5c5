"""A volume's bytes to and from a caller's file descriptor (Volume.Upload/Download),
for file volumes and block-device volumes alike.

Holes are kept where both ends can hold them:

- Upload from a seekable regular file reads only its data extents (SEEK_DATA/SEEK_HOLE);
  the file's holes and all-zero chunks (also those read from a pipe) make the volume's
  range read as zeroes without writing them: a hole punched in a sparse file volume,
  FALLOC_FL_ZERO_RANGE in a preallocated one, BLKZEROOUT on a block device
  (block_io.RangeZeroer).
- Download into a seekable regular file writes only the data: the volume's holes and
  all-zero chunks are skipped by offset (punched where the file held bytes already), and
  the file is extended to its final length. Pipes, sockets, devices and O_APPEND files
  get every byte, in order.

The transfer starts at the descriptor's current file position and moves it on, as
read()/write() would. Pipes and sockets are never waited on for longer than a short poll:
cancelling works at any time, and a descriptor that moves no byte for ``STALL_TIMEOUT``
seconds ends the transfer with TimedOut. The caller owns the descriptor: nothing here
closes it. The volume's range is checked before anything is written: a transfer past
the volume's end is refused (InvalidArgument).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import threading
import time
from collections.abc import Callable

from ..errors import Cancelled, Failed, InvalidArgument, TimedOut
from .block_io import (
    CHUNK,
    RangeZeroer,
    data_extents,
    fd_size,
    fully_allocated,
    is_zero,
    pwrite_all,
)

STALL_TIMEOUT = 60.0       # seconds a pipe or socket may move no byte before TimedOut
_POLL_MS = 200
_BLOCKING_SLICE = 64 * 1024   # largest write to a pipe that may block (old kernels)
_ZEROES = memoryview(bytes(CHUNK))

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    return None


def check_range(offset: int, length: int, size: int) -> int:
    """The number of bytes [offset, offset+length) covers (length 0: to the end), or
    InvalidArgument when the range does not lie inside ``size`` bytes."""
    if offset < 0 or length < 0:
        raise InvalidArgument("offset and length must not be negative")
    if offset > size:
        raise InvalidArgument(f"offset {offset} is beyond the end of the volume ({size} bytes)")
    if length and offset + length > size:
        raise InvalidArgument(
            f"{length} bytes at offset {offset} do not fit into the volume ({size} bytes)"
        )
    return length or size - offset


def _access_mode(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise InvalidArgument(f"not a usable file descriptor: {exc.strerror}") from None


class _Stream:
    """Sequential reads or writes of a descriptor that may be a pipe or socket."""

    def __init__(self, fd: int, st: os.stat_result, cancel: threading.Event,
                 stall: float) -> None:
        self.fd = fd
        self.cancel = cancel
        self.stall = stall
        kind = stat.S_IFMT(st.st_mode)
        self.pollable = kind not in (stat.S_IFREG, stat.S_IFBLK)
        # RWF_NOWAIT never blocks a pipe or socket write (no-one else's flags change);
        # kernels without it for pipes say EOPNOTSUPP, and poll + small writes follow
        self.nowait = kind in (stat.S_IFIFO, stat.S_IFSOCK) and hasattr(os, "RWF_NOWAIT")
        self.moved = 0

    def _wait(self, events: int) -> None:
        if not self.pollable:
            return
        poller = select.poll()
        poller.register(self.fd, events | select.POLLERR | select.POLLHUP)
        deadline = time.monotonic() + self.stall
        while True:
            if self.cancel.is_set():
                raise Cancelled("transfer cancelled")
            if poller.poll(_POLL_MS):
                return
            if time.monotonic() >= deadline:
                raise TimedOut(f"the file descriptor moved no data for {self.stall:g} s "
                               f"(after {self.moved} bytes)")

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end."""
        while True:
            if self.cancel.is_set():
                raise Cancelled("transfer cancelled")
            self._wait(select.POLLIN)
            try:
                data = os.read(self.fd, n)
            except (BlockingIOError, InterruptedError):
                continue
            self.moved += len(data)
            return data

    def read_full(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            data = self.read(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.cancel.is_set():
                raise Cancelled("transfer cancelled")
            try:
                if self.nowait:
                    n = os.pwritev(self.fd, [view], -1, os.RWF_NOWAIT)
                else:
                    self._wait(select.POLLOUT)
                    n = os.write(self.fd, view[:_BLOCKING_SLICE] if self.pollable else view)
            except BlockingIOError:
                self._wait(select.POLLOUT)
                continue
            except InterruptedError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise Failed(f"the reader of the file descriptor went away after "
                             f"{self.moved} bytes") from None
            except OSError as exc:
                if self.nowait and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL,
                                                 errno.ENOSYS, errno.ESPIPE):
                    self.nowait = False
                    continue
                raise
            view = view[n:]
            self.moved += n


class _SparseWriter:
    """Writes chunks at offsets of a file or block device; all-zero chunks and holes
    become zeroed ranges (coalesced), made by ``zeroer`` only below ``clip`` (above
    it the target holds nothing yet)."""

    def __init__(self, fd: int, zeroer: RangeZeroer, clip: int | None = None) -> None:
        self.fd = fd
        self.zeroer = zeroer
        self.clip = clip
        self.pending: tuple[int, int] | None = None

    def data(self, off: int, buf: bytes) -> None:
        if is_zero(buf):
            self.hole(off, off + len(buf))
            return
        self.flush()
        pwrite_all(self.fd, buf, off)

    def hole(self, start: int, end: int) -> None:
        if end <= start:
            return
        if self.pending is not None and self.pending[1] == start:
            self.pending = (self.pending[0], end)
            return
        self.flush()
        self.pending = (start, end)

    def flush(self) -> None:
        if self.pending is None:
            return
        start, end = self.pending
        self.pending = None
        if self.clip is not None:
            end = min(end, self.clip)
        self.zeroer.zero(start, end)


# -- upload -----------------------------------------------------------------------

def upload(dst: int, src: int, offset: int, length: int, *, cancel: threading.Event,
           progress: Progress = _no_progress, stall: float = STALL_TIMEOUT) -> int:
    """Write ``length`` bytes (0: all there is) read from ``src`` into the open volume
    ``dst`` (a regular file or block device) at ``offset``; returns the bytes taken.

    A regular-file source is checked to fit before anything is written; a stream that
    turns out to hold more than fits has filled the volume to its end (InvalidArgument).
    A stream that ends before ``length`` bytes: Failed (what came was written).
    """
    dst_st = os.fstat(dst)
    capacity = fd_size(dst)
    limit = check_range(offset, length, capacity)
    if _access_mode(src) & os.O_ACCMODE == os.O_WRONLY:
        raise InvalidArgument("the file descriptor is not open for reading")
    src_st = os.fstat(src)
    keep = stat.S_ISBLK(dst_st.st_mode) or fully_allocated(dst_st)
    zeroer = RangeZeroer(dst, keep_allocation=keep, cancel=cancel, st=dst_st)
    writer = _SparseWriter(dst, zeroer)
    if stat.S_ISREG(src_st.st_mode):
        return _upload_file(writer, src, src_st, offset, length, limit, cancel, progress)
    stream = _Stream(src, src_st, cancel, stall)
    done = 0
    while done < limit:
        want = min(CHUNK, limit - done)
        buf = stream.read_full(want)
        if buf:
            writer.data(offset + done, buf)
            done += len(buf)
            progress(done, length)
        if len(buf) < want:
            break
    writer.flush()
    if length and done < length:
        raise Failed(f"the data ended after {done} of {length} bytes (those were written)")
    if not length and done == limit and stream.read(1):
        raise InvalidArgument(
            f"the data does not fit: the volume has {limit} bytes from offset {offset} to "
            "its end (those were written, the rest was not)"
        )
    return done


def _upload_file(writer: _SparseWriter, src: int, src_st: os.stat_result, offset: int,
                 length: int, limit: int, cancel: threading.Event, progress: Progress
                 ) -> int:
    pos = os.lseek(src, 0, os.SEEK_CUR)
    avail = max(0, src_st.st_size - pos)
    if length and avail < length:
        raise InvalidArgument(
            f"the file holds {avail} bytes after its current position, not {length}"
        )
    if not length and avail > limit:
        raise InvalidArgument(
            f"the file's {avail} bytes do not fit: the volume has {limit} bytes from "
            f"offset {offset} to its end"
        )
    n = length or avail
    end = pos + n
    delta = offset - pos
    _copy_extents(src, writer, pos, end, delta, cancel, lambda done: progress(done, n),
                  "the file shrank during the upload")
    os.lseek(src, end, os.SEEK_SET)
    progress(n, n)
    return n


def _copy_extents(src: int, writer: _SparseWriter, start: int, end: int, delta: int,
                  cancel: threading.Event, report: Callable[[int], None], ended: str) -> None:
    """Copy bytes ``start``..``end`` of ``src`` through ``writer`` at ``+delta``: its data
    extents as data, the rest as holes; ``report`` gets the bytes done so far."""
    cursor = start
    for first, stop in data_extents(src, start, end):
        writer.hole(cursor + delta, first + delta)
        off = first
        while off < stop:
            if cancel.is_set():
                raise Cancelled("transfer cancelled")
            buf = os.pread(src, min(CHUNK, stop - off), off)
            if not buf:
                raise Failed(f"{ended} (at byte {off})")
            writer.data(off + delta, buf)
            off += len(buf)
            report(off - start)
        cursor = stop
    writer.hole(cursor + delta, end + delta)
    writer.flush()


# -- download ---------------------------------------------------------------------

def download(src: int, dst: int, offset: int, length: int, *, cancel: threading.Event,
             progress: Progress = _no_progress, size: int | None = None,
             stall: float = STALL_TIMEOUT) -> int:
    """Write the bytes of the open volume ``src`` (a file or block device, ``size``
    bytes long; default its size) from ``offset`` (``length``, 0: to the end) into
    ``dst``; returns the bytes sent."""
    n = check_range(offset, length, fd_size(src) if size is None else size)
    flags = _access_mode(dst)
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise InvalidArgument("the file descriptor is not open for writing")
    st = os.fstat(dst)
    if stat.S_ISREG(st.st_mode) and not flags & os.O_APPEND:
        return _download_file(src, dst, st, offset, n, cancel, progress)
    stream = _Stream(dst, st, cancel, stall)
    cursor = offset
    for start, stop in [*data_extents(src, offset, offset + n), (offset + n, offset + n)]:
        while cursor < start:                      # a hole: zeroes, not read
            k = min(CHUNK, start - cursor)
            stream.write_all(_ZEROES[:k])
            cursor += k
            progress(cursor - offset, n)
        while cursor < stop:
            if cancel.is_set():
                raise Cancelled("transfer cancelled")
            buf = os.pread(src, min(CHUNK, stop - cursor), cursor)
            if not buf:
                raise Failed(f"the volume ended early (at byte {cursor})")
            stream.write_all(buf)
            cursor += len(buf)
            progress(cursor - offset, n)
    return n


def _download_file(src: int, dst: int, st: os.stat_result, offset: int, n: int,
                   cancel: threading.Event, progress: Progress) -> int:
    base = os.lseek(dst, 0, os.SEEK_CUR)
    delta = base - offset
    zeroer = RangeZeroer(dst, keep_allocation=False, cancel=cancel, st=st)
    writer = _SparseWriter(dst, zeroer, clip=st.st_size)   # only the file's old bytes
    _copy_extents(src, writer, offset, offset + n, delta, cancel,
                  lambda done: progress(done, n), "the volume ended early")
    final = base + n
    if os.fstat(dst).st_size < final:
        os.ftruncate(dst, final)
    os.lseek(dst, final, os.SEEK_SET)
    progress(n, n)
    return n


# -- by path ------------------------------------------------------------------------

def upload_to_path(path: str, src: int, offset: int, length: int, *,
                   cancel: threading.Event, progress: Progress = _no_progress,
                   exclusive: bool = False, verify: Callable[[int], None] | None = None,
                   stall: float = STALL_TIMEOUT) -> int:
    """``upload`` into the file or block device ``path`` (never through a symlink;
    ``exclusive``: O_EXCL, i.e. refused while the device is mounted or held), then fsync.
    ``verify(fd)`` may check what was opened before anything is written."""
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_EXCL if exclusive else 0)
    dst = os.open(path, flags)
    try:
        st = os.fstat(dst)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidArgument(f"{path} is neither a file nor a block device")
        if verify is not None:
            verify(dst)
        done = upload(dst, src, offset, length, cancel=cancel, progress=progress, stall=stall)
        os.fsync(dst)
        return done
    finally:
        os.close(dst)


def download_from_path(path: str, dst: int, offset: int, length: int, *,
                       cancel: threading.Event, progress: Progress = _no_progress,
                       verify: Callable[[int], None] | None = None,
                       stall: float = STALL_TIMEOUT) -> int:
    """``download`` from the file or block device ``path`` (never through a symlink)."""
    src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(src)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidArgument(f"{path} is neither a file nor a block device")
        if verify is not None:
            verify(src)
        return download(src, dst, offset, length, cancel=cancel, progress=progress,
                        stall=stall)
    finally:
        os.close(src)
