"""A pool's lock: exclusive for what changes the pool, shared for volume work that a
backend can run side by side.

``async with pool.lock`` (exclusive, as an ``asyncio.Lock``): build, start, stop,
refresh, define, resize, wipe ... anything that changes the pool or needs its volumes to
hold still. ``async with pool.lock.shared()``: creating and deleting files of a
directory pool, which need the pool to stay running but not each other out of the way
(core/pool.py keeps their names apart). Waiters are served in arrival order, so a
waiting exclusive holder is not starved by a stream of shared ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType


class PoolLock:
    def __init__(self) -> None:
        self._exclusive = False
        self._shared = 0
        self._waiters: collections.deque[tuple[bool, asyncio.Future[None]]] = (
            collections.deque())

    def locked(self) -> bool:
        """Held in either mode."""
        return self._exclusive or self._shared > 0

    @property
    def shared_holders(self) -> int:
        return self._shared

    # -- exclusive (the asyncio.Lock interface) ---------------------------------
    async def acquire(self) -> bool:
        if not self.locked() and not self._waiters:
            self._exclusive = True
            return True
        await self._wait(exclusive=True)
        return True

    def release(self) -> None:
        if not self._exclusive:
            raise RuntimeError("PoolLock.release: not held exclusively")
        self._exclusive = False
        self._wake()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # -- shared -----------------------------------------------------------------
    def shared(self) -> _Shared:
        """``async with lock.shared():`` hold it together with other shared holders."""
        return _Shared(self)

    async def acquire_shared(self) -> None:
        if not self._exclusive and not self._waiters:
            self._shared += 1
            return
        await self._wait(exclusive=False)

    def release_shared(self) -> None:
        if self._shared <= 0:
            raise RuntimeError("PoolLock.release_shared: not held shared")
        self._shared -= 1
        self._wake()

    # -- queue ------------------------------------------------------------------
    async def _wait(self, exclusive: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (exclusive, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # granted, but cancelled before it could run: hand it on
                if exclusive:
                    self.release()
                else:
                    self.release_shared()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def _wake(self) -> None:
        """Grant the lock to the waiters at the head of the queue that can have it now:
        one exclusive waiter, or every shared waiter up to the next exclusive one."""
        while self._waiters:
            exclusive, fut = self._waiters[0]
            if fut.done():          # cancelled while waiting
                self._waiters.popleft()
                continue
            if exclusive:
                if self.locked():
                    return
                self._waiters.popleft()
                self._exclusive = True
                fut.set_result(None)
                return
            if self._exclusive:
                return
            self._waiters.popleft()
            self._shared += 1
            fut.set_result(None)


class _Shared:
    def __init__(self, lock: PoolLock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire_shared()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release_shared()
