"""How long operations report progress, without knowing who listens.

Core runs a long operation (a Job) with a reporter bound in a context variable; a backend
asks for ``reporter()`` while it is still on the event loop and calls the returned
function with (bytes done, bytes total) from any thread. Without a job it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

ProgressCallback = Callable[[int, int], None]

# A worker thread wakes the event loop with a report at most this often (a copy reports
# every chunk; jobs announce at most every 0.25 s anyway). The last report (done >= total)
# always goes through.
FORWARD_INTERVAL = 0.05

_current: ContextVar[ProgressCallback | None] = ContextVar("storage_progress", default=None)


def _ignore(done: int, total: int) -> None:
    return None


def reporter() -> ProgressCallback:
    """A thread-safe callback reporting to the running job (or a no-op). Call it on the
    event loop; the callback it returns may be called from worker threads."""
    target = _current.get()
    if target is None:
        return _ignore
    return on_loop(target)


def on_loop(target: ProgressCallback) -> ProgressCallback:
    """A callback for any thread that runs ``target`` on the running event loop: at once
    when called there, else through the loop, at most every FORWARD_INTERVAL (and always
    for a report of done >= total)."""
    loop = asyncio.get_running_loop()
    last = -FORWARD_INTERVAL

    def report(done: int, total: int) -> None:
        nonlocal last
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            target(done, total)
            return
        now = time.monotonic()
        if done < total and now - last < FORWARD_INTERVAL:
            return
        last = now
        loop.call_soon_threadsafe(target, done, total)

    return report


@contextlib.contextmanager
def reporting_to(callback: ProgressCallback) -> Iterator[None]:
    """Within this block (and tasks it starts), ``reporter()`` reports to ``callback``
    (called on the event loop)."""
    token = _current.set(callback)
    try:
        yield
    finally:
        _current.reset(token)
