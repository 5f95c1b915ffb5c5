"""fsync without a thread: Linux native AIO (``IOCB_CMD_FSYNC``, Linux 4.18+), its
completion announced on an eventfd that the event loop watches.

Handing an fsync to a thread costs the event loop more than the fsync's CPU: the worker
has to wake and win the GIL from a busy loop before it can start (~0.3 ms measured here
while calls kept arriving), then wake the loop through its self-pipe and a second
callback. The kernel runs an AIO fsync on its own workqueue instead; the loop only
submits it (one syscall) and reads its result when the eventfd turns readable.

One ``AioFsync`` per event loop: one AIO context and one eventfd. Where the kernel or the
filesystem cannot (no AIO in the kernel, the system's aio-max-nr reached, a seccomp
filter, a filesystem without AIO fsync) ``aio_fsync_for`` answers None or ``fsync``
raises ``AioUnavailable``, and the caller uses a thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import struct
import weakref

log = logging.getLogger(__name__)

# io_setup, io_destroy, io_submit, io_getevents by architecture
_SYSCALLS = {
    "x86_64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),           # the generic table (asm-generic/unistd.h)
    "riscv64": (0, 1, 2, 4),
    "ppc64le": (227, 228, 230, 229),
    "s390x": (243, 244, 246, 245),
}
IOCB_CMD_FSYNC = 2
IOCB_FLAG_RESFD = 1
# struct iocb (little-endian field order): aio_data, aio_key, aio_rw_flags,
# aio_lio_opcode, aio_reqprio, aio_fildes, aio_buf, aio_nbytes, aio_offset,
# aio_reserved2, aio_flags, aio_resfd: 64 bytes
_IOCB = struct.Struct("<QIIHhIQQqQII")
# struct io_event: data, obj, res, res2: 32 bytes
_EVENT = struct.Struct("<QQqq")


class AioUnavailable(Exception):
    """The kernel would not take the fsync (the caller uses a thread instead)."""


class _Kernel:
    """The four AIO syscalls of this architecture, through the C library's syscall()."""

    def __init__(self, numbers: tuple[int, int, int, int]) -> None:
        self.setup, self.destroy, self.submit, self.getevents = numbers
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.call = libc.syscall          # our own handle: argtypes given per call
        self.call.restype = ctypes.c_long

    def errno_error(self, what: str) -> OSError:
        err = ctypes.get_errno()
        return OSError(err, f"{what}: {os.strerror(err)}")


@functools.cache
def _kernel() -> _Kernel | None:
    """This architecture's AIO syscalls, the C library loaded once (as system/libc.py
    loads its functions); None where there are none."""
    if platform.system() != "Linux" or struct.calcsize("P") != 8:
        return None
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    try:
        return _Kernel(numbers)
    except (OSError, AttributeError):
        return None


def _release(kernel: _Kernel, ctx: int, eventfd: int) -> None:
    """Free an AIO context and its eventfd (io_destroy waits for what is under way and
    for an RCU grace period: tens of ms; called when the loop goes or at exit)."""
    kernel.call(kernel.destroy, ctypes.c_ulong(ctx))
    os.close(eventfd)


class AioFsync:
    """One AIO context and its eventfd, watched by one event loop; several fsyncs may be
    under way at once (up to MAX_IN_FLIGHT; beyond that AioUnavailable).

    It lives as long as its loop: freeing a context takes tens of ms (io_destroy), too
    long for the loop to wait for after each round, so it is freed when the loop is
    collected or the process exits (weakref.finalize). It holds no reference to the loop
    (the loop holds it, through the eventfd's reader)."""

    MAX_IN_FLIGHT = 64

    def __init__(self, loop: asyncio.AbstractEventLoop, kernel: _Kernel) -> None:
        self._kernel = kernel
        ctx = ctypes.c_ulong(0)
        if kernel.call(kernel.setup, ctypes.c_long(self.MAX_IN_FLIGHT), ctypes.byref(ctx)):
            raise kernel.errno_error("io_setup")
        self._ctx = ctx
        try:
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            kernel.call(kernel.destroy, ctx)
            raise
        self._events = ctypes.create_string_buffer(_EVENT.size * self.MAX_IN_FLIGHT)
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        # weak: a future whose waiter is gone (its loop closed under it) must not keep
        # the loop alive through this object (the loop's finalizer frees the context)
        self._waiting: weakref.WeakValueDictionary[int, asyncio.Future[int]] = (
            weakref.WeakValueDictionary())
        self._next_tag = 1
        loop.add_reader(self._eventfd, self._completed)
        # not at exit: the kernel frees a dying process's contexts itself
        weakref.finalize(loop, _release, kernel, ctx.value, self._eventfd).atexit = False

    async def fsync(self, fd: int) -> None:
        """fsync ``fd``; OSError as fsync would raise it, AioUnavailable when the kernel
        refused to start it (then nothing was started). Cancelling the caller does not
        stop the fsync (the kernel holds its own reference to the file)."""
        if len(self._waiting) >= self.MAX_IN_FLIGHT:
            raise AioUnavailable("too many fsyncs under way")
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        iocb = ctypes.create_string_buffer(
            _IOCB.pack(tag, 0, 0, IOCB_CMD_FSYNC, 0, fd, 0, 0, 0, 0, IOCB_FLAG_RESFD,
                       self._eventfd), _IOCB.size)
        iocbs = (ctypes.c_void_p * 1)(ctypes.addressof(iocb))   # io_submit copies it
        kernel = self._kernel
        if kernel.call(kernel.submit, self._ctx, ctypes.c_long(1), iocbs) != 1:
            raise AioUnavailable(str(kernel.errno_error("io_submit")))
        fut = self._waiting[tag] = asyncio.get_running_loop().create_future()
        result = await asyncio.shield(fut)
        if result < 0:
            raise OSError(-result, os.strerror(-result))

    def _completed(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        kernel = self._kernel
        n = kernel.call(kernel.getevents, self._ctx, ctypes.c_long(0),
                        ctypes.c_long(self.MAX_IN_FLIGHT), self._events, self._no_wait)
        for i in range(max(n, 0)):
            tag, _, result, _ = _EVENT.unpack_from(self._events, i * _EVENT.size)
            fut = self._waiting.pop(tag, None)
            if fut is not None and not fut.done():
                fut.set_result(result)


_CONTEXTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AioFsync | None] = (
    weakref.WeakKeyDictionary())


def aio_fsync_for(loop: asyncio.AbstractEventLoop) -> AioFsync | None:
    """The AioFsync of ``loop`` (made on first use), or None where this kernel, its
    limits or this architecture allow none (asked once per loop)."""
    try:
        return _CONTEXTS[loop]
    except KeyError:
        pass
    aio: AioFsync | None = None
    kernel = _kernel()
    if kernel is not None:
        try:
            aio = AioFsync(loop, kernel)
        except OSError as exc:
            log.info("no AIO fsync (a thread does the fsyncs): %s", exc)
    _CONTEXTS[loop] = aio
    return aio
