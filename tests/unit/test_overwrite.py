"""backends/overwrite.py: Wipe's algorithms writing every byte of a file or device."""

import os
import threading

import pytest
from example_storage.backends import overwrite
from example_storage.errors import Cancelled, Failed, InvalidArgument, NotSupported

from tests.harness.loop import LoopDevice

MiB = 1 << 20


def test_algorithm_names():
    assert overwrite.check_algorithm("zero") == "zero"
    assert overwrite.check_algorithm("random") == "random"
    with pytest.raises(NotSupported, match="gutmann"):
        overwrite.check_algorithm("gutmann")
    with pytest.raises(InvalidArgument, match="unknown wipe algorithm 'bogus'"):
        overwrite.check_algorithm("bogus")


def _sparse(path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(MiB)
        f.write(b"x" * 4096)


def test_random_fills_a_sparse_file(tmp_path):
    path = tmp_path / "v.img"
    _sparse(path, 5 * MiB + 123)
    reports = []
    overwrite.overwrite_file(str(path), "random", cancel=threading.Event(),
                             progress=lambda d, t: reports.append((d, t)))
    st = path.stat()
    assert st.st_size == 5 * MiB + 123                      # the size stays
    assert st.st_blocks * 512 >= st.st_size                  # the holes are written
    data = path.read_bytes()
    assert data[:MiB].count(0) < MiB // 100                  # not zeroes
    assert data[MiB:MiB + 4096] != b"x" * 4096
    assert reports[0] == (0, st.st_size) and reports[-1] == (st.st_size, st.st_size)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_zero_algorithm_writes_zeroes(tmp_path):
    path = tmp_path / "v.img"
    path.write_bytes(os.urandom(2 * MiB))
    overwrite.overwrite_file(str(path), "zero", cancel=threading.Event(),
                             progress=lambda d, t: None)
    assert path.read_bytes() == bytes(2 * MiB)


def test_cancel_stops_between_chunks(tmp_path):
    path = tmp_path / "v.img"
    _sparse(path, 64 * MiB)
    cancel = threading.Event()
    done = []

    def progress(d: int, t: int) -> None:
        done.append(d)
        if d >= 2 * MiB:
            cancel.set()

    with pytest.raises(Cancelled):
        overwrite.overwrite_file(str(path), "random", cancel=cancel, progress=progress)
    assert max(done) == 2 * MiB
    assert path.stat().st_blocks * 512 < 8 * MiB             # stopped early


def test_symlinks_and_non_files_are_refused(tmp_path):
    target = tmp_path / "t.img"
    target.write_bytes(b"keep")
    link = tmp_path / "l.img"
    link.symlink_to(target)
    with pytest.raises(Failed):
        overwrite.overwrite_file(str(link), "random", cancel=threading.Event(),
                                 progress=lambda d, t: None)
    assert target.read_bytes() == b"keep"
    with pytest.raises(InvalidArgument, match="not a block device"):
        overwrite.overwrite_device(str(target), "random", cancel=threading.Event(),
                                   progress=lambda d, t: None)
    assert target.read_bytes() == b"keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_random_then_zero_on_a_block_device(tmp_path):
    try:
        dev = LoopDevice(tmp_path / "disk.img", 8 * MiB)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no loop device: {e}")
    try:
        reports = []
        overwrite.overwrite_device(dev.path, "random", cancel=threading.Event(),
                                   progress=lambda d, t: reports.append((d, t)))
        assert reports[-1] == (8 * MiB, 8 * MiB)
        with open(dev.path, "rb") as f:
            assert f.read(MiB).count(0) < MiB // 100
        overwrite.overwrite_device(dev.path, "zero", cancel=threading.Event(),
                                   progress=lambda d, t: None)
        with open(dev.path, "rb") as f:
            assert f.read() == bytes(8 * MiB)
    finally:
        dev.detach()
