"""Which filesystems commit metadata in order (system/fsorder.py), and the fsyncs a round of
new volumes costs on each (backends/dirsync.py). That the volumes then survive a power
cut is checked in the VM lane: tests/vm_guest/test_crash_durability.py."""

import asyncio
import os

import pytest
from example_storage.backends import dirsync
from example_storage.backends import file_volumes as fv
from example_storage.model.definitions import VolumeDefinition
from example_storage.system import aiofsync, fsorder

from tests.harness.loop import mounted_filesystem

MiB = 1 << 20


@pytest.mark.parametrize(("device", "entries", "expected"), [
    ("loop0", ["loop0-8"], True),
    ("loop0", ["loop1-8", "loop0-8"], True),
    ("dm-3", ["dm-3-8"], True),
    ("loop0", [], False),
    ("loop1", ["loop10-8"], False),        # another device's journal
    ("dm-0", ["dm-00-8"], False),
    ("sda1", ["sda1-journal"], False),     # not "<device>-<inode>"
])
def test_jbd2_entry_names_the_device(device, entries, expected):
    assert fsorder.has_jbd2_journal(device, entries) is expected


def _in_order(path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return fsorder.metadata_in_order(fd)
    finally:
        os.close(fd)


FILESYSTEMS = [("ext4", (), True), ("ext4", ("-O", "^has_journal"), False), ("xfs", (), True)]


@pytest.mark.parametrize(("fstype", "options", "expected"), FILESYSTEMS,
                         ids=["ext4", "ext4-nojournal", "xfs"])
def test_metadata_in_order_on_real_filesystems(tmp_path, fstype, options, expected):
    with mounted_filesystem(tmp_path, fstype, mkfs_options=options) as mnt:
        assert _in_order(mnt) is expected


def test_other_files_are_not_in_order():
    r, w = os.pipe()
    try:
        assert fsorder.metadata_in_order(r) is False
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("fsync_by", ["aio", "thread"])
@pytest.mark.parametrize(("fstype", "options", "in_order"), FILESYSTEMS,
                         ids=["ext4", "ext4-nojournal", "xfs"])
async def test_a_round_costs_one_fsync_where_metadata_is_in_order(
        tmp_path, monkeypatch, fstype, options, in_order, fsync_by):
    """Concurrent creates in a dir pool: on ext4 with a journal and on xfs each round is
    one fsync (of the file published last: through AIO on the loop, or in a thread where
    there is no AIO); without a journal every file and then the directory, in a thread.
    Every file is closed either way."""
    loop = asyncio.get_running_loop()
    if fsync_by == "aio":
        if aiofsync.aio_fsync_for(loop) is None:
            pytest.skip("this kernel gives no AIO context")
    else:
        monkeypatch.setattr(dirsync, "aio_fsync_for", lambda loop: None)
    with mounted_filesystem(tmp_path, fstype, mkfs_options=options) as mnt:
        rounds: list[list[int]] = []
        synced: list[tuple[str, int]] = []
        real_round, real_fsync = dirsync.DirSyncer._round, os.fsync
        real_aio_fsync = aiofsync.AioFsync.fsync

        async def counting_round(self, fds):
            rounds.append(list(fds))
            return await real_round(self, fds)

        def counting_fsync(fd):
            synced.append(("thread", fd))
            real_fsync(fd)

        async def counting_aio_fsync(self, fd):
            synced.append(("aio", fd))
            await real_aio_fsync(self, fd)

        open_before = len(os.listdir("/proc/self/fd"))
        monkeypatch.setattr(dirsync.DirSyncer, "_round", counting_round)
        monkeypatch.setattr(os, "fsync", counting_fsync)
        monkeypatch.setattr(aiofsync.AioFsync, "fsync", counting_aio_fsync)
        vols = await asyncio.gather(*(
            fv.create_volume(str(mnt), VolumeDefinition(f"v{i:02d}", capacity=MiB),
                             on_loop=True)
            for i in range(16)))
        monkeypatch.undo()

        names = [f"v{i:02d}" for i in range(16)]
        assert sorted(v.name for v in vols) == names
        assert sorted(e for e in os.listdir(mnt) if e != "lost+found") == names
        assert sum(len(r) for r in rounds) == 16 and len(rounds) < 16
        if in_order:
            assert synced == [(fsync_by, r[-1]) for r in rounds]
        else:
            assert len(synced) == 16 + len(rounds)     # each file, then the directory
            assert {by for by, _ in synced} == {"thread"}
        assert len(os.listdir("/proc/self/fd")) == open_before   # every file closed
