"""core/jobs.py without D-Bus: what listeners see of a job, throttled progress, the
rate and expected end, and cancel turning into Cancelled."""

import asyncio
import time

import pytest
from example_storage import progress
from example_storage.core import jobs
from example_storage.core.events import ListenerSet
from example_storage.errors import Cancelled, Failed, NotSupported


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def job_added(self, job) -> None:
        self.events.append(("added", job.id, job.operation))

    def job_changed(self, job) -> None:
        self.events.append(("changed", job.id, job.bytes_done, job.bytes_total, job.rate,
                            job.expected_end_time))

    def job_removed(self, job) -> None:
        self.events.append(("removed", job.id, job.success, job.message))


def _registry() -> tuple[jobs.JobRegistry, Recorder]:
    listeners = ListenerSet()
    rec = Recorder()
    listeners.add(rec)
    return jobs.JobRegistry(listeners), rec


async def test_a_job_that_completes():
    registry, rec = _registry()
    async with registry.run(jobs.VOLUME_WIPE, ["/v", "/p"], 1000) as job:
        assert registry.jobs == {1: job}
        assert job.objects == ("/v", "/p") and job.started_by == 1000
        assert abs(job.start_time - time.time() * 1e6) < 5e6
        assert not job.progress_valid
    assert registry.jobs == {}
    assert rec.events[0] == ("added", 1, "volume-wipe")
    assert rec.events[-1] == ("removed", 1, True, "")
    assert job.done.is_set()


async def test_progress_is_throttled_and_measured():
    registry, rec = _registry()
    async with registry.run(jobs.VOLUME_CLONE, [], 0) as job:
        report = progress.reporter()
        total = 100 << 20
        for i in range(1, 11):
            report(i << 20, total)          # ten reports at once: one announcement now
        assert [e[0] for e in rec.events] == ["added", "changed"]
        assert job.bytes_done == 1 << 20 and job.progress_valid
        await asyncio.sleep(jobs.UPDATE_INTERVAL + 0.1)
        assert [e[0] for e in rec.events] == ["added", "changed", "changed"]
        assert job.bytes_done == 10 << 20 and job.progress == pytest.approx(0.1)
        assert job.rate > 0
        assert job.expected_end_time > time.time() * 1e6
        # from a worker thread
        await asyncio.to_thread(report, 50 << 20, total)
        await asyncio.sleep(jobs.UPDATE_INTERVAL + 0.1)
        assert job.bytes_done == 50 << 20
    # success: the final figures say "all done"
    assert rec.events[-1] == ("removed", 1, True, "")
    assert job.bytes_done == total and job.progress == 1.0


async def test_a_worker_thread_wakes_the_loop_at_most_every_forward_interval():
    """A copy reports every chunk from its thread; the loop is woken for few of them, and
    the last report (done == total) always arrives."""
    seen: list[tuple[int, int]] = []
    report = progress.on_loop(lambda done, total: seen.append((done, total)))
    total = 1000

    def chunks() -> None:
        for done in range(1, total + 1):
            report(done, total)

    t0 = time.monotonic()
    await asyncio.to_thread(chunks)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(0.05)       # let the forwarded reports run
    assert seen[0] == (1, total) and seen[-1] == (total, total)
    assert len(seen) <= 2 + elapsed / progress.FORWARD_INTERVAL
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # on the loop itself: every report, at once
    report(5, total)
    assert seen[-1] == (5, total)


async def test_no_reports_outside_a_job():
    report = progress.reporter()
    report(1, 2)    # a no-op, no error


async def test_cancel_ends_the_block_with_cancelled():
    registry, rec = _registry()
    started = asyncio.Event()
    cleaned = []

    async def work():
        try:
            async with registry.run(jobs.VOLUME_WIPE, ["/v"], 0):
                started.set()
                try:
                    await asyncio.sleep(60)
                finally:
                    cleaned.append(True)
        except Cancelled:
            # the task that ran the job goes on (to send the error reply)
            await asyncio.sleep(0.01)
            return asyncio.current_task().cancelling()
        return None

    task = asyncio.ensure_future(work())
    await started.wait()
    job = registry.get(1)
    await registry.cancel(job)
    assert job.finished and cleaned == [True]
    assert await task == 0
    assert rec.events[-1] == ("removed", 1, False, "cancelled")


async def test_a_failure_is_reported_with_its_message():
    registry, rec = _registry()
    with pytest.raises(Failed):
        async with registry.run(jobs.POOL_BUILD, ["/p"], 0):
            raise Failed("mkfs.ext4 failed: no")
    assert rec.events[-1] == ("removed", 1, False, "mkfs.ext4 failed: no")


async def test_a_job_that_cannot_be_cancelled():
    registry, rec = _registry()
    async with registry.run(jobs.POOL_REMOVE_DEVICE, ["/p"], 0, cancelable=False) as job:
        with pytest.raises(NotSupported):
            await registry.cancel(job)
    assert rec.events[-1] == ("removed", 1, True, "")


async def test_an_outside_cancel_is_not_turned_into_cancelled():
    """The daemon stopping cancels the task: that stays a CancelledError."""
    registry, rec = _registry()
    started = asyncio.Event()

    async def work():
        async with registry.run(jobs.VOLUME_WIPE, [], 0):
            started.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.events[-1] == ("removed", 1, False, "interrupted")


async def test_job_numbers_count_up():
    registry, _ = _registry()
    async with registry.run(jobs.VOLUME_WIPE, [], 0) as a, \
            registry.run(jobs.VOLUME_WIPE, [], 0) as b:
        assert (a.id, b.id) == (1, 2)
        assert sorted(registry.jobs) == [1, 2]
