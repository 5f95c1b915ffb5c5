"""Zeroing a LUN and moving its bytes to or from a caller's file descriptor, through the
libiscsi child process system/iscsi_io.py.

The child gets the caller's descriptor through ``pass_fds`` (the data never passes
through the daemon), the CHAP secret through its environment only (never argv, which
``/proc/*/cmdline`` shows to everyone), and reports progress as JSON lines that are
handed to ``progress(done, total)``. It runs in its own session: when the awaiting task
is cancelled, or the child stays silent longer than ``idle_timeout`` (a dead target, a
caller that stopped reading), its whole process group is killed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthFailed, Failed, InvalidArgument, TimedOut
from .iscsi import DEFAULT_INITIATOR, Credentials, _env, validate_iqn

IDLE_TIMEOUT = 120.0         # seconds without a word from the child: it is stuck
_MAX_LINE = 64 * 1024
_MAX_STDERR = 64 * 1024
_REAP = 5.0

ProgressFn = Callable[[int, int], None]


@dataclass
class LunAddress:
    portal: str              # host:port
    target: str              # the target's IQN
    lun: int
    creds: Credentials | None = None
    initiator: str = DEFAULT_INITIATOR


def _ignore(done: int, total: int) -> None:
    return None


def io_argv(mode: str, where: LunAddress, *, fd: int = -1, offset: int = 0,
            length: int = 0) -> list[str]:
    """The child's command line: no secret in it, only the CHAP user name."""
    return [
        sys.executable, "-m", "example_storage.system.iscsi_io", mode, where.portal,
        validate_iqn(where.target), validate_iqn(where.initiator, "initiator"),
        str(int(where.lun)), str(int(offset)), str(int(length)), str(int(fd)),
        where.creds.username if where.creds else "-",
    ]


def parse_message(line: bytes) -> dict | None:
    """One JSON line of the child; None for anything else (a stray library message)."""
    try:
        msg = json.loads(line.decode("utf-8", "replace"))
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def failure(status: int, final: dict, stderr: str, what: str) -> Exception:
    """The StorageError for a child that exited with ``status``."""
    detail = str(final.get("error") or stderr.strip()[-500:] or f"exit status {status}")
    if status == 2:
        return AuthFailed(f"{what}: login refused: {detail} (check the CHAP user name "
                          "and secret)")
    if status == 5:
        return InvalidArgument(f"{what}: {detail}")
    return Failed(f"{what}: {detail}")


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _drain(stream: asyncio.StreamReader, limit: int) -> str:
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return kept.decode("utf-8", "replace")


async def run_io(mode: str, where: LunAddress, *, fd: int = -1, offset: int = 0,
                 length: int = 0, progress: ProgressFn | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> dict:
    """Run the child in ``mode`` (wipe, wipe-random, read or write) and return its final
    report. Raises AuthFailed, InvalidArgument (a range outside the LUN), TimedOut or
    Failed; cancelled, it kills the child before re-raising."""
    if not 0 <= fd <= 2:
        return await _run_io(mode, where, fd, offset, length, progress, idle_timeout)
    # 0..2 would clash with the child's own stdio: hand it a copy numbered 3 or more
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        return await _run_io(mode, where, copy, offset, length, progress, idle_timeout)
    finally:
        os.close(copy)


async def _run_io(mode: str, where: LunAddress, fd: int, offset: int, length: int,
                  progress: ProgressFn | None, idle_timeout: float) -> dict:
    report = progress or _ignore
    what = f"LUN {where.lun} of {where.target}"
    env = dict(os.environ)
    env.update(_env(where.creds) or {})
    env["LC_ALL"] = "C"
    try:
        proc = await asyncio.create_subprocess_exec(
            *io_argv(mode, where, fd=fd, offset=offset, length=length),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            pass_fds=(fd,) if fd >= 0 else (), limit=_MAX_LINE,
        )
    except OSError as e:
        raise Failed(f"{what}: cannot start the iSCSI I/O process: {e.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(_drain(proc.stderr, _MAX_STDERR))
    final: dict = {}
    try:
        while True:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), idle_timeout)
            except ValueError:          # an absurdly long line: not ours
                raise Failed(f"{what}: unexpected output from the iSCSI I/O process"
                             ) from None
            if not line:
                break
            msg = parse_message(line)
            if msg is None:
                continue
            if "progress" in msg:
                with contextlib.suppress(TypeError, ValueError):
                    done, total = (int(x) for x in msg["progress"])
                    report(done, total)
            else:
                final = msg
        status = await asyncio.wait_for(proc.wait(), idle_timeout)
        stderr = await asyncio.wait_for(errors, _REAP)
    except TimeoutError:
        _kill(proc)
        await _reap(proc, errors)
        raise TimedOut(f"{what}: no progress for {idle_timeout:g}s; stopped") from None
    except BaseException:
        _kill(proc)                     # cancelled (or failed): leave nothing running
        await _reap(proc, errors)
        raise
    if status != 0 or not final.get("ok"):
        raise failure(status, final, stderr, what)
    return final


async def _reap(proc: asyncio.subprocess.Process, errors: asyncio.Future) -> None:
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(proc.wait(), _REAP)
    if not errors.done():
        errors.cancel()
    with contextlib.suppress(BaseException):
        await errors


async def wipe_lun(where: LunAddress, progress: ProgressFn | None = None,
                   random: bool = False) -> str:
    """Zero the whole LUN (``random``: write random bytes over it); returns how
    ('write-same-unmap', 'write-same', 'write16' or 'random')."""
    mode = "wipe-random" if random else "wipe"
    return str((await run_io(mode, where, progress=progress)).get("method", ""))


async def read_lun(where: LunAddress, fd: int, offset: int = 0, length: int = 0,
                   progress: ProgressFn | None = None) -> int:
    """Copy the LUN's bytes [offset, offset+length) (0: to the end) into ``fd``, holes
    kept where ``fd`` is a regular file; returns the byte count."""
    return int((await run_io("read", where, fd=fd, offset=offset, length=length,
                             progress=progress))["bytes"])


async def write_lun(where: LunAddress, fd: int, offset: int = 0, length: int = 0,
                    progress: ProgressFn | None = None) -> int:
    """Write ``length`` bytes (0: until ``fd`` ends) read from ``fd`` into the LUN at
    ``offset``; returns the byte count."""
    return int((await run_io("write", where, fd=fd, offset=offset, length=length,
                             progress=progress))["bytes"])
