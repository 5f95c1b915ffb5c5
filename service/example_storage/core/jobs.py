"""Long operations as jobs: progress, rate, expected end, and cancel (UDisks' Job model).

A method that runs a long operation wraps the work in
``async with manager.jobs.run(operation, objects, started_by) as job:``. While the
block runs, the job is known to the listeners (the D-Bus adapter exports a Job object),
``progress.reporter()`` in the backends reports (bytes done, bytes total) to it, and
``JobRegistry.cancel`` cancels the task running the block; the block then ends with
``Cancelled`` (the backends stop their worker threads and remove half-made volumes on
cancellation). Progress reaches the listeners at most every ``UPDATE_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import progress
from ..errors import Cancelled, NotFound, NotSupported, StorageError

if TYPE_CHECKING:
    from .events import ListenerSet

log = logging.getLogger(__name__)

# The operations (Job.Operation); the names follow UDisks' style.
VOLUME_WIPE = "volume-wipe"
VOLUME_CLONE = "volume-clone"
VOLUME_DELETE = "volume-delete"
VOLUME_UPLOAD = "volume-upload"
VOLUME_DOWNLOAD = "volume-download"
POOL_BUILD = "pool-build"
POOL_REMOVE_DEVICE = "pool-remove-device"
OPERATIONS = (VOLUME_WIPE, VOLUME_CLONE, VOLUME_DELETE, VOLUME_UPLOAD, VOLUME_DOWNLOAD,
              POOL_BUILD, POOL_REMOVE_DEVICE)

UPDATE_INTERVAL = 0.25     # seconds between two progress announcements of one job
RATE_WINDOW = 5.0          # the rate is measured over about this many recent seconds
MIN_RATE_SPAN = 0.2        # ... once at least this much time has passed
CANCEL_WAIT = 30.0         # Cancel waits this long for the operation to stop


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(eq=False)
class Job:
    """One running operation, as listeners and clients see it."""

    id: int
    operation: str
    objects: tuple[str, ...]     # what it works on, as the starter named them (object paths)
    started_by: int              # uid of the caller that started it
    cancelable: bool = True
    start_time: int = field(default_factory=_now_us)   # µs since the epoch
    bytes_done: int = 0
    bytes_total: int = 0
    rate: int = 0                # bytes per second, 0 while unknown
    expected_end_time: int = 0   # µs since the epoch, 0 while unknown
    success: bool | None = None  # set when it has ended
    message: str = ""            # why it failed ("" on success)
    cancel_requested: bool = False
    task: asyncio.Task | None = field(default=None, repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _samples: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    _reported: tuple[int, int] = (0, 0)
    _announce: asyncio.TimerHandle | None = field(default=None, repr=False)
    _last_announced: float = 0.0

    @property
    def progress_valid(self) -> bool:
        return self.bytes_total > 0

    @property
    def progress(self) -> float:
        if self.bytes_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.bytes_done / self.bytes_total))

    @property
    def finished(self) -> bool:
        return self.success is not None

    def measure(self, now: float, wall_us: int) -> None:
        """Take the latest report into the figures (rate over the recent window)."""
        done, total = self._reported
        self.bytes_done, self.bytes_total = done, total
        samples = self._samples
        if samples and done < samples[-1][1]:
            samples.clear()          # the operation started a new pass
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        t0, d0 = samples[0]
        if now - t0 >= MIN_RATE_SPAN:
            self.rate = max(0, int((done - d0) / (now - t0)))
        if self.rate > 0 and total > done:
            self.expected_end_time = wall_us + int((total - done) * 1_000_000 / self.rate)
        elif total and done >= total:
            self.expected_end_time = wall_us
        else:
            self.expected_end_time = 0


class JobRegistry:
    """The running jobs; tells the listeners (``job_added``, ``job_changed``,
    ``job_removed``) about them."""

    def __init__(self, listeners: ListenerSet, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listeners = listeners
        self.jobs: dict[int, Job] = {}
        self._next_id = 1
        self._clock = clock

    def get(self, job_id: int) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id}") from None

    @contextlib.asynccontextmanager
    async def run(self, operation: str, objects: list[str] | tuple[str, ...], started_by: int,
                  *, cancelable: bool = True) -> AsyncIterator[Job]:
        """Run the block as a job of the current task (see the module's doc)."""
        job = Job(self._next_id, operation, tuple(objects), started_by, cancelable)
        self._next_id += 1
        job.task = asyncio.current_task()
        self.jobs[job.id] = job
        self.listeners.job_added(job)
        log.info("job %d: %s %s started by uid %d", job.id, operation,
                 " ".join(job.objects), started_by)
        try:
            with progress.reporting_to(lambda done, total: self._report(job, done, total)):
                yield job
        except asyncio.CancelledError:
            if not job.cancel_requested:      # the daemon is stopping, say
                self._finish(job, False, "interrupted")
                raise
            if job.task is not None:
                job.task.uncancel()           # this task goes on, to reply to the caller
            self._finish(job, False, "cancelled")
            raise Cancelled(f"{operation} was cancelled") from None
        except StorageError as e:
            self._finish(job, False, e.message)
            raise
        except BaseException as e:
            self._finish(job, False, f"{type(e).__name__}: {e}")
            raise
        else:
            self._finish(job, True, "")

    async def cancel(self, job: Job) -> None:
        """Cancel the job's operation and wait (a while) until it has stopped."""
        if job.finished:
            return
        if not job.cancelable:
            raise NotSupported(f"a {job.operation} job cannot be cancelled")
        if not job.cancel_requested:
            job.cancel_requested = True
            log.info("job %d: cancel requested", job.id)
            if job.task is not None:
                job.task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), CANCEL_WAIT)

    # -- progress ----------------------------------------------------------------
    def _report(self, job: Job, done: int, total: int) -> None:
        """A backend's (done, total), on the event loop: announce now or a bit later."""
        if job.finished:
            return
        job._reported = (max(0, int(done)), max(0, int(total)))
        if job._announce is not None:
            return
        wait = job._last_announced + UPDATE_INTERVAL - self._clock()
        if wait <= 0:
            self._announce_progress(job)
        else:
            job._announce = asyncio.get_running_loop().call_later(
                wait, self._announce_progress, job)

    def _announce_progress(self, job: Job) -> None:
        job._announce = None
        if job.finished:
            return
        job._last_announced = now = self._clock()
        job.measure(now, _now_us())
        self.listeners.job_changed(job)

    def _finish(self, job: Job, success: bool, message: str) -> None:
        if job._announce is not None:
            job._announce.cancel()
            job._announce = None
        if success and job._reported[1]:
            job._reported = (job._reported[1], job._reported[1])   # all done
        if job._reported != (job.bytes_done, job.bytes_total):
            job.measure(self._clock(), _now_us())
        job.success, job.message = success, message
        job.task = None
        self.jobs.pop(job.id, None)
        log.info("job %d: %s %s", job.id, job.operation,
                 "done" if success else f"failed: {message}")
        self.listeners.job_removed(job)
        job.done.set()
