"""File volumes are described without spawning qemu-img where the service can read them
itself (raw: the file's size and blocks; qcow/qcow2: the header); only other image
formats (vmdk, vdi ...) go through `qemu-img info`. A raw volume stays raw even when a
guest wrote an image header into it (the format recorded at create time)."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct

import pytest
from example_storage.backends import file_volumes as fv
from example_storage.model.definitions import VolumeDefinition
from example_storage.system import qemu_img

MiB = 1 << 20

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def info_calls(monkeypatch):
    """Every qemu_img.info call (path, format) the backend makes; the real one runs."""
    calls: list[tuple[str, str | None]] = []
    real = qemu_img.info

    async def recording(path, fmt=None, **kw):
        calls.append((path, fmt))
        return await real(path, fmt, **kw)

    monkeypatch.setattr(qemu_img, "info", recording)
    return calls


def _qcow2_header(size: int, backing: bytes = b"") -> bytes:
    """A minimal qcow2 v3 header (what a guest could write into a raw volume)."""
    head = bytearray(4096)
    struct.pack_into(">4sIQI", head, 0, b"QFI\xfb", 3, 512 if backing else 0, len(backing))
    struct.pack_into(">I", head, 20, 16)          # cluster bits
    struct.pack_into(">Q", head, 24, size)
    struct.pack_into(">I", head, 100, 104)        # header length
    if backing:
        head[512:512 + len(backing)] = backing
    return bytes(head)


async def test_raw_volumes_cost_no_qemu_img(tmp_path, info_calls):
    d = str(tmp_path)
    made = await fv.create_volume(d, VolumeDefinition("a.img", capacity=3 * MiB))
    await fv.create_volume(d, VolumeDefinition("b.img", capacity=MiB, allocation=MiB))
    # a file the service did not make (no recorded format): probed, still no qemu-img
    with open(tmp_path / "c.img", "wb") as f:
        f.truncate(5 * MiB)
    listed = {v.name: v for v in await fv.list_volumes(d)}
    one = await fv.volume_info(d, "a.img")
    assert info_calls == []
    assert made == one == listed["a.img"]
    assert one.format == "raw" and one.capacity == 3 * MiB == os.path.getsize(one.path)
    assert one.allocation == os.stat(one.path).st_blocks * 512
    assert listed["b.img"].allocation >= MiB
    assert listed["c.img"].format == "raw" and listed["c.img"].capacity == 5 * MiB
    assert list(listed) == ["a.img", "b.img", "c.img"]


async def test_raw_volume_with_a_guest_written_header_stays_raw(tmp_path, info_calls):
    d = str(tmp_path)
    vol = await fv.create_volume(d, VolumeDefinition("guest.img", capacity=4 * MiB))
    with open(vol.path, "r+b") as f:   # the guest writes a qcow2 header naming a host file
        f.write(_qcow2_header(1 << 40, b"/etc/shadow"))
    for seen in ([v for v in await fv.list_volumes(d)][0], await fv.volume_info(d, "guest.img")):
        assert seen.format == "raw"
        assert seen.capacity == 4 * MiB
        assert seen.backing_store is None
    assert info_calls == []


async def test_qcow2_header_read_without_qemu_img(tmp_path, info_calls):
    (tmp_path / "q.qcow2").write_bytes(_qcow2_header(7 * MiB))
    (vol,) = await fv.list_volumes(str(tmp_path))
    assert vol.format == "qcow2" and vol.capacity == 7 * MiB and vol.compat == "1.1"
    assert info_calls == []


@needs_qemu_img
async def test_other_image_formats_use_qemu_img_info(tmp_path, info_calls):
    d = str(tmp_path)
    await fv.create_volume(d, VolumeDefinition("r.img", capacity=MiB))
    await fv.create_volume(d, VolumeDefinition("x.vmdk", capacity=8 * MiB, format="vmdk"))
    await fv.create_volume(d, VolumeDefinition("y.vdi", capacity=8 * MiB, format="vdi"))
    info_calls.clear()
    listed = {v.name: v for v in await fv.list_volumes(d)}
    assert sorted(os.path.basename(p) for p, _ in info_calls) == ["x.vmdk", "y.vdi"]
    assert dict((os.path.basename(p), f) for p, f in info_calls) == {
        "x.vmdk": "vmdk", "y.vdi": "vdi"}
    assert listed["x.vmdk"].capacity == 8 * MiB and listed["y.vdi"].capacity == 8 * MiB
    info_calls.clear()
    assert (await fv.volume_info(d, "x.vmdk")).format == "vmdk"
    assert len(info_calls) == 1


async def test_listing_follows_symlinks_inside_the_pool_only(tmp_path, tmp_path_factory):
    d = tmp_path / "pool"
    d.mkdir()
    await fv.create_volume(str(d), VolumeDefinition("real.img", capacity=2 * MiB))
    os.symlink("real.img", d / "alias.img")
    outside = tmp_path_factory.mktemp("outside") / "secret.img"
    outside.write_bytes(b"x" * 4096)
    os.symlink(outside, d / "escape.img")
    os.mkfifo(d / "fifo")
    (d / "subdir").mkdir()
    listed = {v.name: v for v in await fv.list_volumes(str(d))}
    assert sorted(listed) == ["alias.img", "real.img"]
    assert listed["alias.img"].capacity == 2 * MiB
    assert listed["alias.img"].path == str(d / "alias.img")


async def test_created_raw_volume_is_complete_and_nothing_else_is_left(tmp_path):
    d = str(tmp_path)
    vol = await fv.create_volume(d, VolumeDefinition("v", capacity=MiB))
    assert os.listdir(d) == ["v"]
    assert os.getxattr(vol.path, fv.FORMAT_XATTR) == b"raw"
    assert os.stat(vol.path).st_mode & 0o7777 == fv.DEFAULT_VOLUME_MODE


async def test_cancelled_create_leaves_nothing(tmp_path, monkeypatch):
    """A create cancelled while its file work runs leaves no volume (not even one that
    was published just before the cancel arrived)."""
    d = str(tmp_path)
    real = fv._make_raw_volume
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    def slow(*args, **kw):
        result = real(*args, **kw)          # published and fsync'd
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
        return result

    monkeypatch.setattr(fv, "_make_raw_volume", slow)
    task = asyncio.ensure_future(fv.create_volume(d, VolumeDefinition("late", capacity=MiB)))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert os.listdir(d) == []


async def test_creates_on_the_loop_share_their_fsync_rounds(tmp_path, monkeypatch):
    """on_loop creates (a local dir pool) make their files right away and wait for a
    shared round of fsyncs (backends/dirsync.py): fewer rounds than creates, every file
    fsync'd and closed, and each create returns only after its round."""
    from example_storage.backends import dirsync

    rounds: list[int] = []
    real = dirsync.sync_round

    def counting(directory, fds):
        rounds.append(len(fds))
        return real(directory, fds)

    monkeypatch.setattr(dirsync, "sync_round", counting)
    d = str(tmp_path)
    vols = await asyncio.gather(*(
        fv.create_volume(d, VolumeDefinition(f"v{i:02d}", capacity=MiB), on_loop=True)
        for i in range(24)))
    assert sorted(os.listdir(d)) == [v.name for v in vols] == [f"v{i:02d}" for i in range(24)]
    assert sum(rounds) == 24 and len(rounds) < 24
    for v in vols:
        assert os.getxattr(v.path, fv.FORMAT_XATTR) == b"raw"
        assert v == await fv.volume_info(d, v.name)
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) < 100   # the fds were closed


async def test_failed_fsync_unpublishes_the_volume(tmp_path, monkeypatch):
    from example_storage.backends import dirsync

    def failing(directory, fds):
        for fd in fds:
            os.close(fd)
        return [OSError(5, "Input/output error")] * len(fds)

    monkeypatch.setattr(dirsync, "sync_round", failing)
    with pytest.raises(Exception, match="Input/output error"):
        await fv.create_volume(str(tmp_path), VolumeDefinition("v", capacity=MiB), on_loop=True)
    assert os.listdir(tmp_path) == []


def test_listing_name_check_matches_validate_name():
    """The listing's fast path for plain ASCII names accepts exactly what validate_name
    (plus UTF-8 and the temp prefix) accepts."""
    from example_storage.errors import InvalidArgument
    from example_storage.model.names import validate_name

    def reference(name: str) -> bool:
        if name.startswith(fv.TEMP_PREFIX):
            return False
        try:
            name.encode("utf-8")
            validate_name(name)
        except (UnicodeEncodeError, InvalidArgument):
            return False
        return True

    cases = [".", "..", "...", ".x", "-a", "a-", "a/b", "x" * 255, "x" * 256, "é", "\udcff",
             "a b", f"{fv.TEMP_PREFIX}1", "a.img", "@:,=+~"]
    cases += [chr(c) for c in range(128)] + [f"a{chr(c)}" for c in range(128)]
    cases += [f"{chr(c)}a" for c in range(128)]
    assert [c for c in cases if fv._listable_name(c) != reference(c)] == []
