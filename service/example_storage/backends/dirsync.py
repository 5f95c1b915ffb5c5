"""Group commit of new files: many new files of one directory, holding metadata only (no
written data), made durable by one round of fsync work, the way a database commits many
transactions with one log flush.

A volume create hands its open file over (``await sync_new_file(directory, fd)``) and
returns once a round that started after its file was published has ended; creates that
arrive while a round is under way join the next one.

A round on a filesystem that commits metadata in order (xfs, ext4 with a journal:
system/fsorder.py) is one fsync, of the file published last: it commits every earlier
change with it (the other files, their links in the directory). Elsewhere each file is
fsync'd, then the directory. (Each of those extra fsyncs is a device cache flush even
when the journal has nothing left to commit: a round of 12 took ~2.6 ms on ext4 here,
one fsync ~1 ms.)

The one fsync of an in-order round goes to the kernel through AIO, its end read on the
event loop (system/aiofsync.py): no thread to wake, nor a GIL to win from the busy loop
(that hand-off took ~0.5 ms a round with calls arriving, half as long as the fsync, and
each create waits for a round). Where the kernel will not take it, and for the rounds of
many fsyncs, a thread does the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref

from ..system.aiofsync import AioFsync, AioUnavailable, aio_fsync_for
from ..system.fsorder import metadata_in_order

log = logging.getLogger(__name__)


def fsync_dir(directory: str) -> None:
    """Make the directory's entries (a file linked or renamed into it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_round(directory: str, fds: list[int]) -> list[OSError | None]:
    """Make the new files ``fds`` (data-less, in the order they were published in
    ``directory``) and their directory entries durable and close them; the error of each
    (or None)."""
    if fds and metadata_in_order(fds[-1]):
        return _sync_last(fds)
    errors: list[OSError | None] = []
    for fd in fds:
        try:
            os.fsync(fd)
            errors.append(None)
        except OSError as exc:
            errors.append(exc)
        finally:
            os.close(fd)
    try:
        fsync_dir(directory)
    except OSError as exc:
        errors = [err or exc for err in errors]
    return errors


def _sync_last(fds: list[int]) -> list[OSError | None]:
    """One fsync, of the file published last (metadata committed in order)."""
    error: OSError | None = None
    try:
        os.fsync(fds[-1])
    except OSError as exc:
        error = exc
    finally:
        _close_all(fds)
    return [error] * len(fds)


async def _sync_last_aio(aio: AioFsync, fds: list[int]) -> list[OSError | None]:
    """_sync_last with the fsync through ``aio``; AioUnavailable (the fds still open)
    when the kernel would not start it."""
    error: OSError | None = None
    try:
        await aio.fsync(fds[-1])
    except AioUnavailable:
        raise
    except OSError as exc:
        error = exc
    except BaseException:
        _close_all(fds)
        raise
    _close_all(fds)
    return [error] * len(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class DirSyncer:
    """The rounds of one directory (on one event loop)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._queue: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def sync(self, fd: int) -> None:
        """fsync ``fd`` and then the directory, in a shared round; ``fd`` is this
        syncer's from now on (closed after its fsync, also if the caller is cancelled).
        Raises the OSError of either fsync."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append((fd, fut))
        if self._task is None:
            self._task = loop.create_task(self._rounds())
        await fut

    async def _round(self, fds: list[int]) -> list[OSError | None]:
        """sync_round, its one fsync (metadata in order) through AIO where the kernel
        takes it, no thread (system/aiofsync.py); closes the fds."""
        if metadata_in_order(fds[-1]):
            aio = aio_fsync_for(asyncio.get_running_loop())
            if aio is not None:
                try:
                    return await _sync_last_aio(aio, fds)
                except AioUnavailable:
                    pass                 # nothing was started: a thread does it
        return await asyncio.to_thread(sync_round, self.directory, fds)

    async def _rounds(self) -> None:
        batch: list[tuple[int, asyncio.Future[None]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                errors = await self._round([fd for fd, _ in batch])
                for (_, fut), err in zip(batch, errors, strict=True):
                    if fut.done():          # its caller was cancelled
                        continue
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err)
                batch = []
        finally:
            self._task = None
            # stopped early (the loop is closing): nobody waits for what is left
            for _, fut in batch:
                if not fut.done():
                    fut.cancel()
            for fd, fut in self._queue:
                os.close(fd)
                if not fut.done():
                    fut.cancel()
            self._queue = []


_SYNCERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, DirSyncer]] = (
    weakref.WeakKeyDictionary())


async def sync_new_file(directory: str, fd: int) -> None:
    """Make the file ``fd`` (just published in ``directory``) and its directory entry
    durable, sharing the work with other new files of the directory (see the module
    doc). Takes over ``fd``."""
    loop = asyncio.get_running_loop()
    syncers = _SYNCERS.setdefault(loop, {})
    syncer = syncers.get(directory)
    if syncer is None:
        syncer = syncers[directory] = DirSyncer(directory)
    await syncer.sync(fd)
