"""fsync through Linux AIO on the event loop (system/aiofsync.py), on real files and
filesystems: it completes without a thread, a failing fsync raises its errno, a file the
kernel cannot fsync this way is refused before anything starts, and the context and its
eventfd go with their loop."""

import asyncio
import errno
import gc
import os
import subprocess
import threading

import pytest
from example_storage.backends import dirsync
from example_storage.backends import file_volumes as fv
from example_storage.model.definitions import VolumeDefinition
from example_storage.system import aiofsync

from tests.harness.loop import mounted_filesystem


def _aio() -> aiofsync.AioFsync:
    aio = aiofsync.aio_fsync_for(asyncio.get_running_loop())
    if aio is None:
        pytest.skip("this kernel gives no AIO context")
    return aio


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_fsync_completes_on_the_loop_without_a_thread(tmp_path):
    aio = _aio()
    threads = set(threading.enumerate())
    fds = [os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600) for i in range(8)]
    try:
        for fd in fds:
            os.write(fd, b"data")
        # several at once, each answered
        await asyncio.wait_for(asyncio.gather(*(aio.fsync(fd) for fd in fds)), 30)
    finally:
        for fd in fds:
            os.close(fd)
    assert set(threading.enumerate()) == threads
    assert aio is aiofsync.aio_fsync_for(asyncio.get_running_loop())   # one per loop


async def test_a_failing_fsync_raises_its_errno(tmp_path):
    """xfs shut down under an open file with unwritten data: its fsync fails with EIO."""
    aio = _aio()
    with mounted_filesystem(tmp_path, "xfs") as mnt:
        fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            subprocess.run(["xfs_io", "-x", "-c", "shutdown", str(mnt)], check=True,
                           capture_output=True, timeout=60)
            with pytest.raises(OSError) as exc:
                await asyncio.wait_for(aio.fsync(fd), 30)
            assert exc.type is OSError and exc.value.errno == errno.EIO
        finally:
            os.close(fd)


async def test_a_file_without_fsync_is_refused_before_anything_starts():
    aio = _aio()
    r, w = os.pipe()
    try:
        with pytest.raises(aiofsync.AioUnavailable, match="io_submit"):
            await aio.fsync(r)
    finally:
        os.close(r)
        os.close(w)


async def test_more_than_the_context_holds_is_refused(tmp_path, monkeypatch):
    aio = _aio()
    monkeypatch.setattr(aiofsync.AioFsync, "MAX_IN_FLIGHT", 2)
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        first = [asyncio.ensure_future(aio.fsync(fd)) for _ in range(2)]
        await asyncio.sleep(0)          # both submitted
        with pytest.raises(aiofsync.AioUnavailable, match="too many"):
            await aio.fsync(fd)
        await asyncio.wait_for(asyncio.gather(*first), 30)
        await aio.fsync(fd)             # room again
    finally:
        os.close(fd)


def test_the_context_and_its_eventfd_go_with_their_loop(tmp_path):
    before = _open_fds()

    async def use() -> bool:
        aio = aiofsync.aio_fsync_for(asyncio.get_running_loop())
        if aio is None:
            return False
        fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            await aio.fsync(fd)
        finally:
            os.close(fd)
        return True

    loop = asyncio.new_event_loop()
    try:
        if not loop.run_until_complete(use()):
            pytest.skip("this kernel gives no AIO context")
        assert len(_open_fds() - before) >= 1          # the eventfd (and the loop's own)
    finally:
        loop.close()
    del loop
    gc.collect()
    assert _open_fds() - before == set()


def test_a_loop_that_ends_mid_round_closes_the_round_files(tmp_path):
    """asyncio.run cancels the creates and the round waiting for its AIO fsync when its
    main coroutine returns: the new files are closed all the same, the cancelled creates
    leave no volume behind, and the loop's AIO context and eventfd go with it."""
    with mounted_filesystem(tmp_path, "ext4") as mnt:
        before = _open_fds()
        ran = _ends_mid_round(mnt)
        gc.collect()
        assert {os.readlink(f"/proc/self/fd/{fd}") for fd in _open_fds() - before} == set()
        if not ran:
            pytest.skip("this kernel gives no AIO context")
        assert os.listdir(mnt) == ["lost+found"]


def _ends_mid_round(mnt) -> bool:
    published: list[asyncio.Event] = []      # made on the loop, gone with it
    async def create(name: str) -> None:
        await fv.create_volume(str(mnt), VolumeDefinition(name, capacity=1 << 20),
                               on_loop=True)

    real = dirsync._sync_last_aio

    async def noting(aio, fds):
        published[0].set()
        return await real(aio, fds)

    async def main() -> bool:
        if aiofsync.aio_fsync_for(asyncio.get_running_loop()) is None:
            return False
        published.append(asyncio.Event())
        tasks = [asyncio.ensure_future(create(f"v{i}")) for i in range(4)]
        await asyncio.wait_for(published[0].wait(), 30)
        del tasks                 # left to asyncio.run, which cancels them
        return True

    mp = pytest.MonkeyPatch()
    mp.setattr(dirsync, "_sync_last_aio", noting)
    try:
        return asyncio.run(main())
    finally:
        mp.undo()
        published.clear()
