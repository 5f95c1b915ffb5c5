"""New volumes survive a power cut once their create has returned (runs in the VM lane).

dm-flakey stands in for the power cut: the pool's filesystem sits on a device-mapper
device which, right after the creates return, drops every write that follows (what was
still only in memory never reaches the disk, as in a crash). The filesystem is then
mounted again from the disk below (the journal or log is replayed) and must hold every
volume with its size and recorded format. A file written after the creates, without an
fsync, must be gone: it shows the cut really lost what was not made durable.

Run on ext4 and xfs (where a round of new volumes is made durable with one fsync, through
AIO: the filesystem commits metadata in order, system/fsorder.py) and on ext4 without a
journal (where each file and then the directory are fsync'd, in a thread).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.harness.loop import MKFS, LoopDevice
from tests.vm.guest import run

pytestmark = pytest.mark.vm

MiB = 1 << 20
NO_UDEV = {"DM_DISABLE_UDEV": "1"}      # no udevd in the guest: libdevmapper makes the node
VOLUMES = 24


async def _create_volumes(directory: str) -> tuple[list[str], int]:
    """The volumes' names, and how many fsyncs went through AIO (system/aiofsync.py)."""
    from example_storage.backends import file_volumes as fv
    from example_storage.model.definitions import VolumeDefinition
    from example_storage.system.aiofsync import AioFsync

    aio_fsyncs = 0
    real = AioFsync.fsync

    async def counting(self: AioFsync, fd: int) -> None:
        nonlocal aio_fsyncs
        await real(self, fd)
        aio_fsyncs += 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AioFsync, "fsync", counting)
        vols = await asyncio.gather(*(
            fv.create_volume(directory, VolumeDefinition(f"v{i:02d}.img", capacity=MiB),
                             on_loop=True)
            for i in range(VOLUMES)))
    return [v.name for v in vols], aio_fsyncs


def _in_order(directory: Path) -> bool:
    from example_storage.system.fsorder import metadata_in_order

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return metadata_in_order(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("fstype", "options", "in_order"), [
    ("ext4", (), True), ("xfs", (), True), ("ext4", ("-O", "^has_journal"), False),
], ids=["ext4", "xfs", "ext4-nojournal"])
def test_created_volumes_survive_a_power_cut(tmp_path: Path, fstype: str,
                                             options: tuple[str, ...], in_order: bool) -> None:
    run(["modprobe", "dm_flakey"])
    dev = LoopDevice(tmp_path / "disk.img", 320 * MiB)
    name = f"crash-{fstype}-{len(options)}"
    mapped = f"/dev/mapper/{name}"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sectors = 320 * MiB // 512
    mounted = False
    try:
        run(["dmsetup", "create", name, "--table", f"0 {sectors} linear {dev.path} 0"],
            env=NO_UDEV)
        run([*MKFS[fstype], *options, mapped])
        # no timed journal commit (ext4) while the test runs: only our fsyncs commit
        mount_opts = ["-o", "commit=300"] if fstype == "ext4" and not options else []
        run(["mount", "-t", fstype, *mount_opts, mapped, str(mnt)])
        mounted = True
        assert _in_order(mnt) is in_order

        names, aio_fsyncs = asyncio.run(_create_volumes(str(mnt)))
        # in order: each round's one fsync through AIO (the guest's kernel has it)
        assert (aio_fsyncs > 0) is in_order, aio_fsyncs
        (mnt / "unsynced").write_bytes(b"never fsync'd")

        # the power cut: from now on nothing reaches the disk (no flush, no freeze first)
        run(["dmsetup", "suspend", "--noflush", "--nolockfs", name], env=NO_UDEV)
        run(["dmsetup", "load", name, "--table",
             f"0 {sectors} flakey {dev.path} 0 0 180 1 drop_writes"], env=NO_UDEV)
        run(["dmsetup", "resume", name], env=NO_UDEV)
        run(["umount", str(mnt)])
        mounted = False
        run(["dmsetup", "remove", name], env=NO_UDEV)

        run(["mount", "-t", fstype, dev.path, str(mnt)])     # replays the journal
        mounted = True
        survivors = sorted(e for e in os.listdir(mnt) if e != "lost+found")
        assert "unsynced" not in survivors, "the cut did not drop what was never synced"
        assert survivors == sorted(names) == [f"v{i:02d}.img" for i in range(VOLUMES)]
        for n in names:
            st = os.stat(mnt / n)
            assert st.st_size == MiB, (n, st.st_size)
            assert os.getxattr(mnt / n, "user.example-storage.format") == b"raw", n
    finally:
        if mounted:
            run(["umount", str(mnt)])
        if Path(mapped).exists():
            run(["dmsetup", "remove", "--force", name], env=NO_UDEV)
        dev.detach()
