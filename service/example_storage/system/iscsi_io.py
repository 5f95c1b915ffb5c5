"""Reading, writing and zeroing one LUN through libiscsi (ctypes), run as its own process
by system/iscsi_transfer.py (like system/iscsi_probe.py, so that a hung target is killed
with the process and a libiscsi crash cannot take the daemon down).

    LIBISCSI_CHAP_PASSWORD=... python -m example_storage.system.iscsi_io \\
        MODE PORTAL TARGET_IQN INITIATOR_IQN LUN OFFSET LENGTH FD USERNAME

MODE ``wipe``: zero the whole LUN: WRITE SAME 16 with UNMAP where the LU reads unmapped
blocks back as zeroes (READ CAPACITY 16: LBPME and LBPRZ), else WRITE SAME 16 of a zero
block, else WRITE 16 of zeroed chunks (a target without WRITE SAME). ``wipe-random``:
random bytes over every block (WRITE 16). ``read``: the LUN's bytes [OFFSET,
OFFSET+LENGTH) are written to FD (LENGTH 0: to the LUN's end); in a regular file
all-zero pieces are skipped (past the file's old end) or punched (inside it), so the
copy stays sparse. ``write``: bytes read from FD go to the LUN from OFFSET (LENGTH 0:
until FD ends); a partial first or last block is read, patched and written back.
FD is an inherited descriptor (``-1`` for the wipes); USERNAME ``-`` means no CHAP.

The CHAP secret comes only from the environment, never from argv. stdout carries JSON
lines: ``{"progress": [done, total]}`` while working (at most ~10 a second), then one
``{"ok": true, "bytes": N, ...}`` or ``{"error": "...", "kind": "..."}``. Exit status:
0 ok; 2 login refused for authentication; 3 other failure; 4 usage or library error;
5 a range outside the LUN (nothing written). Memory stays bounded: one chunk
(``CHUNK`` bytes, or less when the target's block limits say so) at a time.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import select
import stat
import sys
import time
from dataclasses import dataclass

from .iscsi_probe import PASSWORD_ENV, _Probe, login
from .libc import FALLOCATE_ARGS, libc_call

CHUNK = 1024 * 1024                 # bytes per READ/WRITE 16
WRITE_SAME_BYTES = 32 * 1024 * 1024  # bytes per WRITE SAME 16 (progress and cancel points)
SCSI_TIMEOUT = 60                    # seconds one command may take (a big WRITE SAME)
PIECE = 4096                         # hole detection granularity in downloads
IO_WAIT = 60.0                       # seconds a blocked caller fd may stall us
PROGRESS_EVERY = 0.1

SCSI_STATUS_GOOD = 0
SCSI_STATUS_CHECK_CONDITION = 2
SENSE_UNIT_ATTENTION = 6
SENSE_ILLEGAL_REQUEST = 5

EXIT_AUTH, EXIT_FAILED, EXIT_USAGE, EXIT_RANGE = 2, 3, 4, 5

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class IoError(Exception):
    """A failure to report: message and exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _ReadCapacity16(ctypes.Structure):
    _fields_ = [("returned_lba", ctypes.c_uint64), ("block_length", ctypes.c_uint32),
                ("p_type", ctypes.c_uint8), ("prot_en", ctypes.c_uint8),
                ("p_i_exp", ctypes.c_uint8), ("lbppbe", ctypes.c_uint8),
                ("lbpme", ctypes.c_uint8), ("lbprz", ctypes.c_uint8)]


class _BlockLimits(ctypes.Structure):      # VPD 0xB0, as libiscsi unmarshalls it
    _fields_ = [("qualifier", ctypes.c_int), ("device_type", ctypes.c_int),
                ("pagecode", ctypes.c_int), ("wsnz", ctypes.c_int),
                ("max_cmp", ctypes.c_uint8), ("opt_gran", ctypes.c_uint16),
                ("max_xfer_len", ctypes.c_uint32), ("opt_xfer_len", ctypes.c_uint32),
                ("max_prefetch", ctypes.c_uint32), ("max_unmap", ctypes.c_uint32),
                ("max_unmap_bdc", ctypes.c_uint32), ("opt_unmap_gran", ctypes.c_uint32),
                ("ugavalid", ctypes.c_int), ("unmap_gran_align", ctypes.c_uint32),
                ("max_ws_len", ctypes.c_uint64)]


class _Sense(ctypes.Structure):    # struct scsi_sense (20 bytes in 1.19): its prefix + room
    _fields_ = [("error_type", ctypes.c_ubyte), ("key", ctypes.c_int), ("ascq", ctypes.c_int),
                ("_rest", ctypes.c_ubyte * 52)]


@dataclass
class LunGeometry:
    size: int
    block_size: int
    zeroes_when_unmapped: bool      # LBPME and LBPRZ: UNMAP leaves zeroes behind
    max_blocks: int                 # per READ/WRITE
    max_write_same: int             # blocks per WRITE SAME (0: no limit reported)


# -- pure helpers (unit-tested) -------------------------------------------------------
def check_range(size: int, offset: int, length: int) -> int:
    """The byte count of [offset, offset+length) on a LUN of ``size`` bytes (length 0: to
    the end); raises IoError(EXIT_RANGE) for a range that does not fit."""
    if offset < 0 or length < 0:
        raise IoError("offset and length must not be negative", EXIT_RANGE)
    if offset > size:
        raise IoError(f"offset {offset} is past the LUN's end ({size} bytes)", EXIT_RANGE)
    count = length or size - offset
    if offset + count > size:
        raise IoError(f"{count} bytes at offset {offset} do not fit into the LUN "
                      f"({size} bytes)", EXIT_RANGE)
    return count


def zero_runs(buf: bytearray, start: int, end: int, piece: int = PIECE
              ) -> list[tuple[int, int, bool]]:
    """Split buf[start:end] into (start, end, is_zero) runs of whole ``piece``s (the last
    one may be shorter), adjacent pieces of the same kind merged."""
    runs: list[tuple[int, int, bool]] = []
    zero = bytes(piece)
    pos = start
    while pos < end:
        stop = min(pos + piece, end)
        is_zero = buf.startswith(zero[: stop - pos], pos, stop)
        if runs and runs[-1][2] == is_zero:
            runs[-1] = (runs[-1][0], stop, is_zero)
        else:
            runs.append((pos, stop, is_zero))
        pos = stop
    return runs


# -- progress and messages --------------------------------------------------------------
class Reporter:
    def __init__(self, total: int) -> None:
        self.total = total
        self._last = 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY:
            self._last = now
            emit({"progress": [done, self.total]})


def emit(msg: dict) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


# -- caller fd I/O that tolerates O_NONBLOCK descriptors ----------------------------------
def _wait(fd: int, events: int) -> None:
    poller = select.poll()
    poller.register(fd, events)
    if not poller.poll(IO_WAIT * 1000):
        raise IoError(f"the caller's file descriptor stalled for {IO_WAIT:g}s")


def read_fd(fd: int, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` as far as it goes; returns the bytes read (short: EOF)."""
    got = 0
    while got < len(view):
        try:
            n = os.readv(fd, [view[got:]])
        except BlockingIOError:
            _wait(fd, select.POLLIN)
            continue
        except InterruptedError:
            continue
        if n == 0:
            break
        got += n
    return got


def write_fd(fd: int, view: memoryview) -> None:
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            _wait(fd, select.POLLOUT)
            continue
        except InterruptedError:
            continue
        view = view[n:]


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


class SparseSink:
    """Writes a download into a regular file from its current offset: data pieces are
    written, all-zero pieces past the file's old end are skipped (a hole) and those inside
    it are punched (or written as zeroes where punching is not supported)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.base = os.lseek(fd, 0, os.SEEK_CUR)
        self.old_size = os.fstat(fd).st_size
        self.pos = 0
        self._can_punch = True

    def _punch(self, start: int, length: int) -> bool:
        if not self._can_punch:
            return False
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        try:
            libc_call("fallocate", FALLOCATE_ARGS, self.fd, mode, start, length)
        except OSError:
            self._can_punch = False
            return False
        return True

    def write(self, buf: bytearray, start: int, end: int) -> None:
        view = memoryview(buf)
        for a, b, is_zero in zero_runs(buf, start, end):
            at = self.base + self.pos
            length = b - a
            if not is_zero:
                _pwrite_all(self.fd, view[a:b], at)
            elif at < self.old_size:
                inside = min(length, self.old_size - at)
                if not self._punch(at, inside):
                    _pwrite_all(self.fd, memoryview(bytes(inside)), at)
            self.pos += length

    def finish(self) -> None:
        end = self.base + self.pos
        if os.fstat(self.fd).st_size < end:
            os.ftruncate(self.fd, end)          # a trailing hole still counts
        os.lseek(self.fd, end, os.SEEK_SET)


def sparse_capable(fd: int) -> bool:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return False
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
        return False                            # pwrite would append: write in order
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


# -- the LUN ------------------------------------------------------------------------------
class Lun:
    def __init__(self, io: _Probe, ctx: int, lun: int) -> None:
        self.io, self.lib, self.ctx, self.lun = io, io.lib, ctx, lun
        self.geometry = self._geometry()

    def _status(self, task: int) -> tuple[int, int]:
        sense = _Sense()
        status = self.lib.scsi_task_get_status(task, ctypes.byref(sense))
        return status, sense.key

    def run(self, what: str, fn, *args) -> tuple[int, int]:
        """Run a *_sync command (retrying on UNIT ATTENTION); returns (status, sense key)
        with the task freed; raises IoError when the command could not be sent."""
        for _ in range(6):
            task = fn(self.ctx, *args)
            if not task:
                raise IoError(f"{what} failed: {self.io._error(self.ctx)}")
            try:
                status, key = self._status(task)
            finally:
                self.lib.scsi_free_scsi_task(task)
            if status == SCSI_STATUS_CHECK_CONDITION and key == SENSE_UNIT_ATTENTION:
                continue
            return status, key
        return status, key

    def check(self, what: str, fn, *args) -> None:
        status, _key = self.run(what, fn, *args)
        if status != SCSI_STATUS_GOOD:
            raise IoError(f"{what} failed: {self.io._error(self.ctx)}")

    def _geometry(self) -> LunGeometry:
        task = self.io._sync(self.lib.iscsi_readcapacity16_sync, self.ctx, self.lun)
        try:
            data = self.io._task_data(task)
            if not data:
                raise IoError(f"LUN {self.lun}: READ CAPACITY 16 failed: "
                              f"{self.io._error(self.ctx)}")
            rc = _ReadCapacity16.from_address(data)
            size, bs = (rc.returned_lba + 1) * rc.block_length, rc.block_length
            zeroes = bool(rc.lbpme and rc.lbprz)
        finally:
            if task:
                self.lib.scsi_free_scsi_task(task)
        if bs <= 0 or bs > CHUNK or CHUNK % bs:
            raise IoError(f"LUN {self.lun}: unsupported block size {bs}")
        max_blocks, max_ws = CHUNK // bs, 0
        task = self.io._sync(self.lib.iscsi_inquiry_sync, self.ctx, self.lun, 1, 0xB0, 255)
        try:
            data = self.io._task_data(task)
            limits = _BlockLimits.from_address(data) if data else None
            if limits is not None and limits.pagecode == 0xB0:
                if limits.max_xfer_len:
                    max_blocks = max(1, min(max_blocks, limits.max_xfer_len))
                max_ws = int(limits.max_ws_len)
        finally:
            if task:
                self.lib.scsi_free_scsi_task(task)
        return LunGeometry(size, bs, zeroes, max_blocks, max_ws)

    # block I/O on ctypes-visible buffers
    def read_blocks(self, lba: int, buf: bytearray, nbytes: int) -> None:
        ptr = (ctypes.c_char * len(buf)).from_buffer(buf)
        iov = _Iovec(ctypes.addressof(ptr), nbytes)
        self.check(f"READ 16 at block {lba}", self.lib.iscsi_read16_iov_sync, self.lun,
                   lba, nbytes, self.geometry.block_size, 0, 0, 0, 0, 0,
                   ctypes.byref(iov), 1)

    def write_blocks(self, lba: int, buf: bytearray, nbytes: int) -> None:
        ptr = (ctypes.c_char * len(buf)).from_buffer(buf)
        self.check(f"WRITE 16 at block {lba}", self.lib.iscsi_write16_sync, self.lun, lba,
                   ptr, nbytes, self.geometry.block_size, 0, 0, 0, 0, 0)

    def write_same(self, lba: int, blocks: int, unmap: bool, zero_block: bytearray
                   ) -> tuple[int, int]:
        ptr = (ctypes.c_char * len(zero_block)).from_buffer(zero_block)
        return self.run(f"WRITE SAME 16 at block {lba}", self.lib.iscsi_writesame16_sync,
                        self.lun, lba, ptr, len(zero_block), blocks, 0, int(unmap), 0, 0)


class _Io(_Probe):
    def __init__(self) -> None:
        super().__init__()
        vp, ci, u64, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32
        for fn, res, args in (
            ("iscsi_read16_iov_sync", vp, [vp, ci, u64, u32, ci, ci, ci, ci, ci, ci, vp, ci]),
            ("iscsi_write16_sync", vp, [vp, ci, u64, vp, u32, ci, ci, ci, ci, ci, ci]),
            ("iscsi_writesame16_sync", vp, [vp, ci, u64, vp, u32, u32, ci, ci, ci, ci]),
            ("iscsi_synchronizecache16_sync", vp, [vp, ci, u64, u32, ci, ci]),
            ("scsi_task_get_status", ci, [vp, vp]),
        ):
            f = getattr(self.lib, fn)
            f.restype, f.argtypes = res, args


# -- the three modes ------------------------------------------------------------------------
def wipe(lun: Lun) -> dict:
    g = lun.geometry
    blocks = g.size // g.block_size
    report = Reporter(g.size)
    zero_block = bytearray(g.block_size)
    step = WRITE_SAME_BYTES // g.block_size
    if g.max_write_same:
        step = min(step, g.max_write_same)
    methods = (["write-same-unmap"] if g.zeroes_when_unmapped else []) + ["write-same"]
    lba = 0
    while lba < blocks and methods:
        n = min(step, blocks - lba)
        status, key = lun.write_same(lba, n, methods[0] == "write-same-unmap", zero_block)
        if status == SCSI_STATUS_GOOD:
            lba += n
            report(lba * g.block_size)
            continue
        if status == SCSI_STATUS_CHECK_CONDITION and key == SENSE_ILLEGAL_REQUEST:
            methods.pop(0)              # not supported (at this size): the next way
            continue
        raise IoError(f"WRITE SAME 16 at block {lba} failed: {lun.io._error(lun.ctx)}")
    method = methods[0] if methods else "write16"
    if lba < blocks:                    # no WRITE SAME: write zeroed chunks
        buf = bytearray(g.max_blocks * g.block_size)
        while lba < blocks:
            n = min(g.max_blocks, blocks - lba)
            lun.write_blocks(lba, buf, n * g.block_size)
            lba += n
            report(lba * g.block_size)
    sync_cache(lun)
    report(g.size, force=True)
    return {"ok": True, "bytes": g.size, "method": method}


def wipe_random(lun: Lun) -> dict:
    g = lun.geometry
    blocks = g.size // g.block_size
    report = Reporter(g.size)
    lba = 0
    while lba < blocks:
        n = min(g.max_blocks, blocks - lba)
        lun.write_blocks(lba, bytearray(os.urandom(n * g.block_size)), n * g.block_size)
        lba += n
        report(lba * g.block_size)
    sync_cache(lun)
    report(g.size, force=True)
    return {"ok": True, "bytes": g.size, "method": "random"}


def sync_cache(lun: Lun) -> None:
    status, key = lun.run("SYNCHRONIZE CACHE 16", lun.lib.iscsi_synchronizecache16_sync,
                          lun.lun, 0, 0, 0, 0)
    if status != SCSI_STATUS_GOOD and key != SENSE_ILLEGAL_REQUEST:
        raise IoError(f"SYNCHRONIZE CACHE 16 failed: {lun.io._error(lun.ctx)}")


def read(lun: Lun, fd: int, offset: int, length: int) -> dict:
    g = lun.geometry
    count = check_range(g.size, offset, length)
    report = Reporter(count)
    sink = SparseSink(fd) if sparse_capable(fd) else None
    chunk = g.max_blocks * g.block_size
    buf = bytearray(chunk + g.block_size)     # room for an unaligned start
    view = memoryview(buf)
    done = 0
    while done < count:
        pos = offset + done
        lba, skip = divmod(pos, g.block_size)
        want = min(count - done, chunk - skip)
        nblocks = -(-(skip + want) // g.block_size)
        lun.read_blocks(lba, buf, nblocks * g.block_size)
        if sink is not None:
            sink.write(buf, skip, skip + want)
        else:
            write_fd(fd, view[skip: skip + want])
        done += want
        report(done)
    if sink is not None:
        sink.finish()
    report(count, force=True)
    return {"ok": True, "bytes": count, "sparse": sink is not None}


def write(lun: Lun, fd: int, offset: int, length: int) -> dict:
    g = lun.geometry
    st = os.fstat(fd)
    if length == 0 and stat.S_ISREG(st.st_mode):
        try:       # a regular file says how much is coming: refuse before writing
            length = max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))
        except OSError:
            length = 0
        if length == 0:
            return {"ok": True, "bytes": 0}
    limit = check_range(g.size, offset, length)
    report = Reporter(limit if length else 0)
    bs, chunk = g.block_size, g.max_blocks * g.block_size
    buf = bytearray(chunk)
    edge = bytearray(bs)
    done = 0
    while done < limit:
        pos = offset + done
        head = pos % bs
        want = min(limit - done, chunk - head)
        got = read_fd(fd, memoryview(buf)[:want])
        if got == 0:
            break
        write_bytes(lun, pos, buf, got, edge)
        done += got
        report(done)
        if got < want:
            break
    if length and done < length:
        raise IoError(f"the input ended after {done} of {length} bytes "
                      f"(those {done} bytes were written)")
    if not length and done == limit:
        probe = bytearray(1)
        if read_fd(fd, memoryview(probe)):
            raise IoError(f"the input is larger than the space from offset {offset} to the "
                          f"LUN's end ({limit} bytes); the data past it was not written",
                          EXIT_RANGE)
    sync_cache(lun)
    report(done, force=True)
    return {"ok": True, "bytes": done}


def write_bytes(lun: Lun, pos: int, buf: bytearray, n: int, edge: bytearray) -> None:
    """Write buf[:n] at byte ``pos``: whole blocks directly, a partial first or last
    block by read-modify-write (``edge`` is a one-block scratch buffer)."""
    bs = lun.geometry.block_size
    start = 0
    head = pos % bs
    if head:                                  # only the first chunk can start mid-block
        take = min(bs - head, n)
        lun.read_blocks(pos // bs, edge, bs)
        edge[head: head + take] = buf[:take]
        lun.write_blocks(pos // bs, edge, bs)
        start, pos = take, pos + take
    whole = (n - start) // bs * bs
    if whole:
        if start:
            data = bytearray(buf[start: start + whole])
            lun.write_blocks(pos // bs, data, whole)
        else:
            lun.write_blocks(pos // bs, buf, whole)
        start, pos = start + whole, pos + whole
    tail = n - start
    if tail:
        lun.read_blocks(pos // bs, edge, bs)
        edge[:tail] = buf[start:n]
        lun.write_blocks(pos // bs, edge, bs)


# -- entry point -----------------------------------------------------------------------------
MODES = ("wipe", "wipe-random", "read", "write")
USAGE = "usage: MODE PORTAL TARGET INITIATOR LUN OFFSET LENGTH FD USERNAME"


def _parse(argv: list[str]) -> tuple[str, str, str, str, int, int, int, int, str]:
    if len(argv) != 9 or argv[0] not in MODES:
        raise IoError(USAGE, EXIT_USAGE)
    mode, portal, target, initiator = argv[:4]
    try:
        lun, offset, length, fd = (int(x) for x in argv[4:8])
    except ValueError:
        raise IoError(USAGE, EXIT_USAGE) from None
    if mode in ("read", "write") and fd < 0:
        raise IoError(f"{mode} needs a file descriptor", EXIT_USAGE)
    username = "" if argv[8] == "-" else argv[8]
    return mode, portal, target, initiator, lun, offset, length, fd, username


def main(argv: list[str]) -> int:
    try:
        mode, portal, target, initiator, lun_no, offset, length, fd, username = _parse(argv)
        io = _Io()
    except IoError as e:
        emit({"error": str(e), "kind": "usage"})
        return e.status
    except (OSError, AttributeError) as e:
        emit({"error": f"libiscsi unavailable: {e}", "kind": "usage"})
        return EXIT_USAGE
    ctx, failure, status = login(io, portal, target, initiator, username,
                                 os.environ.get(PASSWORD_ENV, ""))
    if ctx is None:
        emit({**failure, "kind": "auth" if status == EXIT_AUTH else "login"})
        return status
    io.lib.iscsi_set_timeout(ctx, SCSI_TIMEOUT)
    try:
        lun = Lun(io, ctx, lun_no)
        if mode == "wipe":
            result = wipe(lun)
        elif mode == "wipe-random":
            result = wipe_random(lun)
        elif mode == "read":
            result = read(lun, fd, offset, length)
        else:
            result = write(lun, fd, offset, length)
        io.lib.iscsi_logout_sync(ctx)
        emit(result)
        return 0
    except IoError as e:
        emit({"error": str(e), "kind": "range" if e.status == EXIT_RANGE else "io"})
        return e.status
    except OSError as e:
        if e.errno == errno.EPIPE:
            emit({"error": "the reader of the caller's file descriptor went away",
                  "kind": "io"})
        else:
            emit({"error": f"the caller's file descriptor: {e.strerror or e}", "kind": "io"})
        return EXIT_FAILED
    finally:
        io.lib.iscsi_destroy_context(ctx)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
