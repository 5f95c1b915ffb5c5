"""Host fixtures of the bench: filesystems on loop devices of its own, data files.

Every loop device is attached by ``tests.harness.LoopDevice`` and detached by its exact path;
mounts are below the bench's temp dir and unmounted by ``Filesystems.close()``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from tests.harness.loop import LoopDevice

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    # reflink=1 is xfsprogs' default on Debian 12; said explicitly
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
}


class Filesystems:
    """One fresh ext4 and one xfs, each on its own loop device with direct I/O (as a disk:
    no second copy in the host's page cache), mounted at root/<fstype>."""

    def __init__(self, root: Path, image_size: int, fstypes: tuple[str, ...] = ("ext4", "xfs")
                 ) -> None:
        self.root = root
        self.loops: list[LoopDevice] = []
        self.mounts: dict[str, Path] = {}
        try:
            for fstype in fstypes:
                loop = LoopDevice(root / f"{fstype}.img", image_size, direct_io=True)
                self.loops.append(loop)
                subprocess.run([*MKFS[fstype], loop.path], check=True, capture_output=True,
                               timeout=120)
                point = root / fstype
                point.mkdir()
                subprocess.run(["mount", loop.path, str(point)], check=True,
                               capture_output=True, timeout=60)
                self.mounts[fstype] = point
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unmount and detach (LoopDevice.detach unmounts what is mounted from it)."""
        for loop in self.loops:
            with contextlib.suppress(Exception):
                loop.detach()
        self.loops.clear()
        self.mounts.clear()


def fill_data(path: Path, data_bytes: int, capacity: int, chunk: int = 1 << 20) -> list[int]:
    """Write ``data_bytes`` of random data into the (sparse) file ``path`` in ``chunk``-sized
    pieces spread evenly over ``capacity``; fsync. Returns the offsets written."""
    pieces = max(1, data_bytes // chunk)
    stride = capacity // pieces
    offsets = [i * stride for i in range(pieces)]
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(os.urandom(chunk))
        f.flush()
        os.fsync(f.fileno())
    return offsets


def same_data(a: Path, b: Path, offsets: list[int], length: int = 4096) -> bool:
    """True when ``a`` and ``b`` hold the same bytes at the given offsets."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for off in offsets:
            fa.seek(off)
            fb.seek(off)
            if fa.read(length) != fb.read(length):
                return False
    return True


def sparse_files(directory: Path, count: int, size: int, prefix: str = "vol") -> None:
    """``count`` sparse files of ``size`` bytes (raw volumes to a dir pool's refresh)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        fd = os.open(directory / f"{prefix}{i:05d}.img", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
