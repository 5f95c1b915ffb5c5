"""New volumes are made unnamed and named once complete (backends/unnamed.py), with a temp
name where the filesystem or the process cannot do that."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from example_storage.backends import file_volumes as fv
from example_storage.backends import unnamed
from example_storage.errors import AlreadyExists
from example_storage.model.definitions import VolumeDefinition

from tests.harness.users import TestUser

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def test_an_unnamed_file_is_invisible_until_linked(tmp_path):
    fd = unnamed.open_unnamed(str(tmp_path), 0o600)
    assert fd is not None, "the test filesystem should support O_TMPFILE"
    try:
        os.write(fd, b"complete")
        assert os.listdir(tmp_path) == []
        assert unnamed.link_unnamed(fd, str(tmp_path / "v.img")) is True
        assert os.listdir(tmp_path) == ["v.img"]
        assert (tmp_path / "v.img").read_bytes() == b"complete"
    finally:
        os.close(fd)


def test_linking_never_replaces(tmp_path):
    (tmp_path / "taken").write_bytes(b"keep me")
    fd = unnamed.open_unnamed(str(tmp_path), 0o600)
    try:
        with pytest.raises(FileExistsError):
            unnamed.link_unnamed(fd, str(tmp_path / "taken"))
    finally:
        os.close(fd)
    assert (tmp_path / "taken").read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["taken"]


async def test_create_refuses_an_existing_name_made_meanwhile(tmp_path, monkeypatch):
    """The name is taken between the check and the link: AlreadyExists, the other file
    untouched, nothing of ours left."""
    real_link = unnamed.link_unnamed

    def racing(fd, path):
        Path(path).write_bytes(b"theirs")
        return real_link(fd, path)

    monkeypatch.setattr(unnamed, "link_unnamed", racing)
    with pytest.raises(AlreadyExists):
        await fv.create_volume(str(tmp_path), VolumeDefinition("v", capacity=MiB), on_loop=True)
    assert os.listdir(tmp_path) == ["v"] and (tmp_path / "v").read_bytes() == b"theirs"


async def test_without_o_tmpfile_a_temp_name_is_used(tmp_path, monkeypatch):
    real_open, opened = os.open, []

    def no_tmpfile(path, flags, mode=0o777, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not here")
        opened.append(os.path.basename(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", no_tmpfile)
    vol = await fv.create_volume(str(tmp_path), VolumeDefinition("v", capacity=MiB),
                                 on_loop=True)
    monkeypatch.undo()
    assert any(name.startswith(fv.TEMP_PREFIX) for name in opened)
    assert os.listdir(tmp_path) == ["v"] and vol.capacity == MiB
    assert os.getxattr(tmp_path / "v", fv.FORMAT_XATTR) == b"raw"


async def test_a_process_that_may_not_link_unnamed_files_uses_a_temp_name(tmp_path,
                                                                         monkeypatch):
    """linkat(AT_EMPTY_PATH) answers ENOENT without CAP_DAC_READ_SEARCH (before Linux 6.10
    also for the file's own opener): the create is made again with a temp name, and later
    creates go there at once."""
    calls = []

    def refusing_linkat(name, argtypes, *args, path=None):
        assert name == "linkat"
        calls.append(path)
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)

    monkeypatch.setattr(unnamed, "_usable", True)
    monkeypatch.setattr(unnamed, "libc_call", refusing_linkat)
    first = await fv.create_volume(str(tmp_path), VolumeDefinition("a", capacity=MiB),
                                   on_loop=True)
    second = await fv.create_volume(str(tmp_path), VolumeDefinition("b", capacity=MiB),
                                    on_loop=True)
    assert len(calls) == 1 and unnamed._usable is False
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert (first.capacity, second.capacity) == (MiB, MiB)
    assert os.getxattr(tmp_path / "a", fv.FORMAT_XATTR) == b"raw"


CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from example_storage.backends import file_volumes as fv
    from example_storage.model.definitions import VolumeDefinition
    d = sys.argv[1]
    vol = asyncio.run(fv.create_volume(d, VolumeDefinition("v", capacity=1 << 20), on_loop=True))
    print(sorted(os.listdir(d)), vol.capacity, os.stat(vol.path).st_uid == os.getuid())
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                    reason="needs root to add a user")
def test_an_unprivileged_process_creates_volumes():
    """Whether this kernel lets it link an unnamed file or not (Linux 6.10 allows its
    opener), a create by a user without privileges makes the volume."""
    top = Path(tempfile.mkdtemp(prefix="unnamed-"))
    try:
        with TestUser() as user:
            os.chmod(top, 0o755)
            pool = top / "pool"
            pool.mkdir()
            os.chown(pool, user.uid, -1)
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(pool)], user=user.uid, cwd=top,
                env={"PYTHONPATH": f"{REPO / 'service'}", "PATH": os.environ["PATH"]},
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["['v'] 1048576 True"]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_rename_without_replacing(tmp_path):
    """The temp-name path's fallback for filesystems without hard links: renameat2
    (RENAME_NOREPLACE) moves a file, and refuses to replace one."""
    (tmp_path / "a").write_bytes(b"a")
    fv._rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert os.listdir(tmp_path) == ["b"]
    (tmp_path / "c").write_bytes(b"c")
    with pytest.raises(FileExistsError):
        fv._rename_noreplace(str(tmp_path / "c"), str(tmp_path / "b"))
    assert sorted(os.listdir(tmp_path)) == ["b", "c"]
    assert (tmp_path / "b").read_bytes() == b"a"
