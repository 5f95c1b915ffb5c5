"""Volume.Upload / Volume.Download over Unix fd passing, against the real daemon: bytes
arrive intact, holes stay holes where both ends can hold them, a range past the end is
refused with nothing changed, and a stalled upload is cancellable through its Job."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import threading

import pytest
from dbus_next import Message, MessageType
from dbus_next.errors import DBusError

from tests.bus.helpers import POOL, VOLUME, raw_volume_xml
from tests.harness.client import connect

E = "org.example.Storage.Error."
JOB = "org.example.Storage.Job"
MiB = 1024 * 1024
CAPACITY = 64 * MiB


async def _transfer(client, vol: str, member: str, fd: int | None, offset: int, length: int,
                    timeout: float = 60) -> None:
    """Call Upload/Download passing ``fd`` (None: the call carries no fd at all)."""
    msg = Message(destination="org.example.Storage", path=vol, interface=VOLUME,
                  member=member, signature="htta{sv}", body=[0, offset, length, {}],
                  unix_fds=[] if fd is None else [fd])
    reply = await asyncio.wait_for(client.call(msg), timeout)
    if reply.message_type == MessageType.ERROR:
        raise DBusError(reply.error_name, reply.body[0] if reply.body else "", reply)


async def _transfer_error(client, vol, member, fd, offset, length) -> DBusError:
    try:
        await _transfer(client, vol, member, fd, offset, length)
    except DBusError as e:
        return e
    raise AssertionError(f"{member} succeeded but should have failed")


def _sha(path, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = os.fstat(f.fileno()).st_size if length is None else length
        while remaining:
            chunk = f.read(min(MiB, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def _daemon_holds(svc, directory) -> list[str]:
    """What under ``directory`` the daemon still has open (it must close passed fds)."""
    held = []
    fd_dir = f"/proc/{svc.daemon.pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(os.path.join(fd_dir, name))
            if (target.startswith(str(directory) + "/") and not target.endswith(".log")
                    or target.startswith("pipe:")):
                held.append(target)
    return held


def _allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def _sparse_file(path, size: int = CAPACITY) -> int:
    """A file of ``size`` bytes with three islands of data; returns the data bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for at, n in ((0, MiB), (size // 3, 2 * MiB), (size - MiB // 2, MiB // 2)):
            f.seek(at)
            f.write(os.urandom(n))
    return 3 * MiB + MiB // 2


async def _volume(svc, name: str | None = None, allocation: int | None = None,
                  pool_name: str = "p") -> tuple[str, str]:
    pool = f"/org/example/Storage/pools/{pool_name}"
    if not (svc.workdir / pool_name).is_dir():
        pool = await svc.running_dir_pool(pool_name)
    name = name or f"v{len(os.listdir(svc.workdir / pool_name))}.img"
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml(name, str(CAPACITY), allocation=allocation), {})
    return vol, str(svc.workdir / pool_name / name)


def _fill(path, data: bytes, at: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


async def _upload_file(svc, vol: str, src) -> None:
    fd = os.open(src, os.O_RDONLY)
    try:
        await _transfer(svc.client, vol, "Upload", fd, 0, 0)
        assert os.lseek(fd, 0, os.SEEK_CUR) == CAPACITY   # read like read() would
    finally:
        os.close(fd)


async def test_upload_sparse_file_keeps_holes(svc):
    vol, path = await _volume(svc)
    _fill(path, os.urandom(8 * MiB), at=30 * MiB)     # old data where the source has a hole
    src = svc.workdir / "src.img"
    data = _sparse_file(src)
    await _upload_file(svc, vol, src)
    assert _sha(path) == _sha(src)
    assert os.path.getsize(path) == CAPACITY
    assert _allocated(path) <= data + MiB             # the source's holes are holes
    props = await svc.props(vol, VOLUME)
    assert props["Allocation"] == _allocated(path)     # the figures follow
    assert _daemon_holds(svc, svc.workdir) == []


async def test_upload_into_preallocated_volume_keeps_it_allocated(svc):
    vol, path = await _volume(svc, "thick.img", allocation=CAPACITY)
    _fill(path, os.urandom(CAPACITY))
    src = svc.workdir / "src.img"
    _sparse_file(src)
    await _upload_file(svc, vol, src)
    assert _sha(path) == _sha(src)
    assert _allocated(path) >= CAPACITY               # zeroes, not holes (ZERO_RANGE)


async def test_upload_part_from_pipe_at_offset(svc):
    vol, path = await _volume(svc)
    payload = os.urandom(3 * MiB) + bytes(2 * MiB) + b"tail"
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, payload), os.close(w)))
    writer.start()
    try:
        await _transfer(svc.client, vol, "Upload", r, 10 * MiB, len(payload))
    finally:
        writer.join()
        os.close(r)
    with open(path, "rb") as f:
        assert f.read(10 * MiB).count(0) == 10 * MiB
        assert f.read(len(payload)) == payload
    assert _allocated(path) <= 4 * MiB + 64 * 1024    # the zero run was not written


async def test_download_into_file_keeps_holes(svc):
    vol, path = await _volume(svc)
    data = _sparse_file(path)
    out = svc.workdir / "out.img"
    out.write_bytes(b"\xff" * (CAPACITY + MiB))        # what was there must not survive
    fd = os.open(out, os.O_WRONLY)
    try:
        await _transfer(svc.client, vol, "Download", fd, 0, 0)
        assert os.lseek(fd, 0, os.SEEK_CUR) == CAPACITY
    finally:
        os.close(fd)
    assert _sha(out, CAPACITY) == _sha(path)
    with open(out, "rb") as f:                          # bytes past the range untouched
        f.seek(CAPACITY)
        assert f.read() == b"\xff" * MiB
    fresh = svc.workdir / "fresh.img"
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        await _transfer(svc.client, vol, "Download", fd, 0, 0)
    finally:
        os.close(fd)
    assert os.path.getsize(fresh) == CAPACITY
    assert _sha(fresh) == _sha(path)
    assert _allocated(fresh) <= data + MiB


async def test_download_range_into_pipe_sends_every_byte(svc):
    vol, path = await _volume(svc)
    _sparse_file(path)
    r, w = os.pipe()
    got: list[bytes] = []

    def reader() -> None:
        while chunk := os.read(r, MiB):
            got.append(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        await _transfer(svc.client, vol, "Download", w, MiB // 2, 30 * MiB)
        assert _daemon_holds(svc, svc.workdir) == []   # else the reader would never end
    finally:
        os.close(w)
        thread.join()
        os.close(r)
    with open(path, "rb") as f:
        f.seek(MiB // 2)
        assert b"".join(got) == f.read(30 * MiB)


async def test_out_of_range_is_refused_and_changes_nothing(svc):
    vol, path = await _volume(svc)
    _sparse_file(path)
    before = _sha(path)
    src = svc.workdir / "src.img"
    src.write_bytes(os.urandom(2 * MiB))
    fd = os.open(src, os.O_RDONLY)
    try:
        for offset, length in ((CAPACITY - MiB, 2 * MiB), (CAPACITY + 1, 0),
                               (CAPACITY - MiB, 0)):   # the last: 2 MiB file, 1 MiB room
            err = await _transfer_error(svc.client, vol, "Upload", fd, offset, length)
            assert err.type == E + "InvalidArgument", (offset, length, err.text)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)
    assert _sha(path) == before
    out = svc.workdir / "out.img"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        err = await _transfer_error(svc.client, vol, "Download", fd, CAPACITY - 10, 11)
        assert err.type == E + "InvalidArgument"
    finally:
        os.close(fd)
    assert out.stat().st_size == 0
    # no fd with the call; an fd open the wrong way round
    err = await _transfer_error(svc.client, vol, "Upload", None, 0, 0)
    assert err.type == E + "InvalidArgument" and "file descriptor" in err.text
    fd = os.open(out, os.O_RDONLY)
    try:
        err = await _transfer_error(svc.client, vol, "Download", fd, 0, 0)
        assert err.type == E + "InvalidArgument" and "writing" in err.text
    finally:
        os.close(fd)
    assert _sha(path) == before
    assert _daemon_holds(svc, svc.workdir) == []       # refused calls' fds closed too


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
async def test_qcow2_upload_refused_download_sends_the_file(svc):
    pool = await svc.running_dir_pool("q")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         "<volume><name>q.qcow2</name><capacity unit='MiB'>8</capacity>"
                         "<target><format type='qcow2'/></target></volume>", {})
    path = svc.workdir / "q" / "q.qcow2"
    before = _sha(path)
    src = svc.workdir / "src.img"
    src.write_bytes(os.urandom(MiB))
    fd = os.open(src, os.O_RDONLY)
    try:
        err = await _transfer_error(svc.client, vol, "Upload", fd, 0, 0)
        assert err.type == E + "NotSupported" and "raw" in err.text
    finally:
        os.close(fd)
    assert _sha(path) == before
    out = svc.workdir / "copy.qcow2"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        await _transfer(svc.client, vol, "Download", fd, 0, 0)
    finally:
        os.close(fd)
    assert _sha(out) == before                          # the image file as it is


async def test_stalled_upload_is_cancelled_through_its_job(svc):
    vol, path = await _volume(svc)
    rec = await svc.recorder()
    r, w = os.pipe()
    os.write(w, os.urandom(32 * 1024))                  # some data, then nothing more
    call = asyncio.ensure_future(_transfer(svc.client, vol, "Upload", r, 0, 8 * MiB))
    other = await connect(svc.bus.address)
    try:
        added = await rec.wait_for(lambda s: s.member == "InterfacesAdded" and JOB in s.body[1])
        job = added.body[0]
        assert added.body[1][JOB]["Operation"] == "volume-upload"
        assert vol in added.body[1][JOB]["Objects"]
        await asyncio.sleep(0.3)
        reply = await other.call(Message(destination="org.example.Storage", path=job,
                                         interface=JOB, member="Cancel", signature="a{sv}",
                                         body=[{}]))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        with pytest.raises(DBusError) as err:
            await asyncio.wait_for(call, 30)
        assert err.value.type == E + "Cancelled"
    finally:
        other.disconnect()
        os.close(w)
        os.close(r)
        if not call.done():
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
    assert os.path.getsize(path) == CAPACITY           # the volume is still there
    assert (await svc.props(vol, VOLUME))["Capacity"] == CAPACITY


# -- a block-device volume: a partition of a disk pool --------------------------------

DISK_TOOLS = ("parted", "sfdisk", "partx", "wipefs", "blkid", "mkfs.ext4")


@pytest.mark.skipif(not all(shutil.which(t) for t in DISK_TOOLS),
                    reason=f"needs {', '.join(DISK_TOOLS)}")
async def test_partition_upload_download_and_busy_while_mounted(svc, tmp_path):
    from tests.bus.test_disk_pool import disk_pool_xml, partition_xml
    from tests.harness.loop import LoopDevice, mounts_of

    try:
        dev = LoopDevice(tmp_path / "disk.img", 64 * MiB)
    except Exception as e:  # noqa: BLE001 - no free loop device here
        pytest.skip(f"no loop device: {e}")
    try:
        pool = await svc.manager("DefinePool", "sa{sv}", disk_pool_xml("dp", dev.path), {})
        await svc.call(pool, POOL, "Build", "a{sv}", {})
        await svc.call(pool, POOL, "Start", "a{sv}", {})
        vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                             partition_xml(f"{dev.name}p1", 16), {})
        node = f"/dev/{dev.name}p1"
        _fill(node, os.urandom(16 * MiB))
        src = svc.workdir / "src.img"
        _sparse_file(src, 16 * MiB)
        fd = os.open(src, os.O_RDONLY)
        try:
            await _transfer(svc.client, vol, "Upload", fd, 0, 0)
        finally:
            os.close(fd)
        assert _sha(node, 16 * MiB) == _sha(src)
        out = svc.workdir / "out.img"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            await _transfer(svc.client, vol, "Download", fd, 0, 0)
        finally:
            os.close(fd)
        assert _sha(out) == _sha(src) and _allocated(out) <= 5 * MiB
        # a mounted partition is never written
        subprocess.run(["mkfs.ext4", "-q", "-F", node], check=True, capture_output=True,
                       timeout=60)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", node, str(mnt)], check=True, capture_output=True, timeout=60)
        fd = os.open(src, os.O_RDONLY)
        try:
            err = await _transfer_error(svc.client, vol, "Upload", fd, 0, 0)
            assert err.type == E + "Busy", err.text
        finally:
            os.close(fd)
        assert os.listdir(mnt) == ["lost+found"]
    finally:
        for point in mounts_of(dev.devnums()):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        subprocess.run(["partx", "-d", dev.path], check=False, capture_output=True)
        dev.detach()


@pytest.mark.parametrize("svc", ["dbus-fast"], indirect=True)
async def test_fd_passing_with_dbus_fast(svc):
    """The daemon on dbus-fast (adapter/bus.py) receives and closes the fds alike."""
    pytest.importorskip("dbus_fast")
    assert "with dbus-fast" in svc.daemon.log()
    await test_upload_sparse_file_keeps_holes(svc)
    await test_download_range_into_pipe_sends_every_byte(svc)
    await test_out_of_range_is_refused_and_changes_nothing(svc)


async def test_fds_sent_with_other_calls_are_closed(svc):
    """A caller attaching fds to a call that takes none (or to a signal), or to an Upload
    that never runs (no such volume, another signature), cannot make the daemon keep them
    open: they are closed as they arrive."""
    pool = await svc.running_dir_pool(POOL)
    r, w = os.pipe()
    try:
        before = _daemon_holds(svc, "/nonexistent")
        for _ in range(20):
            reply = await svc.client.call(Message(
                destination="org.example.Storage", path="/org/example/Storage",
                interface="org.example.Storage.Manager", member="ListPools",
                signature="a{sv}", body=[{}], unix_fds=[r, w]))
            assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        missing = f"{pool}/volumes/nothere"
        for path, signature, body in [
                (missing, "htta{sv}", [0, 0, 0, {}]),
                ("/org/example/Storage/nothing", "htta{sv}", [0, 0, 0, {}]),
                (missing, "hta{sv}", [0, 0, {}])]:
            for _ in range(10):
                reply = await svc.client.call(Message(
                    destination="org.example.Storage", path=path,
                    interface="org.example.Storage.Volume", member="Upload",
                    signature=signature, body=body, unix_fds=[r]))
                assert reply.message_type == MessageType.ERROR, reply.body
        await svc.manager("ListPools", "a{sv}", {})
        assert _daemon_holds(svc, "/nonexistent") == before
    finally:
        os.close(r)
        os.close(w)
