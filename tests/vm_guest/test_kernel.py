"""The guest kernel has what the LVM, NFS and iSCSI lanes need (runs in the VM lane).

Each test checks what a user would: data written through a device-mapper device is on the
disk below it, an activated LV holds what was written, a snapshot keeps the data as of its
creation, a thin volume works, and the NFS/iSCSI client modules load.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.loop import LoopDevice
from tests.harness.lvm import PrivateLvm
from tests.vm.guest import run

pytestmark = pytest.mark.vm

MiB = 1 << 20
VG = "vmlanevg"
NO_UDEV = {"DM_DISABLE_UDEV": "1"}


def pattern(tag: bytes, size: int = MiB) -> bytes:
    return (tag * (size // len(tag) + 1))[:size]


def write_at(path: str, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: str, size: int, offset: int = 0) -> bytes:
    """Read past the page cache (O_DIRECT into a page-aligned buffer), so the device's own
    content is compared."""
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(fd, [buf], offset)
        return buf[:n]
    finally:
        os.close(fd)
        buf.close()


def test_kernel_is_debians_with_device_mapper() -> None:
    assert Path("/dev/mapper/control").exists()
    assert Path("/sys/module/dm_mod").is_dir()
    assert os.uname().release.endswith("-amd64"), os.uname().release


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[[int], LoopDevice]]:
    devices: list[LoopDevice] = []

    def make(size: int) -> LoopDevice:
        dev = LoopDevice(tmp_path / f"disk{len(devices)}.img", size)
        devices.append(dev)
        return dev

    yield make
    for dev in reversed(devices):
        dev.detach()


def test_dm_linear_target_reads_and_writes_through(loop: Callable[[int], LoopDevice]) -> None:
    dev = loop(16 * MiB)
    name = "vmlane-linear"
    sectors = 8 * MiB // 512
    # The linear target maps the loop device's second 8 MiB. No udevd in the guest: with
    # DM_DISABLE_UDEV=1 libdevmapper makes the /dev/mapper node itself (--noudevrules alone
    # still leaves it to udev on devtmpfs: "Skipping NODE_ADD ... [trust_udev]").
    run(["dmsetup", "create", name, "--table", f"0 {sectors} linear {dev.path} {sectors}"],
        env=NO_UDEV)
    try:
        mapped = f"/dev/mapper/{name}"
        assert Path(mapped).exists(), run(["dmsetup", "ls"])
        table = run(["dmsetup", "table", name])
        assert " linear " in f" {table}"
        size = int(run(["blockdev", "--getsize64", mapped]))
        assert size == 8 * MiB
        data = pattern(b"dm-linear ")
        write_at(mapped, data, offset=MiB)
        assert read_at(mapped, MiB, offset=MiB) == data
        # ... and it landed 8 MiB further on the device below.
        assert read_at(dev.path, MiB, offset=9 * MiB) == data
    finally:
        run(["dmsetup", "remove", name], env=NO_UDEV)
    assert not Path(f"/dev/mapper/{name}").exists()


@pytest.fixture
def lvm(tmp_path: Path, scratch_disk: str) -> Iterator[PrivateLvm]:
    """LVM with a private lvm.conf that sees only the scratch disk (udev off: no udevd in
    the guest); whatever the test leaves is deactivated and removed."""
    with PrivateLvm(tmp_path / "lvm", [scratch_disk]) as lvm:
        assert lvm.activation, "the guest kernel must have device-mapper"
        yield lvm


def test_lvm_activation_snapshot_and_thin_pool(lvm: PrivateLvm, scratch_disk: str) -> None:
    lvm.run("pvcreate", "--yes", scratch_disk)
    lvm.run("vgcreate", VG, scratch_disk)
    lvm.run("lvcreate", "--yes", "-n", "data", "-L", "64m", VG)
    lv = f"/dev/{VG}/data"
    assert Path(lv).exists(), run(["ls", "-lR", "/dev/mapper"])
    attrs = lvm.run("lvs", "--noheadings", "-o", "lv_attr", f"{VG}/data").stdout.strip()
    assert attrs[4] == "a", f"not active: {attrs}"

    before = pattern(b"before snapshot ")
    write_at(lv, before)
    assert read_at(lv, MiB) == before

    lvm.run("lvcreate", "--yes", "-s", "-n", "snap", "-L", "32m", f"{VG}/data")
    snap = f"/dev/{VG}/snap"
    assert Path(snap).exists()
    after = pattern(b"after snapshot ")
    write_at(lv, after)
    assert read_at(lv, MiB) == after
    assert read_at(snap, MiB) == before, "the snapshot must keep the data as of its creation"

    lvm.run("lvcreate", "--yes", "--type", "thin-pool", "-n", "pool", "-L", "128m", VG)
    lvm.run("lvcreate", "--yes", "-n", "thin", "-V", "1g", "--thinpool", f"{VG}/pool")
    thin = f"/dev/{VG}/thin"
    assert Path(thin).exists()
    assert int(run(["blockdev", "--getsize64", thin])) == 1 << 30
    data = pattern(b"thin volume ")
    write_at(thin, data, offset=512 * MiB)
    assert read_at(thin, MiB, offset=512 * MiB) == data
    assert read_at(thin, MiB) == bytes(MiB)  # never written: zeroes

    lvm.run("lvchange", "-an", f"{VG}/thin")
    assert not Path(thin).exists()
    lvm.run("lvchange", "-ay", f"{VG}/thin")
    assert read_at(thin, MiB, offset=512 * MiB) == data


@pytest.mark.parametrize("module", ["nfs", "nfsv4", "iscsi_tcp"])
def test_client_modules_load(module: str) -> None:
    run(["modprobe", module])
    assert Path(f"/sys/module/{module}").is_dir()
