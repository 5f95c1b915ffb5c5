"""Zeroing and transfers through a real block device (a loop device of our own)."""

import os
import shutil
import subprocess
import threading

import pytest
from example_storage.backends import block_io, transfer
from example_storage.errors import Busy

from tests.harness.loop import LoopDevice

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
    pytest.mark.skipif(shutil.which("losetup") is None, reason="needs losetup"),
]

MiB = 1024 * 1024
SIZE = 32 * MiB


@pytest.fixture
def loop(tmp_path):
    try:
        dev = LoopDevice(tmp_path / "disk.img", SIZE)
    except Exception as e:  # noqa: BLE001 - no free loop device here
        pytest.skip(f"no loop device: {e}")
    try:
        yield dev
    finally:
        dev.detach()


def _fill(dev: str, data: bytes) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        block_io.pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(dev: str) -> bytes:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.pread(fd, SIZE, 0)
    finally:
        os.close(fd)


def test_zeroout_an_unaligned_range(loop):
    data = os.urandom(SIZE)
    _fill(loop.path, data)
    start, end = MiB + 100, 9 * MiB + 7
    fd = os.open(loop.path, os.O_WRONLY)
    try:
        zeroer = block_io.RangeZeroer(fd, keep_allocation=True, cancel=threading.Event())
        seen = []
        zeroer.zero(start, end, lambda done, total: seen.append(done), 0, end - start)
    finally:
        os.close(fd)
    after = _read(loop.path)
    assert after[:start] == data[:start] and after[end:] == data[end:]
    assert after[start:end].count(0) == end - start
    assert "zeroout" in zeroer.used                  # the kernel did the aligned middle
    assert seen[-1] == end - start


def test_zero_device_from_an_offset(loop):
    data = os.urandom(SIZE)
    _fill(loop.path, data)
    seen = []
    block_io.zero_device(loop.path, 4 * MiB, cancel=threading.Event(),
                         progress=lambda done, total: seen.append((done, total)))
    after = _read(loop.path)
    assert after[:4 * MiB] == data[:4 * MiB]
    assert after[4 * MiB:].count(0) == SIZE - 4 * MiB
    assert seen[-1] == (SIZE - 4 * MiB, SIZE - 4 * MiB)


def test_upload_and_download_through_the_device(loop, tmp_path):
    _fill(loop.path, os.urandom(SIZE))               # old bytes in the holes' places
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.truncate(SIZE)
        f.seek(3 * MiB)
        f.write(os.urandom(2 * MiB))
    fd = os.open(src, os.O_RDONLY)
    try:
        n = transfer.upload_to_path(loop.path, fd, 0, 0, cancel=threading.Event())
    finally:
        os.close(fd)
    assert n == SIZE
    assert _read(loop.path) == src.read_bytes()
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        transfer.download_from_path(loop.path, fd, 0, 0, cancel=threading.Event())
    finally:
        os.close(fd)
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_blocks * 512 <= 3 * MiB     # zeroes read from the device: holes


async def test_exclusive_upload_refused_while_mounted(loop, tmp_path):
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("needs mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-F", "-q", loop.path], check=True, capture_output=True,
                   timeout=60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", loop.path, str(mnt)], check=True, capture_output=True, timeout=60)
    try:
        r, w = os.pipe()
        os.write(w, b"x" * 1000)
        os.close(w)
        try:
            with pytest.raises(Busy):
                await block_io.in_thread(transfer.upload_to_path, loop.path, r, 0, 0,
                                         exclusive=True, what="uploading")
        finally:
            os.close(r)
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)
    assert b"x" * 100 not in _read(loop.path)[:4096]      # nothing was written
