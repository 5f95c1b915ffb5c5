"""The fs pool on a real loop device (root only)."""

import os
import shutil
import subprocess

import pytest
from example_storage.backends.fs import FsBackend
from example_storage.errors import Busy, InvalidArgument, InvalidState
from example_storage.model.definitions import (
    PoolDefinition,
    PoolSource,
    PoolTarget,
    SourceDevice,
    VolumeDefinition,
)
from example_storage.system import blkid, mounts

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("losetup", "mkfs.ext4", "mkfs.xfs", "blkid")),
        reason="needs losetup, mkfs.ext4, mkfs.xfs, blkid",
    ),
]

MiB = 1024 * 1024
# mkfs.xfs refuses filesystems under 300 MiB; the image is sparse, so this costs little.
IMAGE_SIZE = 512 * MiB


def _run(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


def _unmount_all(dev):
    st = os.stat(dev)
    for entry in reversed(mounts.mounts_of_devno(st.st_rdev)):
        if _run("umount", entry.mount_point, check=False).returncode != 0:
            _run("umount", "-l", entry.mount_point, check=False)


@pytest.fixture
def loopdev(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)
    attached = _run("losetup", "-f", "--show", str(image), check=False)
    if attached.returncode != 0:
        pytest.skip(f"losetup does not work here: {attached.stderr.strip()}")
    dev = attached.stdout.strip()
    try:
        yield dev
    finally:
        _unmount_all(dev)
        _run("losetup", "-d", dev, check=False)   # exactly the device we attached


def _pool(dev, target, fmt="xfs", opts=()):
    return PoolDefinition(
        type="fs",
        name="fsp",
        source=PoolSource(devices=[SourceDevice(path=dev)], format=fmt),
        target=PoolTarget(path=str(target)),
        mount_opts=list(opts),
    )


def _mounted_at(target, dev):
    entry = mounts.find_mount(str(target))
    return entry is not None and entry.devno == os.stat(dev).st_rdev


async def test_fs_pool_lifecycle(loopdev, tmp_path):
    backend = FsBackend()
    target = tmp_path / "mnt"
    pool = _pool(loopdev, target, "xfs", ["noatime"])
    _run("mkfs.ext4", "-F", "-q", loopdev)

    with pytest.raises(InvalidState, match=r"holds an ext4 filesystem; pass option 'overwrite'"):
        await backend.build(pool, overwrite=False)
    assert (await blkid.probe(loopdev))["TYPE"] == "ext4"

    await backend.build(pool, overwrite=True)
    assert (await blkid.probe(loopdev))["TYPE"] == "xfs"
    assert target.is_dir()
    assert not await backend.is_active(pool)
    with pytest.raises(InvalidState, match="not mounted"):
        await backend.create_volume(pool, VolumeDefinition(name="v", capacity=MiB))

    await backend.start(pool)
    entry = mounts.find_mount(str(target))
    assert entry is not None and entry.fstype == "xfs"
    assert entry.devno == os.stat(loopdev).st_rdev
    assert "noatime" in entry.options
    assert await backend.is_active(pool)
    await backend.start(pool)   # already mounted: nothing to do
    assert len(mounts.mounts_of_source(loopdev)) == 1

    vol = await backend.create_volume(pool, VolumeDefinition(name="v", capacity=64 * MiB))
    assert vol.path == str(target / "v") and vol.capacity == 64 * MiB
    result = await backend.refresh(pool)
    assert [v.name for v in result.volumes] == ["v"]
    assert 400 * MiB < result.stats.capacity <= IMAGE_SIZE

    with pytest.raises(InvalidState, match="mounted"):
        await backend.delete(pool)
    with pytest.raises(Busy, match="mounted"):
        await backend.build(pool, overwrite=True)

    with open(target / "v", "rb"), pytest.raises(Busy, match="busy"):
        await backend.stop(pool)
    assert _mounted_at(target, loopdev)

    await backend.stop(pool)
    assert not _mounted_at(target, loopdev)
    assert not await backend.is_active(pool)
    assert not (target / "v").exists()   # the volume lives on the device, not the dir
    # unmounted: volume operations never reach the directory under the mount point
    (target / "v").write_bytes(b"not the volume")
    with pytest.raises(InvalidState, match="not mounted"):
        await backend.delete_volume(pool, VolumeDefinition(name="v"))
    with pytest.raises(InvalidState, match="not mounted"):
        await backend.stats(pool)
    assert (target / "v").read_bytes() == b"not the volume"
    (target / "v").unlink()

    await backend.start(pool)
    assert [v.name for v in (await backend.refresh(pool)).volumes] == ["v"]
    await backend.stop(pool)

    await backend.delete(pool)
    assert await blkid.probe(loopdev) == {}
    assert not target.exists()


async def test_build_auto_makes_ext4_on_empty_device(loopdev, tmp_path):
    backend = FsBackend()
    pool = _pool(loopdev, tmp_path / "m", "auto")
    await backend.build(pool, overwrite=False)   # nothing on it: no overwrite needed
    props = await blkid.probe(loopdev)
    assert props["TYPE"] == "ext4"
    # A pool that says xfs refuses to mount the ext4 it finds.
    with pytest.raises(InvalidState, match="not xfs"):
        await backend.start(_pool(loopdev, tmp_path / "m", "xfs"))
    await backend.start(pool)
    assert await backend.is_active(pool)
    await backend.stop(pool)


async def test_start_refuses_empty_device(loopdev, tmp_path):
    with pytest.raises(InvalidState, match="Build"):
        await FsBackend().start(_pool(loopdev, tmp_path / "m", "auto"))


async def test_source_must_be_a_block_device(tmp_path):
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    backend = FsBackend()
    with pytest.raises(InvalidArgument, match="not a block device"):
        await backend.build(_pool(str(plain), tmp_path / "m"), overwrite=True)
    with pytest.raises(InvalidArgument):
        await backend.build(_pool(str(tmp_path / "missing"), tmp_path / "m"), overwrite=True)
    assert not await backend.is_active(_pool(str(plain), tmp_path / "m"))
