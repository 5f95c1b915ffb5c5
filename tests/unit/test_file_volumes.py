"""File volumes (dir/fs/netfs pools) on a temporary directory."""

import asyncio
import errno
import os
import shutil
import subprocess

import pytest
from example_storage.backends import block_io, registry, unnamed
from example_storage.backends import file_volumes as fv
from example_storage.backends.dir import DirBackend
from example_storage.errors import (
    AlreadyExists,
    Busy,
    CommandFailed,
    InvalidArgument,
    InvalidState,
    NoSpace,
    NotFound,
)
from example_storage.model.definitions import (
    POOL_TYPES,
    BackingStore,
    Permissions,
    PoolDefinition,
    PoolTarget,
    VolumeDefinition,
)
from example_storage.system import qemu_img
from example_storage.system.runner import run_command

from tests.harness.loop import mounted_filesystem

MiB = 1024 * 1024
GiB = 1024 * MiB

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _vol(name, capacity=16 * MiB, **kw):
    return VolumeDefinition(name=name, capacity=capacity, **kw)


def _entries(path):
    return sorted(os.listdir(path))


# -- create ----------------------------------------------------------------------

async def test_create_sparse_raw(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("a.img", 1 * GiB))
    path = tmp_path / "a.img"
    assert vol.path == vol.key == str(path)
    assert vol.type == "file" and vol.format == "raw"
    assert vol.capacity == 1 * GiB == path.stat().st_size
    assert vol.allocation < 64 * 1024
    assert vol.permissions.mode == 0o600
    assert vol.permissions.owner == os.geteuid()
    assert _entries(tmp_path) == ["a.img"]


async def test_create_raw_with_allocation_and_mode(tmp_path):
    vol = await fv.create_volume(
        str(tmp_path),
        _vol("b.img", 64 * MiB, allocation=8 * MiB, permissions=Permissions(mode=0o640)),
    )
    assert vol.capacity == 64 * MiB
    assert 8 * MiB <= vol.allocation < 9 * MiB
    assert vol.permissions.mode == 0o640
    assert (tmp_path / "b.img").stat().st_mode & 0o7777 == 0o640


async def test_allocation_clamped_to_capacity(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("c.img", 1 * MiB, allocation=4 * MiB))
    assert vol.capacity == 1 * MiB
    assert vol.allocation <= 1 * MiB + 64 * 1024


@needs_qemu_img
async def test_create_qcow2_with_backing(tmp_path):
    base = await fv.create_volume(str(tmp_path), _vol("base.raw", 10 * MiB))
    over = await fv.create_volume(
        str(tmp_path),
        _vol("over.qcow2", 20 * MiB, format="qcow2", compat="1.1",
             backing_store=BackingStore(path=base.path, format="raw")),
    )
    assert over.format == "qcow2"
    assert over.capacity == 20 * MiB
    assert over.compat == "1.1"
    assert over.backing_store is not None
    assert over.backing_store.path == base.path
    assert over.backing_store.format == "raw"
    info = await qemu_img.info(over.path, "qcow2")
    assert info.virtual_size == 20 * MiB and info.backing_filename == base.path
    # The listing reads the same from the header, without qemu-img.
    listed = {v.name: v for v in await fv.list_volumes(str(tmp_path))}
    assert listed["over.qcow2"].capacity == 20 * MiB
    assert listed["over.qcow2"].backing_store.path == base.path
    assert listed["base.raw"].format == "raw"


@needs_qemu_img
async def test_create_qcow2_backing_format_probed(tmp_path):
    await fv.create_volume(str(tmp_path), _vol("base.qcow2", 8 * MiB, format="qcow2"))
    over = await fv.create_volume(
        str(tmp_path),
        _vol("top.qcow2", 8 * MiB, format="qcow2",
             backing_store=BackingStore(path=str(tmp_path / "base.qcow2"))),
    )
    assert over.backing_store.format == "qcow2"


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["vmdk", "vdi", "qed", "vpc", "vhdx"])
async def test_create_other_qemu_formats(tmp_path, fmt):
    vol = await fv.create_volume(str(tmp_path), _vol(f"x.{fmt}", 8 * MiB, format=fmt))
    assert vol.format == fmt
    assert vol.capacity >= 8 * MiB


async def test_create_refusals(tmp_path):
    d = str(tmp_path)
    await fv.create_volume(d, _vol("a"))
    with pytest.raises(AlreadyExists):
        await fv.create_volume(d, _vol("a"))
    # a file the pool does not know yet: refused, left as it was, nothing else made
    (tmp_path / "keep").write_bytes(b"data")
    for on_loop in (False, True):
        with pytest.raises(AlreadyExists, match="'keep' already exists in"):
            await fv.create_volume(d, _vol("keep"), on_loop=on_loop)
    assert (tmp_path / "keep").read_bytes() == b"data"
    assert _entries(tmp_path) == ["a", "keep"]
    (tmp_path / "keep").unlink()
    with pytest.raises(InvalidArgument):
        await fv.create_volume(d, _vol("z", None))
    with pytest.raises(InvalidArgument):
        await fv.create_volume(d, _vol("z", 0))
    with pytest.raises(InvalidArgument, match="2\\^63"):
        await fv.create_volume(d, _vol("z", 2**63))
    with pytest.raises(InvalidArgument, match="unsupported volume format"):
        await fv.create_volume(d, _vol("z", format="bogus"))
    for bad in ("", ".", "..", "x/y", "-x", fv.TEMP_PREFIX + "x"):
        with pytest.raises(InvalidArgument):
            await fv.create_volume(d, _vol(bad))
    assert _entries(tmp_path) == ["a"]


async def test_capacity_beyond_the_filesystem(tmp_path):
    # ext4/xfs cap a file far below 2^63-1: ftruncate fails with EFBIG.
    with pytest.raises((InvalidArgument, NoSpace), match="largest file"):
        await fv.create_volume(str(tmp_path), _vol("huge", 2**63 - 1))
    assert _entries(tmp_path) == []


async def test_nospace_for_allocation(tmp_path):
    free = fv.free_bytes(str(tmp_path))
    too_much = free + 1 * GiB
    with pytest.raises(NoSpace):
        await fv.create_volume(str(tmp_path), _vol("big", too_much, allocation=too_much))
    assert _entries(tmp_path) == []


@needs_qemu_img
async def test_failed_create_leaves_nothing(tmp_path):
    with pytest.raises(CommandFailed):
        await fv.create_volume(
            str(tmp_path),
            _vol("o.qcow2", format="qcow2",
                 backing_store=BackingStore(path=str(tmp_path / "missing"), format="raw")),
        )
    assert _entries(tmp_path) == []


async def test_concurrent_creates_one_wins(tmp_path):
    results = await asyncio.gather(
        *(fv.create_volume(str(tmp_path), _vol("same", 1 * MiB)) for _ in range(8)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, VolumeDefinition) for r in results) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, VolumeDefinition))
    assert _entries(tmp_path) == ["same"]


# -- list ------------------------------------------------------------------------

async def test_list_skips_non_files_and_outside_symlinks(tmp_path, tmp_path_factory):
    pool = tmp_path / "pool"
    pool.mkdir()
    outside = tmp_path_factory.mktemp("outside") / "secret"
    outside.write_bytes(b"x" * 100)
    (pool / "vol").write_bytes(b"y" * 4096)
    (pool / "subdir").mkdir()
    (pool / "escape").symlink_to(outside)
    (pool / "inner").symlink_to(pool / "vol")
    (pool / (fv.TEMP_PREFIX + "abc")).write_bytes(b"")
    os.mkfifo(pool / "fifo")
    vols = await fv.list_volumes(str(pool))
    assert [v.name for v in vols] == ["inner", "vol"]
    assert vols[1].capacity == 4096 and vols[1].path == str(pool / "vol")


# -- resize ----------------------------------------------------------------------

async def test_resize_raw(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("r", 16 * MiB))
    grown = await fv.resize_volume(vol.path, 32 * MiB, shrink=False)
    assert grown.capacity == 32 * MiB == os.path.getsize(vol.path)
    with pytest.raises(InvalidArgument, match="shrink"):
        await fv.resize_volume(vol.path, 8 * MiB, shrink=False)
    assert os.path.getsize(vol.path) == 32 * MiB
    shrunk = await fv.resize_volume(vol.path, 8 * MiB, shrink=True)
    assert shrunk.capacity == 8 * MiB == os.path.getsize(vol.path)
    with pytest.raises(NotFound):
        await fv.resize_volume(str(tmp_path / "nope"), 8 * MiB, shrink=True)


async def test_resize_allocate_checks_space(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("r", 1 * MiB))
    huge = fv.free_bytes(str(tmp_path)) + 1 * GiB
    with pytest.raises(NoSpace):
        await fv.resize_volume(vol.path, huge, shrink=False, allocate=True)
    grown = await fv.resize_volume(vol.path, 4 * MiB, shrink=False, allocate=True)
    assert grown.allocation >= 3 * MiB   # the added part is allocated


@needs_qemu_img
async def test_resize_qcow2(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("q", 16 * MiB, format="qcow2"))
    assert (await fv.resize_volume(vol.path, 64 * MiB, shrink=False)).capacity == 64 * MiB
    with pytest.raises(InvalidArgument, match="shrink"):
        await fv.resize_volume(vol.path, 32 * MiB, shrink=False)
    assert (await fv.resize_volume(vol.path, 32 * MiB, shrink=True)).capacity == 32 * MiB


# -- wipe ------------------------------------------------------------------------

async def test_wipe_raw_zeroes_and_keeps_size(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("w", 8 * MiB))
    with open(vol.path, "r+b") as f:
        f.seek(3 * MiB + 5)
        f.write(b"secret" * 1000)
        f.seek(8 * MiB - 10)
        f.write(b"tail")
    await fv.wipe_volume(vol.path)
    with open(vol.path, "rb") as f:
        data = f.read()
    assert len(data) == 8 * MiB
    assert data.count(0) == len(data)


@needs_qemu_img
async def test_wipe_qcow2_recreates_empty_image(tmp_path):
    base = await fv.create_volume(str(tmp_path), _vol("base", 4 * MiB))
    vol = await fv.create_volume(
        str(tmp_path),
        _vol("q", 8 * MiB, format="qcow2", permissions=Permissions(mode=0o640),
             backing_store=BackingStore(path=base.path, format="raw")),
    )
    await run_command(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M", vol.path])
    before = (await fv.volume_info(str(tmp_path), "q")).allocation
    await fv.wipe_volume(vol.path)
    after = await fv.volume_info(str(tmp_path), "q")
    assert after.capacity == 8 * MiB and after.format == "qcow2"
    assert after.backing_store.path == base.path
    assert after.permissions.mode == 0o640
    assert after.allocation < before
    assert _entries(tmp_path) == ["base", "q"]


# -- clone -----------------------------------------------------------------------

async def _sparse_source(directory):
    src = await fv.create_volume(str(directory), _vol("src", 1 * GiB))
    with open(src.path, "r+b") as f:
        f.seek(100 * MiB)
        f.write(os.urandom(MiB))
        f.seek(700 * MiB)
        f.write(os.urandom(MiB))
    return await fv.volume_info(str(directory), "src")


def _segments(path):
    """Data extents of a file, read with lseek(SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, found = os.fstat(fd).st_size, 0, []
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            found.append((start, pos))
        return size, found
    finally:
        os.close(fd)


def _same_bytes(a, b):
    """Byte-for-byte equal: outside both files' data extents both read as zeroes,
    so comparing the union of the extents is enough (and fast on a 1 GiB file)."""
    size_a, seg_a = _segments(a)
    size_b, seg_b = _segments(b)
    if size_a != size_b:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(seg_a + seg_b):
            fa.seek(start)
            fb.seek(start)
            if fa.read(end - start) != fb.read(end - start):
                return False
    return True


async def test_clone_raw_keeps_holes(tmp_path):
    src = await _sparse_source(tmp_path)
    clone = await fv.clone_volume(str(tmp_path), _vol("copy", None), src)
    assert clone.capacity == 1 * GiB
    assert clone.allocation < 4 * MiB
    assert _same_bytes(src.path, clone.path)
    assert _entries(tmp_path) == ["copy", "src"]


@pytest.mark.parametrize("copy_file_range", [True, False])
async def test_clone_starts_writeback_of_what_it_copied(tmp_path, monkeypatch, copy_file_range):
    """Each copied chunk's writeback is started as the copy goes (so the final fsync has
    little left to wait for): exactly the source's data ranges, nothing of its holes."""
    if not copy_file_range:
        monkeypatch.delattr(os, "copy_file_range")
    started = []
    real = block_io.start_writeback

    def recording(fd, offset, length):
        started.append((offset, offset + length))
        real(fd, offset, length)

    monkeypatch.setattr(block_io, "start_writeback", recording)
    src = await _sparse_source(tmp_path)
    clone = await fv.clone_volume(str(tmp_path), _vol("copy", None), src)
    assert _same_bytes(src.path, clone.path)
    _, data = _segments(src.path)
    covered = sorted(started)
    assert covered[0][0] == data[0][0] and covered[-1][1] == data[-1][1]
    assert sum(b - a for a, b in covered) == sum(b - a for a, b in data)


def test_start_writeback_is_only_a_hint(tmp_path):
    r, w = os.pipe()                     # sync_file_range refuses a pipe (ESPIPE): ignored
    try:
        block_io.start_writeback(w, 0, 4096)
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        block_io.start_writeback(f.fileno(), 0, 8192)
    assert (tmp_path / "f").read_bytes() == b"x" * 8192


async def test_clone_read_write_fallback_keeps_holes(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range")
    src = await _sparse_source(tmp_path)
    clone = await fv.clone_volume(str(tmp_path), _vol("copy", None), src)
    assert clone.allocation < 4 * MiB
    assert _same_bytes(src.path, clone.path)


async def test_clone_extends_to_larger_capacity(tmp_path):
    src = await fv.create_volume(str(tmp_path), _vol("s", 4 * MiB))
    with open(src.path, "r+b") as f:
        f.write(b"head")
    clone = await fv.clone_volume(str(tmp_path), _vol("big", 16 * MiB), src)
    assert clone.capacity == 16 * MiB
    with open(clone.path, "rb") as f:
        assert f.read(4) == b"head"
    small = await fv.clone_volume(str(tmp_path), _vol("small", 1 * MiB), src)
    assert small.capacity == 4 * MiB   # never smaller than the source (like libvirt)
    with pytest.raises(AlreadyExists):
        await fv.clone_volume(str(tmp_path), _vol("big", None), src)


@needs_qemu_img
async def test_clone_raw_to_qcow2_and_back(tmp_path):
    src = await fv.create_volume(str(tmp_path), _vol("src", 32 * MiB))
    with open(src.path, "r+b") as f:
        f.seek(5 * MiB)
        f.write(os.urandom(MiB))
    q = await fv.clone_volume(str(tmp_path), _vol("q", None, format="qcow2"), src)
    assert q.format == "qcow2" and q.capacity == 32 * MiB
    assert await qemu_img.compare(src.path, q.path, "raw", "qcow2")
    r = await fv.clone_volume(str(tmp_path), _vol("r", 48 * MiB, format="raw"), q)
    assert r.format == "raw" and r.capacity == 48 * MiB
    with open(src.path, "rb") as a, open(r.path, "rb") as b:
        assert a.read() == b.read(32 * MiB)


async def test_clone_missing_source(tmp_path):
    with pytest.raises(NotFound):
        await fv.clone_volume(
            str(tmp_path), _vol("x", None), VolumeDefinition(name="g", path=str(tmp_path / "g"))
        )
    assert _entries(tmp_path) == []


# -- delete ----------------------------------------------------------------------

async def test_delete(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("d"))
    await fv.delete_volume(vol.path)
    assert _entries(tmp_path) == []
    with pytest.raises(NotFound):
        await fv.delete_volume(vol.path)


# -- the dir backend -------------------------------------------------------------

async def test_dir_backend_lifecycle(tmp_path):
    target = tmp_path / "pool" / "deep"
    pool = PoolDefinition(type="dir", name="p", target=PoolTarget(path=str(target)))
    backend = DirBackend()
    assert not await backend.is_active(pool)
    with pytest.raises(InvalidState, match="Build"):
        await backend.start(pool)
    await backend.build(pool, overwrite=False)
    assert target.is_dir() and target.stat().st_mode & 0o777 == 0o711
    await backend.start(pool)
    assert await backend.is_active(pool)
    # A path in the caller's XML is ignored: the volume lands in target/name.
    vol = await backend.create_volume(
        pool, VolumeDefinition(name="v", capacity=MiB, path="/etc/evil")
    )
    assert vol.path == str(target / "v")
    result = await backend.refresh(pool)
    assert [v.name for v in result.volumes] == ["v"]
    assert result.stats.capacity > 0 and result.stats.available > 0
    assert result.stats.allocation <= result.stats.capacity
    assert (await backend.stats(pool)).capacity == result.stats.capacity
    resized = await backend.resize_volume(pool, VolumeDefinition(name="v"), 2 * MiB, False)
    assert resized.capacity == 2 * MiB
    clone = await backend.create_volume_from(pool, VolumeDefinition(name="c"), vol)
    assert clone.capacity == 2 * MiB
    await backend.wipe_volume(pool, VolumeDefinition(name="c"))
    with pytest.raises(Busy):
        await backend.delete(pool)
    await backend.delete_volume(pool, VolumeDefinition(name="v"))
    await backend.delete_volume(pool, VolumeDefinition(name="c"))
    with pytest.raises(NotFound):
        await backend.volume_info(pool, "v")
    await backend.stop(pool)
    await backend.delete(pool)
    assert not target.exists()
    with pytest.raises(InvalidState, match="not a directory"):
        await backend.stats(pool)
    with pytest.raises(InvalidState, match="not a directory"):
        await backend.delete_volume(pool, VolumeDefinition(name="v"))
    target.write_bytes(b"")         # a file where the pool's directory was
    with pytest.raises(InvalidState, match="not a directory"):
        await backend.delete_volume(pool, VolumeDefinition(name="v"))
    target.unlink()


async def test_delete_refuses_a_directory_and_removes_a_link_not_its_target(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inside").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="is a directory, not a volume"):
        await fv.delete_volume(str(tmp_path / "sub"))
    assert (tmp_path / "sub" / "inside").read_bytes() == b"x"
    (tmp_path / "target").write_bytes(b"data")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    await fv.delete_volume(str(tmp_path / "link"))
    assert not (tmp_path / "link").exists() and (tmp_path / "target").read_bytes() == b"data"
    with pytest.raises(NotFound):
        await fv.delete_volume(str(tmp_path / "link"))


# -- the data path on real filesystems: reflink, sparse copy, wipe by hole ------------

def _write_islands(path, islands):
    """Write non-zero data at (offset, length) places; returns the bytes written."""
    block = os.urandom(MiB)
    with open(path, "r+b") as f:
        for at, n in islands:
            f.seek(at)
            for _ in range(n // MiB):
                f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return sum(n for _, n in islands)


def _shared_extents(path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return "shared" in out


async def test_clone_reflinks_on_xfs(tmp_path):
    with mounted_filesystem(tmp_path, "xfs") as mnt:
        src = await fv.create_volume(str(mnt), _vol("src", 256 * MiB))
        _write_islands(src.path, [(0, 100 * MiB), (150 * MiB, 100 * MiB)])
        free_before = fv.free_bytes(str(mnt))
        clone = await fv.clone_volume(str(mnt), _vol("copy", None), src)
        # 200 MiB of data, cloned on a filesystem with less than that left free: the
        # extents are shared, not copied
        assert free_before - fv.free_bytes(str(mnt)) < 8 * MiB
        assert free_before < 200 * MiB
        assert _shared_extents(clone.path)
        assert clone.capacity == 256 * MiB and clone.format == "raw"
        assert _same_bytes(src.path, clone.path)
        # copy on write: the clone changes alone
        with open(clone.path, "r+b") as f:
            f.write(b"changed")
        with open(src.path, "rb") as f:
            assert f.read(7) != b"changed"
        # a larger capacity still reflinks, then extends
        big = await fv.clone_volume(str(mnt), _vol("big", 300 * MiB), src)
        assert big.capacity == 300 * MiB and _shared_extents(big.path)


@needs_qemu_img
async def test_qcow2_clone_copies_the_file_only_when_nothing_changes(tmp_path):
    with mounted_filesystem(tmp_path, "xfs") as mnt:
        q = await fv.create_volume(str(mnt), _vol("q", 64 * MiB, format="qcow2"))
        await run_command(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 8M", q.path])
        plain = await fv.clone_volume(str(mnt), _vol("plain", None, format="qcow2"), q)
        assert _shared_extents(plain.path)                # the file itself, reflinked
        assert await qemu_img.compare(q.path, plain.path, "qcow2", "qcow2")
        # with a backing file a copy would keep the chain: qemu-img convert flattens it
        base = await fv.create_volume(str(mnt), _vol("base", 64 * MiB))
        _write_islands(base.path, [(20 * MiB, MiB)])
        child = await fv.create_volume(
            str(mnt), _vol("child", 64 * MiB, format="qcow2",
                           backing_store=BackingStore(path=base.path, format="raw")))
        flat = await fv.clone_volume(str(mnt), _vol("flat", None, format="qcow2"), child)
        assert flat.backing_store is None
        assert await qemu_img.compare(child.path, flat.path, "qcow2", "qcow2")
        # a bigger capacity is a change too: converted and resized
        grown = await fv.clone_volume(str(mnt), _vol("grown", 96 * MiB, format="qcow2"), q)
        assert grown.capacity == 96 * MiB and not _shared_extents(grown.path)


async def test_clone_on_ext4_is_a_sparse_copy(tmp_path):
    with mounted_filesystem(tmp_path, "ext4") as mnt:
        src = await fv.create_volume(str(mnt), _vol("src", 1 * GiB))
        data = _write_islands(src.path, [(i * 256 * MiB, 25 * MiB) for i in range(4)])
        assert data == 100 * MiB
        free_before = fv.free_bytes(str(mnt))
        clone = await fv.clone_volume(str(mnt), _vol("copy", None), src)
        st = os.stat(clone.path)
        assert st.st_size == 1 * GiB
        # allocated blocks follow the data (no reflink on ext4: a real copy of 100 MiB)
        assert data <= st.st_blocks * 512 <= data + 4 * MiB
        assert data - MiB <= free_before - fv.free_bytes(str(mnt)) <= data + 8 * MiB
        assert not _shared_extents(clone.path)
        assert _same_bytes(src.path, clone.path)


async def test_wipe_sparse_raw_punches_holes(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("w", 64 * MiB))
    _write_islands(vol.path, [(MiB, 8 * MiB), (40 * MiB, 4 * MiB)])
    assert os.stat(vol.path).st_blocks * 512 >= 12 * MiB
    await fv.wipe_volume(vol.path)
    st = os.stat(vol.path)
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < MiB                     # the data became holes
    with open(vol.path, "rb") as f:
        assert f.read().count(0) == 64 * MiB


async def test_wipe_preallocated_raw_keeps_allocation(tmp_path):
    vol = await fv.create_volume(str(tmp_path), _vol("t", 32 * MiB, allocation=32 * MiB))
    _write_islands(vol.path, [(0, 32 * MiB)])
    seen = []
    await fv.wipe_volume(vol.path, progress=lambda done, total: seen.append((done, total)))
    st = os.stat(vol.path)
    assert st.st_blocks * 512 >= 32 * MiB                # still preallocated (ZERO_RANGE)
    with open(vol.path, "rb") as f:
        assert f.read().count(0) == 32 * MiB
    assert seen and seen[-1] == (32 * MiB, 32 * MiB)


async def test_wipe_writes_zeroes_where_holes_cannot_be_made(tmp_path, monkeypatch):
    def no_fallocate(fd, mode, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not here")

    monkeypatch.setattr(block_io, "fallocate", no_fallocate)
    vol = await fv.create_volume(str(tmp_path), _vol("z", 16 * MiB))
    _write_islands(vol.path, [(2 * MiB, 4 * MiB)])
    await fv.wipe_volume(vol.path)
    with open(vol.path, "rb") as f:
        assert f.read().count(0) == 16 * MiB
    assert os.stat(vol.path).st_blocks * 512 >= 4 * MiB   # written, not punched


@pytest.mark.parametrize("on_loop", [False, True])
async def test_create_with_a_temp_name_where_files_cannot_be_unnamed(tmp_path, monkeypatch,
                                                                       on_loop):
    """Where O_TMPFILE or linking it is not available (NFS, no CAP_DAC_READ_SEARCH), the
    volume is made under a hidden temp name and renamed into place, never over a file."""
    monkeypatch.setattr(unnamed, "_usable", False)
    d = str(tmp_path)
    vol = await fv.create_volume(d, _vol("v", MiB), on_loop=on_loop)
    assert vol.capacity == MiB and os.path.getsize(tmp_path / "v") == MiB
    (tmp_path / "keep").write_bytes(b"data")
    with pytest.raises(AlreadyExists, match="'keep' already exists"):
        await fv.create_volume(d, _vol("keep"), on_loop=on_loop)
    assert (tmp_path / "keep").read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path)) == ["keep", "v"]       # no temp file left


def test_every_directory_backend_that_checks_more_says_so():
    """A DirBackend whose volume_dir checks more than the directory (a mount) must set
    checks_mount: the dir pool's shortcuts (statvfs, unlink without asking it first) would
    otherwise reach the directory under a mount that went away."""
    for pool_type in POOL_TYPES:
        try:
            backend = registry.backend_for(pool_type)
        except Exception:  # noqa: BLE001 - pool types without a backend here
            continue
        if isinstance(backend, DirBackend):
            overrides = type(backend).volume_dir is not DirBackend.volume_dir
            assert backend.checks_mount == overrides, pool_type
