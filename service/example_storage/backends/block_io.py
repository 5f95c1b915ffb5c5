"""Writing through block devices: zero one, or copy data into one (wipe and clone of
volumes that are device nodes, such as LVM logical volumes).

The work runs in a worker thread; cancelling the awaiting task stops it between chunks
and waits for it, so the caller can clean up afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from ..errors import Cancelled, Failed, InvalidArgument, NotFound

CHUNK = 1024 * 1024


def device_size(path: str) -> int:
    """Size in bytes of a block device or regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            return os.lseek(fd, 0, os.SEEK_END)
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        raise InvalidArgument(f"{path} is neither a block device nor a file")
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _zero_range(fd: int, start: int, end: int, cancel: threading.Event) -> None:
    zero = memoryview(bytes(CHUNK))
    off = start
    while off < end:
        if cancel.is_set():
            raise Cancelled("cancelled")
        n = min(CHUNK, end - off)
        _pwrite_all(fd, zero[:n], off)
        off += n


def _open_block_for_writing(path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"{path} is not a block device")
    return fd


def zero_device(path: str, start: int = 0, *, cancel: threading.Event) -> None:
    """Overwrite the block device ``path`` with zeroes from ``start`` to its end."""
    fd = _open_block_for_writing(path)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        _zero_range(fd, start, size, cancel)
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_into_device(src_path: str, dst_path: str, *, skip_zero: bool,
                     cancel: threading.Event) -> int:
    """Copy the bytes of ``src_path`` (file or device) to the start of the block device
    ``dst_path`` and zero the rest of it; returns the bytes copied.

    ``skip_zero``: leave all-zero chunks unwritten (a fresh thin volume reads zeroes
    where nothing was written; writing them would only allocate space).
    """
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
            off = 0
            while off < src_size:
                if cancel.is_set():
                    raise Cancelled("cancelled")
                buf = os.pread(src, min(CHUNK, src_size - off), off)
                if not buf:
                    break
                if not (skip_zero and buf.count(0) == len(buf)):
                    _pwrite_all(dst, buf, off)
                off += len(buf)
            if not skip_zero:
                _zero_range(dst, off, dst_size, cancel)
            os.fsync(dst)
            return off
        finally:
            os.close(dst)
    finally:
        os.close(src)


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
    """``cancellable``, with OSError turned into a clear StorageError naming ``what``."""
    try:
        return await cancellable(fn, *args, **kwargs)
    except FileNotFoundError as exc:
        raise NotFound(f"{what}: {exc.filename}: no such file or device") from None
    except OSError as exc:
        raise Failed(f"{what}: {exc.strerror or exc}") from None
