"""Loop devices backed by sparse image files, attached and detached one by one.

Only the device this object attached is ever unmounted or detached; other loop devices
(the host's, other test runs') are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space...) of /proc/self/mountinfo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_of(devnums: set[str]) -> list[str]:
    """Mount points (deepest first) whose source device is one of ``devnums`` ("MAJ:MIN")."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] in devnums:
            points.append(_unescape(fields[4]))
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


class LoopDevice:
    """A sparse ``image_path`` of ``size_bytes`` attached with ``losetup -f --show``;
    ``direct_io``: the device reads and writes its image with O_DIRECT (``--direct-io=on``),
    past the host's page cache, as a disk would (a buffered loop device keeps a second
    copy of everything in the host's page cache and turns a flush into an fsync of the
    image)."""

    def __init__(self, image_path: str | os.PathLike[str], size_bytes: int,
                 direct_io: bool = False) -> None:
        self.image = Path(image_path).resolve()
        self.size = size_bytes
        self.direct_io = direct_io
        self.path = ""
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_bytes)
        self._created_image = True
        self.path = self._attach()

    def _attach(self, attempts: int = 8) -> str:
        """``losetup -f --show``, retried: another process may grab the same free device
        between the lookup and the attach (EBUSY)."""
        last = ""
        for i in range(attempts):
            res = subprocess.run(
                ["losetup", "-f", "--show", *(["--direct-io=on"] if self.direct_io else []),
                 str(self.image)],
                capture_output=True, text=True, stdin=subprocess.DEVNULL,
            )
            if res.returncode == 0 and res.stdout.strip().startswith("/dev/loop"):
                return res.stdout.strip()
            last = res.stderr.strip()
            time.sleep(0.1 * (i + 1))
        raise RuntimeError(f"losetup -f --show {self.image} failed: {last}")

    @property
    def name(self) -> str:
        """The kernel name, e.g. ``loop3``."""
        return os.path.basename(self.path)

    def devnums(self) -> set[str]:
        """MAJ:MIN of the device and of its partitions (``loopNpM``, made by parted)."""
        sysdir = Path("/sys/block") / self.name
        nums = set()
        for dev in [sysdir / "dev", *sysdir.glob(f"{self.name}p*/dev")]:
            with contextlib.suppress(OSError):
                nums.add(dev.read_text().strip())
        return nums

    def attached_here(self) -> bool:
        """True while the device is still backed by our image (it was not detached by
        someone else and reused)."""
        try:
            backing = (Path("/sys/block") / self.name / "loop" / "backing_file").read_text()
        except OSError:
            return False
        return backing.strip().removesuffix(" (deleted)") == str(self.image)

    def detach(self, remove_image: bool = True) -> None:
        """Unmount whatever is still mounted from this device (or its partitions), then
        ``losetup -d`` exactly this device; remove the image. Idempotent."""
        if self.path and self.attached_here():
            for point in mounts_of(self.devnums()):
                res = subprocess.run(["umount", point], capture_output=True, text=True)
                if res.returncode != 0:
                    subprocess.run(["umount", "-l", point], capture_output=True, text=True)
            # Partitions added through BLKPG (parted, partx) outlive losetup -d on this
            # kernel and would reappear on the next user of the device: drop them first.
            subprocess.run(["partx", "-d", self.path], capture_output=True, text=True)
            subprocess.run(["losetup", "-d", self.path], capture_output=True, text=True,
                           check=True)
        self.path = ""
        if remove_image and self._created_image:
            self.image.unlink(missing_ok=True)

    def __enter__(self) -> LoopDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"LoopDevice({self.path!r}, image={str(self.image)!r})"


MKFS = {
    "xfs": ["mkfs.xfs", "-f", "-q", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-F", "-q"],
}


@contextlib.contextmanager
def mounted_filesystem(
    directory: Path, fstype: str, size: int = 320 << 20, mkfs_options: tuple[str, ...] = ()
) -> Iterator[Path]:
    """A fresh ``fstype`` filesystem on a loop device of our own, mounted below
    ``directory`` (mkfs.xfs wants at least 300 MiB; the image is sparse); unmounted and
    detached afterwards. Skips the test without root, the tools or a free loop device."""
    import pytest  # test-only helper: the rest of the harness runs outside pytest too

    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    mkfs = [*MKFS[fstype], *mkfs_options]
    missing = [t for t in ("losetup", "mount", "umount", mkfs[0]) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    name = f"{fstype}{''.join(mkfs_options).replace('^', 'no').replace(' ', '')}"
    try:
        dev = LoopDevice(directory / f"{name}.img", size)
    except Exception as e:  # noqa: BLE001 - no free loop device here
        pytest.skip(f"no loop device: {e}")
    try:
        subprocess.run([*mkfs, dev.path], check=True, capture_output=True, timeout=120)
        mnt = directory / f"mnt-{name}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", fstype, dev.path, str(mnt)], check=True,
                       capture_output=True, timeout=60)
        try:
            yield mnt
        finally:
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    finally:
        dev.detach()
