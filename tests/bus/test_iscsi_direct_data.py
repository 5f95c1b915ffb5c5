"""An iscsi-direct LUN's bytes against a real tgtd on 127.0.0.1 (tests/harness/tgtd.py):
Wipe (zeroes, read back through iSCSI), Upload/Download through the caller's descriptor
(byte-exact, ranges, holes kept in a sparse download), progress, cancellation and the
I/O child's timeout, all with CHAP and the secret never on a command line.

The backend tests call IscsiDirectBackend directly (no daemon); the D-Bus tests use
Volume.Wipe and Volume.Upload/Download (h fd, t offset, t length, a{sv}).
"""

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from dbus_next import Message, MessageType
from example_storage.backends.iscsi_direct import IscsiDirectBackend
from example_storage.errors import AuthFailed, InvalidArgument, TimedOut
from example_storage.model.poolxml import parse_pool_xml
from example_storage.progress import reporting_to
from example_storage.system import iscsi_transfer
from example_storage.system.iscsi import Credentials

from tests.bus.helpers import POOL, VOLUME
from tests.harness.procs import ArgvSampler
from tests.harness.tgtd import Tgtd, tgt_missing

E = "org.example.Storage.Error."
IQN = "iqn.2026-11.org.example:data"
INITIATOR = "iqn.2026-11.org.example:client"
USER, SECRET = "carol", "Data-Secret-9876"        # tgtd wants 12..16 characters
MiB = 1 << 20
AUTH = "<auth type='chap' username='carol'><secret usage='tgt-data'/></auth>"


@pytest.fixture
def tgtd(tmp_path):
    reason = tgt_missing()
    if reason:
        pytest.skip(reason)
    target = Tgtd(tmp_path / "tgt").start()
    try:
        yield target
    finally:
        target.stop()


def add_lun(tgtd: Tgtd, lun: int, backing: Path, size: int, *, thin: bool = False,
            fill: bytes | None = None) -> Path:
    tgtd.add_lun(IQN, lun, backing, size, serial=f"DATA{lun:04d}")
    if thin:     # UNMAP allowed; unmapped blocks read as zeroes (LBPME + LBPRZ)
        tgtd.adm("--op", "update", "--mode", "logicalunit", "--tid", str(tgtd.tids[IQN]),
                 "--lun", str(lun), "--params", "thin_provisioning=1")
    if fill is not None:
        with open(backing, "r+b") as f:
            f.write(fill)
    return backing


def pool_xml(name: str, tgtd: Tgtd, auth: str = AUTH) -> str:
    return f"""<pool type='iscsi-direct'><name>{name}</name>
  <source><host name='127.0.0.1' port='{tgtd.port}'/><device path='{IQN}'/>
    <initiator><iqn name='{INITIATOR}'/></initiator>{auth}</source></pool>"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_io_child(raw: bytes) -> bool:
    """``raw`` (a /proc cmdline) is the daemon's iSCSI I/O child."""
    return b"example_storage.system.iscsi_io" in raw


def io_children(portal: str) -> list[int]:
    """PIDs of I/O child processes talking to ``portal``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"example_storage.system.iscsi_io" in raw and portal.encode() in raw:
                found.append(int(pid))
    return found


# -- backend level ------------------------------------------------------------------------
@pytest.fixture
def backend():
    b = IscsiDirectBackend()
    b.secret_lookup = lambda auth: SECRET.encode()
    return b


async def lun_volumes(backend, pool) -> dict:
    return {v.name: v for v in (await backend.refresh(pool)).volumes}


async def test_upload_download_roundtrip_ranges_and_holes(backend, tgtd, tmp_path):
    tgtd.add_target(IQN)
    tgtd.add_chap(IQN, USER, SECRET)
    size = 6 * MiB + 4096
    backing = add_lun(tgtd, 1, tmp_path / "lun1.img", size, thin=True)
    pool = parse_pool_xml(pool_xml("p", tgtd))
    vol = (await lun_volumes(backend, pool))["unit:0:0:1"]
    assert vol.capacity == size and vol.serial == "DATA0001"

    # upload a file with data, a 2 MiB hole and data, from the file's start
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(MiB + 1234))
        f.seek(3 * MiB + 1234)
        f.write(os.urandom(MiB))
    reports: list[tuple[int, int]] = []
    fd = os.open(src, os.O_RDONLY)
    try:
        with reporting_to(lambda d, t: reports.append((d, t))):
            n = await backend.upload_volume(pool, vol, fd, 0, 0)
    finally:
        os.close(fd)
    assert n == src.stat().st_size == 4 * MiB + 1234
    assert reports and reports[-1] == (n, n)
    assert backing.read_bytes()[:n] == src.read_bytes()

    # download the whole LUN into a new file: byte-exact, and the holes stay holes
    out = tmp_path / "out.img"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert await backend.download_volume(pool, vol, fd, 0, 0) == size
        assert os.lseek(fd, 0, os.SEEK_CUR) == size      # as if written in order
    finally:
        os.close(fd)
    assert out.stat().st_size == size and sha256(out) == sha256(backing)
    data_bytes = 2 * MiB + 1234
    assert out.stat().st_blocks * 512 <= data_bytes + 2 * 4096 + 64 * 1024, "not sparse"

    # ranges: an unaligned window both ways
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert await backend.download_volume(pool, vol, fd, 1001, 777_777) == 777_777
    finally:
        os.close(fd)
    assert out.read_bytes() == backing.read_bytes()[1001:1001 + 777_777]
    patch = tmp_path / "patch.bin"
    patch.write_bytes(b"\xa5" * 5000)
    before = backing.read_bytes()
    fd = os.open(patch, os.O_RDONLY)
    try:
        assert await backend.upload_volume(pool, vol, fd, 513, 5000) == 5000
    finally:
        os.close(fd)
    after = backing.read_bytes()
    assert after[513:5513] == b"\xa5" * 5000
    assert after[:513] == before[:513] and after[5513:] == before[5513:]

    # refused: past the end (nothing written), and an offset beyond the LUN
    fd = os.open(patch, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgument) as e:
            await backend.upload_volume(pool, vol, fd, size - 4096, 5000)
        assert f"({size} bytes)" in e.value.message
        with pytest.raises(InvalidArgument):           # length 0: the file's 5000 bytes
            await backend.upload_volume(pool, vol, fd, size - 4096, 0)
        with pytest.raises(InvalidArgument):
            await backend.download_volume(pool, vol, fd, size + 1, 0)
    finally:
        os.close(fd)
    assert backing.read_bytes() == after


async def test_pipes_both_ways_and_refused_overflow(backend, tgtd, tmp_path):
    tgtd.add_target(IQN)
    tgtd.add_chap(IQN, USER, SECRET)
    size = 2 * MiB
    payload = os.urandom(size)
    backing = add_lun(tgtd, 1, tmp_path / "lun1.img", size, fill=payload)
    pool = parse_pool_xml(pool_xml("p", tgtd))
    vol = (await lun_volumes(backend, pool))["unit:0:0:1"]

    # download into a pipe (not seekable: every byte written, zeroes included)
    r, w = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536),
                                                                b"")))
    reader.start()
    try:
        assert await backend.download_volume(pool, vol, w, 0, 0) == size
    finally:
        os.close(w)
        reader.join(10)
        os.close(r)
    assert b"".join(chunks) == payload

    # upload from a pipe that carries more than the LUN holds: refused past the end
    r, w = os.pipe()
    writer = threading.Thread(target=_feed, args=(w, size + 4096))
    writer.start()
    try:
        with pytest.raises(InvalidArgument) as e:
            await backend.upload_volume(pool, vol, r, 0, 0)
    finally:
        os.close(r)
        writer.join(10)
    assert "larger than" in e.value.message and "not written" in e.value.message
    assert backing.stat().st_size == size


def _feed(fd: int, n: int) -> None:
    try:
        while n > 0:
            n -= os.write(fd, b"\x11" * min(n, 65536))
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


async def test_wipe_zeroes_and_reports_progress(backend, tgtd, tmp_path):
    tgtd.add_target(IQN)
    tgtd.add_chap(IQN, USER, SECRET)
    thick = add_lun(tgtd, 1, tmp_path / "thick.img", 4 * MiB, fill=os.urandom(4 * MiB))
    thin = add_lun(tgtd, 2, tmp_path / "thin.img", 4 * MiB, thin=True,
                   fill=os.urandom(4 * MiB))
    pool = parse_pool_xml(pool_xml("p", tgtd))
    vols = await lun_volumes(backend, pool)
    for name, backing in (("unit:0:0:1", thick), ("unit:0:0:2", thin)):
        reports: list[tuple[int, int]] = []
        with reporting_to(lambda d, t, seen=reports: seen.append((d, t))):
            await backend.wipe_volume(pool, vols[name])
        assert reports[-1] == (4 * MiB, 4 * MiB)
        assert backing.read_bytes() == bytes(4 * MiB), name
    assert thin.stat().st_blocks == 0          # WRITE SAME with UNMAP punched it out

    # "random" writes every block
    await backend.wipe_volume(pool, vols["unit:0:0:1"], "random")
    assert thick.read_bytes().count(0) < MiB


async def test_cancel_and_idle_timeout_stop_the_child(backend, tgtd, tmp_path):
    tgtd.add_target(IQN)
    tgtd.add_chap(IQN, USER, SECRET)
    add_lun(tgtd, 1, tmp_path / "lun1.img", 8 * MiB, fill=os.urandom(MiB))
    pool = parse_pool_xml(pool_xml("p", tgtd))
    vol = (await lun_volumes(backend, pool))["unit:0:0:1"]

    # a download into a pipe nobody reads blocks the child; cancelling stops it at once
    r, w = os.pipe()
    try:
        task = asyncio.ensure_future(backend.download_volume(pool, vol, w, 0, 0))
        deadline = time.monotonic() + 10
        while not io_children(tgtd.portal) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert io_children(tgtd.portal), "the I/O child never started"
        await asyncio.sleep(0.5)
        assert not task.done()
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 2
        assert io_children(tgtd.portal) == []
    finally:
        os.close(w)
        os.close(r)

    # a child that stays silent past the idle timeout is killed: TimedOut
    r, w = os.pipe()
    where = iscsi_transfer.LunAddress(tgtd.portal, IQN, 1, Credentials(USER, SECRET.encode()),
                                      INITIATOR)
    try:
        with pytest.raises(TimedOut):
            await iscsi_transfer.run_io("read", where, fd=w, idle_timeout=1.0)
        assert io_children(tgtd.portal) == []
    finally:
        os.close(w)
        os.close(r)

    # a wrong secret: the dedicated error, nothing left running
    backend.secret_lookup = lambda auth: b"Wrong-Secret-000"
    with pytest.raises(AuthFailed):
        await backend.wipe_volume(pool, vol)
    assert io_children(tgtd.portal) == []


# -- over D-Bus ---------------------------------------------------------------------------------
async def start_chap_pool(svc, tgtd, name: str = "data") -> str:
    await svc.manager("SetSecret", "saya{sv}", "tgt-data", SECRET.encode(), {})
    pool = await svc.manager("DefinePool", "sa{sv}", pool_xml(name, tgtd), {})
    await svc.call(pool, POOL, "Start", "a{sv}", {"lun-poll-interval": svc.variant("d", 0)})
    return pool


async def volume_path(svc, pool: str, name: str) -> str:
    return await svc.call(pool, POOL, "LookupVolumeByName", "sa{sv}", name, {})


async def read_back(tgtd: Tgtd, lun: int, path: Path) -> bytes:
    """The LUN's bytes as iSCSI (not the backing file) gives them."""
    where = iscsi_transfer.LunAddress(tgtd.portal, IQN, lun, Credentials(USER, SECRET.encode()),
                                      INITIATOR)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        await iscsi_transfer.read_lun(where, fd)
    finally:
        os.close(fd)
    return path.read_bytes()


async def test_wipe_over_dbus_with_chap_reads_back_zeroes(svc, tgtd, tmp_path):
    tgtd.add_target(IQN)
    tgtd.add_chap(IQN, USER, SECRET)
    backing = add_lun(tgtd, 1, tmp_path / "lun1.img", 16 * MiB, fill=os.urandom(16 * MiB))
    pool = await start_chap_pool(svc, tgtd)
    vol = await volume_path(svc, pool, "unit:0:0:1")
    assert (await svc.props(vol, VOLUME))["Serial"] == "DATA0001"

    with ArgvSampler(SECRET.encode(), watched=is_io_child) as sampler:
        await svc.call(vol, VOLUME, "Wipe", "a{sv}", {})
    assert sampler.seen > 0, "the sampler never saw the I/O child"
    assert sampler.hits == [], "the CHAP secret showed up in a process's command line"
    assert await read_back(tgtd, 1, tmp_path / "back.img") == bytes(16 * MiB)
    assert backing.read_bytes() == bytes(16 * MiB)
    props = await svc.props(vol, VOLUME)
    assert props["Capacity"] == 16 * MiB and props["Serial"] == "DATA0001"
    assert SECRET not in svc.daemon.log()

    # a pool whose secret changed under it: the dedicated error, the LUN untouched
    backing.write_bytes(b"\x77" * (16 * MiB))
    await svc.manager("SetSecret", "saya{sv}", "tgt-data", b"Wrong-Secret-123", {})
    err = await svc.call_error(vol, VOLUME, "Wipe", "a{sv}", {})
    assert err.type == E + "ISCSI.AuthFailed" and "Traceback" not in err.text
    assert backing.read_bytes() == b"\x77" * (16 * MiB)
    await svc.manager("SetSecret", "saya{sv}", "tgt-data", SECRET.encode(), {})
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})


async def has_method(svc, path: str, member: str) -> bool:
    xml = await svc.introspect(path)
    return f'<method name="{member}">' in xml


async def call_with_fd(svc, path: str, member: str, fd: int, offset: int, length: int,
                       timeout: float = 60):
    msg = Message(destination="org.example.Storage", path=path, interface=VOLUME,
                  member=member, signature="htta{sv}", body=[0, offset, length, {}],
                  unix_fds=[fd])
    reply = await asyncio.wait_for(svc.client.call(msg), timeout)
    return reply


async def test_upload_download_over_dbus(svc, tgtd, tmp_path):
    tgtd.add_target(IQN)
    tgtd.add_chap(IQN, USER, SECRET)
    size = 8 * MiB
    backing = add_lun(tgtd, 1, tmp_path / "lun1.img", size, thin=True,
                      fill=os.urandom(size))
    pool = await start_chap_pool(svc, tgtd)
    vol = await volume_path(svc, pool, "unit:0:0:1")
    if not (await has_method(svc, vol, "Upload") and await has_method(svc, vol, "Download")):
        pytest.skip("Volume.Upload not in this build")

    await svc.call(vol, VOLUME, "Wipe", "a{sv}", {})          # thin: all holes again
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(MiB))
        f.seek(5 * MiB)
        f.write(os.urandom(MiB // 2))
    with ArgvSampler(SECRET.encode(), watched=is_io_child) as sampler:
        fd = os.open(src, os.O_RDONLY)
        try:
            reply = await call_with_fd(svc, vol, "Upload", fd, 0, 0)
        finally:
            os.close(fd)
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        out = tmp_path / "out.img"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            reply = await call_with_fd(svc, vol, "Download", fd, 0, 0)
        finally:
            os.close(fd)
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    assert sampler.seen > 0
    assert sampler.hits == [], "the CHAP secret showed up in a process's command line"

    expected = src.read_bytes() + bytes(size - src.stat().st_size)
    assert out.stat().st_size == size
    assert sha256(out) == hashlib.sha256(expected).hexdigest() == sha256(backing)
    assert out.stat().st_blocks * 512 < 2 * MiB, "the download did not stay sparse"

    # a window past the LUN's end: InvalidArgument, nothing written
    before = sha256(backing)
    fd = os.open(src, os.O_RDONLY)
    try:
        reply = await call_with_fd(svc, vol, "Upload", fd, size - 4096, 8192)
    finally:
        os.close(fd)
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == E + "InvalidArgument"
    assert sha256(backing) == before
    assert SECRET not in svc.daemon.log()
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
