"""The Upload/Download engine (backends/transfer.py) on files, pipes and sockets: holes,
ranges, stalls, cancellation and readers that go away."""

import errno
import os
import socket
import threading

import pytest
from example_storage.backends import transfer
from example_storage.errors import Cancelled, Failed, InvalidArgument, TimedOut

MiB = 1024 * 1024


def _file(path, size, islands=()):
    with open(path, "wb") as f:
        f.truncate(size)
        for at, data in islands:
            f.seek(at)
            f.write(data)
    return str(path)


def _alloc(path) -> int:
    return os.stat(path).st_blocks * 512


def _reader(fd, sink):
    def run():
        while chunk := os.read(fd, MiB):
            sink.append(chunk)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_check_range():
    assert transfer.check_range(0, 0, 10) == 10
    assert transfer.check_range(4, 0, 10) == 6
    assert transfer.check_range(10, 0, 10) == 0
    assert transfer.check_range(2, 8, 10) == 8
    for offset, length in ((11, 0), (2, 9), (10, 1)):
        with pytest.raises(InvalidArgument):
            transfer.check_range(offset, length, 10)


def test_upload_from_socket_turns_zero_chunks_into_holes(tmp_path):
    vol = _file(tmp_path / "vol", 16 * MiB)
    payload = os.urandom(MiB) + bytes(6 * MiB) + os.urandom(MiB)
    a, b = socket.socketpair()
    sender = threading.Thread(target=lambda: (a.sendall(payload), a.close()))
    sender.start()
    fd = os.open(vol, os.O_WRONLY)
    try:
        done = transfer.upload(fd, b.fileno(), 4 * MiB, 0, cancel=threading.Event())
    finally:
        os.close(fd)
        sender.join()
        b.close()
    assert done == len(payload)
    with open(vol, "rb") as f:
        f.seek(4 * MiB)
        assert f.read(len(payload)) == payload
    assert _alloc(vol) <= 2 * MiB + 64 * 1024


def test_upload_stream_longer_than_the_volume_fills_it_then_fails(tmp_path):
    vol = _file(tmp_path / "vol", 2 * MiB)
    r, w = os.pipe()

    def write() -> None:
        try:
            os.write(w, b"\x01" * 3 * MiB)
        except BrokenPipeError:
            pass    # the upload stopped reading, as it should
        finally:
            os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    fd = os.open(vol, os.O_WRONLY)
    try:
        with pytest.raises(InvalidArgument, match="does not fit"):
            transfer.upload(fd, r, MiB, 0, cancel=threading.Event())
    finally:
        os.close(fd)
        os.close(r)     # the writer gets EPIPE if still writing
        writer.join()
    with open(vol, "rb") as f:
        assert f.read() == bytes(MiB) + b"\x01" * MiB
    assert os.path.getsize(vol) == 2 * MiB


def test_upload_stream_ending_early_fails(tmp_path):
    vol = _file(tmp_path / "vol", 2 * MiB)
    r, w = os.pipe()
    os.write(w, b"abc")
    os.close(w)
    fd = os.open(vol, os.O_WRONLY)
    try:
        with pytest.raises(Failed, match="after 3 of 10"):
            transfer.upload(fd, r, 0, 10, cancel=threading.Event())
    finally:
        os.close(fd)
        os.close(r)


def test_upload_file_checks_before_writing(tmp_path):
    vol = _file(tmp_path / "vol", MiB, [(0, b"keep")])
    src = _file(tmp_path / "src", 2 * MiB, [(0, b"new!")])
    fd, sfd = os.open(vol, os.O_WRONLY), os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgument, match="do not fit"):
            transfer.upload(fd, sfd, 0, 0, cancel=threading.Event())
        os.lseek(sfd, 2 * MiB - 10, os.SEEK_SET)
        with pytest.raises(InvalidArgument, match="holds 10 bytes"):
            transfer.upload(fd, sfd, 0, 11, cancel=threading.Event())
        wfd = os.open(src, os.O_WRONLY)
        try:
            with pytest.raises(InvalidArgument, match="reading"):
                transfer.upload(fd, wfd, 0, 0, cancel=threading.Event())
        finally:
            os.close(wfd)
    finally:
        os.close(fd)
        os.close(sfd)
    with open(vol, "rb") as f:
        assert f.read(4) == b"keep"


def test_stalled_pipe_times_out_and_cancel_stops_a_wait(tmp_path):
    vol = _file(tmp_path / "vol", MiB)
    r, w = os.pipe()
    fd = os.open(vol, os.O_WRONLY)
    try:
        with pytest.raises(TimedOut, match="no data"):
            transfer.upload(fd, r, 0, 0, cancel=threading.Event(), stall=0.5)
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        with pytest.raises(Cancelled):
            transfer.upload(fd, r, 0, 0, cancel=cancel)
    finally:
        os.close(fd)
        os.close(r)
        os.close(w)


def test_download_into_a_file_at_its_position(tmp_path):
    src = _file(tmp_path / "vol", 8 * MiB, [(MiB, b"x" * MiB), (7 * MiB, b"end")])
    out = tmp_path / "out"
    out.write_bytes(b"H" * 100 + b"\xff" * (3 * MiB))
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(out, os.O_WRONLY)
    try:
        os.lseek(dfd, 100, os.SEEK_SET)
        n = transfer.download(sfd, dfd, 0, 0, cancel=threading.Event())
        assert n == 8 * MiB and os.lseek(dfd, 0, os.SEEK_CUR) == 100 + 8 * MiB
    finally:
        os.close(sfd)
        os.close(dfd)
    data = out.read_bytes()
    assert data[:100] == b"H" * 100
    with open(src, "rb") as f:
        assert data[100:] == f.read()
    assert _alloc(out) <= 2 * MiB + 64 * 1024      # the old 0xff bytes were punched out


def test_download_into_append_file_and_socket_sends_every_byte(tmp_path):
    src = _file(tmp_path / "vol", 3 * MiB, [(MiB, b"y" * 1000)])
    with open(src, "rb") as f:
        expected = f.read()
    out = tmp_path / "log"
    out.write_bytes(b"head")
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(out, os.O_WRONLY | os.O_APPEND)
        try:
            transfer.download(sfd, dfd, 0, 0, cancel=threading.Event())
        finally:
            os.close(dfd)
        assert out.read_bytes() == b"head" + expected
        a, b = socket.socketpair()
        got: list[bytes] = []
        reader = _reader(b.fileno(), got)
        try:
            transfer.download(sfd, a.fileno(), MiB - 5, 10, cancel=threading.Event())
        finally:
            a.close()
            reader.join()
            b.close()
        assert b"".join(got) == expected[MiB - 5:MiB + 5]
    finally:
        os.close(sfd)


def test_download_without_nowait_writes_and_to_a_vanished_reader(tmp_path, monkeypatch):
    src = _file(tmp_path / "vol", 2 * MiB, [(0, os.urandom(2 * MiB))])
    real = os.pwritev

    def old_kernel(fd, buffers, offset, flags=0):
        if flags:
            raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT for pipes")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", old_kernel)
    sfd = os.open(src, os.O_RDONLY)
    try:
        r, w = os.pipe()
        got: list[bytes] = []
        reader = _reader(r, got)
        try:
            transfer.download(sfd, w, 0, 0, cancel=threading.Event())
        finally:
            os.close(w)
            reader.join()
            os.close(r)
        with open(src, "rb") as f:
            assert b"".join(got) == f.read()
        monkeypatch.setattr(os, "pwritev", real)
        r, w = os.pipe()
        os.close(r)
        try:
            with pytest.raises(Failed, match="went away"):
                transfer.download(sfd, w, 0, 0, cancel=threading.Event())
        finally:
            os.close(w)
    finally:
        os.close(sfd)
