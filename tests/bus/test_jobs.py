"""Jobs over the bus: long operations get an org.example.Storage.Job object that a second
client sees (properties, rising progress), can cancel (the operation fails with
Error.Cancelled, Completed(false) is emitted, nothing half-made is left), and that ends
with Completed(true, '') when the work is done. Only the job's starter or an admin
(polkit org.example.storage.job.cancel-other) may cancel it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time

import pytest
from dbus_next.errors import DBusError

from tests.bus.conftest import Service
from tests.bus.helpers import (
    MANAGER,
    MANAGER_PATH,
    POOL,
    VOLUME,
    dir_pool_xml,
    fs_pool_xml,
    raw_volume_xml,
)
from tests.harness.busctl import busctl, busctl_argv
from tests.harness.client import (
    SignalRecorder,
    call,
    connect,
    get_all,
    managed_objects,
)
from tests.harness.loop import LoopDevice

E = "org.example.Storage.Error."
JOB = "org.example.Storage.Job"
BUS_NAME = "org.example.Storage"
CANCEL_OTHER = "org.example.storage.job.cancel-other"
VOLUME_DELETE = "org.example.storage.volume.delete"
GiB = 1 << 30
MiB = 1 << 20
RANDOM = {"algorithm": Service.variant("s", "random")}


def _job_added(s, exclude: tuple[str, ...] = ()) -> bool:
    return (s.member == "InterfacesAdded" and JOB in s.body[1]
            and s.body[0] not in exclude)


def _job_changed(s, job: str) -> bool:
    return s.member == "PropertiesChanged" and s.path == job and s.body[0] == JOB


def _job_removed(s, job: str) -> bool:
    return s.member == "InterfacesRemoved" and s.body[0] == job


def _completed(s, job: str) -> bool:
    return s.path == job and s.interface == JOB and s.member == "Completed"


def _no_unexpected_errors(svc) -> None:
    """Nothing but StorageErrors reached the choke point, no task failed unseen. (dbus-next
    0.2.3 logs "Exception in callback" for every error reply it sends: not checked.)"""
    log = svc.daemon.log()
    assert "unexpected error" not in log and "never retrieved" not in log, log[-3000:]


async def _error_of(fut) -> DBusError:
    try:
        await fut
    except DBusError as e:
        return e
    raise AssertionError("the call succeeded but should have failed")


@contextlib.asynccontextmanager
async def _second_client(svc):
    """Another connection to the bus, recording the service's signals."""
    other = await connect(svc.bus.address)
    rec = await SignalRecorder(other).start()
    try:
        yield other, rec
    finally:
        await rec.stop()
        other.disconnect()


async def test_wipe_job_is_seen_and_cancelled_from_a_second_client(svc):
    pool = await svc.running_dir_pool("p")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("big.img", "1", "GiB"), {})
    file = svc.workdir / "p" / "big.img"
    async with _second_client(svc) as (other, rec):
        wipe = asyncio.ensure_future(svc.call(vol, VOLUME, "Wipe", "a{sv}", RANDOM))
        added = await rec.wait_for(_job_added, timeout=30)
        started = time.monotonic()
        job, props = added.body[0], added.body[1][JOB]
        assert job.startswith("/org/example/Storage/jobs/")
        assert added.path == MANAGER_PATH
        assert props["Operation"] == "volume-wipe"
        assert props["Objects"] == [vol, pool]
        assert props["StartedBy"] == 0 and props["Cancelable"] is True
        assert abs(props["StartTime"] / 1e6 - time.time()) < 60
        assert (await get_all(other, MANAGER_PATH, MANAGER))["Jobs"] == [job]

        # progress rises, as the second client sees it
        first = await rec.wait_for(
            lambda s: _job_changed(s, job) and s.body[1].get("BytesDone", 0) > 0, timeout=60)
        await rec.wait_for(
            lambda s: _job_changed(s, job)
            and s.body[1].get("Progress", 0) > first.body[1]["Progress"], timeout=60)
        now = await get_all(other, job, JOB)
        assert now["ProgressValid"] is True and now["BytesTotal"] == GiB
        assert 0 < now["BytesDone"] < GiB and 0 < now["Progress"] < 1
        assert now["Rate"] > 0
        assert now["ExpectedEndTime"] > (time.time() - 5) * 1e6

        seconds = time.monotonic() - started
        await call(other, job, JOB, "Cancel", "a{sv}", [{}])
        err = await _error_of(wipe)
        assert err.type == E + "Cancelled", err.text
        # progress is announced a few times a second, not for every chunk written
        updates = rec.matching(lambda s: _job_changed(s, job))
        assert len(updates) <= seconds * 5 + 2, (len(updates), seconds)
        completed = await rec.wait_for(lambda s: _completed(s, job))
        assert completed.body == [False, "cancelled"]
        removed = await rec.wait_for(lambda s: _job_removed(s, job))
        assert rec.signals.index(completed) < rec.signals.index(removed)

        objects = await managed_objects(other)
        assert job not in objects and vol in objects
        assert (await get_all(other, MANAGER_PATH, MANAGER))["Jobs"] == []
        # the volume stays, partly overwritten; its figures were re-read
        st = file.stat()
        assert st.st_size == GiB
        assert MiB <= st.st_blocks * 512 < GiB
        assert objects[vol][VOLUME]["Allocation"] == st.st_blocks * 512
    _no_unexpected_errors(svc)


async def test_cancelled_clone_leaves_no_volume(svc):
    pool = await svc.running_dir_pool("c")
    target = svc.workdir / "c"
    block = os.urandom(MiB)
    with open(target / "src.img", "wb") as f:      # 1 GiB of data, no holes
        for _ in range(1024):
            f.write(block)
    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    source = await svc.call(pool, POOL, "LookupVolumeByName", "sa{sv}", "src.img", {})
    async with _second_client(svc) as (other, rec):
        clone = asyncio.ensure_future(svc.call(
            pool, POOL, "CreateVolumeFrom", "soa{sv}", raw_volume_xml("copy.img", "1", "GiB"),
            source, {}))
        added = await rec.wait_for(_job_added, timeout=30)
        job, props = added.body[0], added.body[1][JOB]
        assert props["Operation"] == "volume-clone"
        assert props["Objects"] == [pool, source]
        try:
            await call(other, job, JOB, "Cancel", "a{sv}", [{}])
        except DBusError as e:
            if clone.done() and clone.exception() is None:
                pytest.fail(f"the 1 GiB clone finished before Cancel reached it ({e.text})")
            raise
        err = await _error_of(clone)
        assert err.type == E + "Cancelled", err.text
        completed = await rec.wait_for(lambda s: _completed(s, job))
        assert completed.body == [False, "cancelled"]
        await rec.wait_for(lambda s: _job_removed(s, job))
        # no half-made volume: not in the pool, not on disk (no temporary file either)
        assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == [source]
        assert sorted(os.listdir(target)) == ["src.img"]
        assert not rec.matching(lambda s: s.member == "InterfacesAdded" and JOB not in s.body[1])
        await svc.call(pool, POOL, "Refresh", "a{sv}", {})
        assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == [source]
    _no_unexpected_errors(svc)


async def test_jobs_that_complete(svc):
    rec = await svc.recorder()
    # Build of a pool
    pool = await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("d", svc.workdir / "d"), {})
    await svc.call(pool, POOL, "Build", "a{sv}", {})
    added = await rec.wait_for(_job_added)
    build_job, props = added.body[0], added.body[1][JOB]
    assert props["Operation"] == "pool-build" and props["Objects"] == [pool]
    assert props["ProgressValid"] is False
    assert (await rec.wait_for(lambda s: _completed(s, build_job))).body == [True, ""]
    await rec.wait_for(lambda s: _job_removed(s, build_job))

    # a plain (zero) Wipe of a volume holding data
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("v.img", "8", "MiB"), {})
    file = svc.workdir / "d" / "v.img"
    with open(file, "r+b") as f:
        f.write(os.urandom(4 * MiB))
    start = len(rec.signals)
    await svc.call(vol, VOLUME, "Wipe", "a{sv}", {})
    added = await rec.wait_for(_job_added, start=start)
    wipe_job = added.body[0]
    assert wipe_job != build_job
    assert added.body[1][JOB]["Operation"] == "volume-wipe"
    assert (await rec.wait_for(lambda s: _completed(s, wipe_job))).body == [True, ""]
    await rec.wait_for(lambda s: _job_removed(s, wipe_job))
    assert file.read_bytes() == bytes(8 * MiB)
    # Manager.Jobs followed it: [job] while it ran, [] after
    jobs_seen = [s.body[1]["Jobs"] for s in rec.signals[start:]
                 if s.member == "PropertiesChanged" and s.path == MANAGER_PATH
                 and "Jobs" in s.body[1]]
    assert jobs_seen == [[wipe_job], []]

    # Delete with "zeroed" runs as a job too; a plain Delete does not
    start = len(rec.signals)
    await svc.call(vol, VOLUME, "Delete", "a{sv}", {"zeroed": svc.variant("b", True)})
    added = await rec.wait_for(_job_added, start=start)
    assert added.body[1][JOB]["Operation"] == "volume-delete"
    assert (await rec.wait_for(lambda s: _completed(s, added.body[0]))).body == [True, ""]
    assert not file.exists()
    other = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                           raw_volume_xml("w.img", "1", "MiB"), {})
    start = len(rec.signals)
    await svc.call(other, VOLUME, "Delete", "a{sv}", {})
    await rec.wait_for(lambda s: s.member == "InterfacesRemoved" and s.body[0] == other,
                       start=start)
    assert not [s for s in rec.signals[start:] if _job_added(s)]


async def test_wipe_algorithms_are_checked(svc):
    pool = await svc.running_dir_pool("a")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("v.img", "1", "MiB"), {})
    file = svc.workdir / "a" / "v.img"
    file.write_bytes(b"\x07" * MiB)
    rec = await svc.recorder()
    err = await svc.call_error(vol, VOLUME, "Wipe", "a{sv}",
                               {"algorithm": svc.variant("s", "bogus")})
    assert err.type == E + "InvalidArgument" and "bogus" in err.text
    err = await svc.call_error(vol, VOLUME, "Wipe", "a{sv}",
                               {"algorithm": svc.variant("s", "gutmann")})
    assert err.type == E + "NotSupported" and "random" in err.text
    err = await svc.call_error(vol, VOLUME, "Wipe", "a{sv}", {"algorithm": svc.variant("b", True)})
    assert err.type == E + "InvalidArgument"
    assert file.read_bytes() == b"\x07" * MiB
    assert not rec.matching(_job_added)

    # "random" really writes: not zeroes, not what was there
    await svc.call(vol, VOLUME, "Wipe", "a{sv}", RANDOM)
    data = file.read_bytes()
    assert len(data) == MiB and data.count(0) < MiB // 100 and data.count(7) < MiB // 100

    if shutil.which("qemu-img") is None:
        return
    qcow = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                          "<volume><name>q.qcow2</name><capacity>1048576</capacity>"
                          "<target><format type='qcow2'/></target></volume>", {})
    before = (svc.workdir / "a" / "q.qcow2").read_bytes()
    err = await svc.call_error(qcow, VOLUME, "Wipe", "a{sv}", RANDOM)
    assert err.type == E + "NotSupported" and "raw" in err.text
    assert (svc.workdir / "a" / "q.qcow2").read_bytes() == before


async def test_fs_pool_build_is_a_job(svc, tmp_path):
    try:
        loop = LoopDevice(tmp_path / "disk.img", 300 * MiB)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no loop device: {e}")
    try:
        rec = await svc.recorder()
        pool = await svc.manager("DefinePool", "sa{sv}",
                                 fs_pool_xml("fsj", loop.path, svc.workdir / "mnt"), {})
        await svc.call(pool, POOL, "Build", "a{sv}", {})
        added = await rec.wait_for(_job_added)
        assert added.body[1][JOB]["Operation"] == "pool-build"
        assert added.body[1][JOB]["Objects"] == [pool]
        assert (await rec.wait_for(lambda s: _completed(s, added.body[0]))).body == [True, ""]
        # a failing build is a job that completes with false and the error's message
        await svc.call(pool, POOL, "Start", "a{sv}", {})
        start = len(rec.signals)
        err = await svc.call_error(pool, POOL, "Build", "a{sv}", {})
        assert err.type == E + "InvalidState"
        added = await rec.wait_for(_job_added, start=start)
        completed = await rec.wait_for(lambda s: _completed(s, added.body[0]))
        assert completed.body[0] is False and completed.body[1] == err.text
        await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    finally:
        loop.detach()


# -- who may cancel: real polkitd, a real unprivileged user --------------------------
async def test_only_the_starter_or_an_admin_may_cancel(real_lane):
    svc, polkitd, user = real_lane
    pool = await svc.running_dir_pool("u")
    root_vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                              raw_volume_xml("root.img", "1", "GiB"), {})
    user_vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                              raw_volume_xml("user.img", "1", "GiB"), {})
    rec = await svc.recorder()

    # root's job: the user may not cancel it
    wipe = asyncio.ensure_future(svc.call(root_vol, VOLUME, "Wipe", "a{sv}", RANDOM))
    root_job = (await rec.wait_for(_job_added, timeout=30)).body[0]
    res = busctl(svc.bus.address, "call", BUS_NAME, root_job, JOB, "Cancel", "a{sv}", "0",
                 user=user.name, check=False)
    assert res.returncode != 0
    assert "not authorized" in res.stderr.lower() and CANCEL_OTHER in res.stderr, res.stderr
    assert root_job in await svc.managed_objects()          # still running
    assert not wipe.done()
    await svc.call(root_job, JOB, "Cancel", "a{sv}", {})      # root (an admin) may
    assert (await _error_of(wipe)).type == E + "Cancelled"

    # the user, allowed to wipe, starts a wipe and cancels it without any cancel action
    polkitd.grant(user.name, [VOLUME_DELETE])
    start = len(rec.signals)
    proc = subprocess.Popen(
        busctl_argv(svc.bus.address, "--timeout=300", "call", BUS_NAME, user_vol, VOLUME,
                    "Wipe", "a{sv}", "1", "algorithm", "s", "random", user=user.name),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        added = await rec.wait_for(lambda s: _job_added(s, (root_job,)), timeout=30,
                                   start=start)
        user_job, props = added.body[0], added.body[1][JOB]
        assert props["StartedBy"] == user.uid and props["Objects"] == [user_vol, pool]
        res = busctl(svc.bus.address, "call", BUS_NAME, user_job, JOB, "Cancel", "a{sv}", "0",
                     user=user.name, check=False)
        assert res.returncode == 0, res.stderr
        _out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode != 0 and "cancelled" in err, err
        completed = await rec.wait_for(lambda s: _completed(s, user_job))
        assert completed.body == [False, "cancelled"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- a block volume: a partition of a disk pool on a loop device ------------------------
DISK_TOOLS = ("parted", "sfdisk", "partx", "wipefs", "blkid")


@pytest.fixture
def disk_loop(tmp_path):
    if not all(shutil.which(t) for t in DISK_TOOLS):
        pytest.skip(f"needs {', '.join(DISK_TOOLS)}")
    try:
        dev = LoopDevice(tmp_path / "disk.img", 64 * MiB)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no loop device: {e}")
    try:
        yield dev
    finally:
        # drop the partitions parted gave it, so the next user of this loopN finds none
        if dev.path and dev.attached_here() and any(
                n.startswith(dev.name + "p") for n in os.listdir(f"/sys/block/{dev.name}")):
            subprocess.run(["partx", "-d", dev.path], capture_output=True, timeout=60,
                           check=False)
        dev.detach()


async def test_random_wipe_of_a_partition(svc, disk_loop):
    xml = (f"<pool type='disk'><name>dk</name><source><device path='{disk_loop.path}'/>"
           "<format type='gpt'/></source><target><path>/dev</path></target></pool>")
    pool = await svc.manager("DefinePool", "sa{sv}", xml, {})
    await svc.call(pool, POOL, "Build", "a{sv}", {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         f"<volume><name>{disk_loop.name}p1</name>"
                         "<capacity unit='MiB'>32</capacity>"
                         "<target><format type='none'/></target></volume>", {})
    node = (await svc.props(vol, VOLUME))["Path"]
    rec = await svc.recorder()
    await svc.call(vol, VOLUME, "Wipe", "a{sv}", RANDOM)
    job = (await rec.wait_for(_job_added)).body[0]
    assert (await rec.wait_for(lambda s: _completed(s, job))).body == [True, ""]
    totals = [s.body[1]["BytesTotal"] for s in rec.matching(lambda s: _job_changed(s, job))
              if "BytesTotal" in s.body[1]]
    assert totals and set(totals) == {32 * MiB}
    with open(node, "rb") as f:
        data = f.read()
    assert len(data) == 32 * MiB and data.count(0) < len(data) // 100
    await svc.call(vol, VOLUME, "Wipe", "a{sv}", {})
    with open(node, "rb") as f:
        assert f.read() == bytes(32 * MiB)
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})


async def test_stopping_the_daemon_during_a_job(svc):
    """SIGTERM while a wipe runs: the worker stops, the daemon exits cleanly."""
    pool = await svc.running_dir_pool("s")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("big.img", "1", "GiB"), {})
    rec = await svc.recorder()
    wipe = asyncio.ensure_future(svc.call(vol, VOLUME, "Wipe", "a{sv}", RANDOM))
    job = (await rec.wait_for(_job_added, timeout=30)).body[0]
    await rec.wait_for(lambda s: _job_changed(s, job) and s.body[1].get("BytesDone", 0) > 0,
                       timeout=60)
    t0 = time.monotonic()
    await asyncio.to_thread(svc.daemon.stop)
    assert svc.daemon.returncode == 0, svc.daemon.log_tail()
    assert time.monotonic() - t0 < 8
    with contextlib.suppress(DBusError, TimeoutError):
        await asyncio.wait_for(wipe, 5)
    assert "interrupted" in svc.daemon.log()
    _no_unexpected_errors(svc)
