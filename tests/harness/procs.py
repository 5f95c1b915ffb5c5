"""Process helpers: stop exactly the processes the harness started, by PID.

Nothing here looks processes up by name: every function takes a PID that the harness got
from its own ``Popen`` or from ``dbus-daemon --print-pid``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_SUBREAPER = False


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has already exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself hold spaces or ')'.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``).

    ``dbus-daemon --fork`` orphans its daemon process. On this machine PID 1 does not reap
    orphans, so without this every stopped bus would stay behind as a zombie. As subreaper
    we inherit it and ``reap`` it after stopping it. Idempotent; a no-op where unsupported.
    """
    global _SUBREAPER
    if _SUBREAPER:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            _SUBREAPER = True


def reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our (adopted) child and has exited."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone (or a zombie); True if it went within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def kill_pid(pid: int, expect_in_cmdline: str, timeout: float = 10.0) -> None:
    """Stop a process that is *not* our child (e.g. a forked dbus-daemon) by its PID.

    ``expect_in_cmdline`` must occur in the process's argv (guards against a recycled PID).
    SIGTERM first, SIGKILL after ``timeout`` seconds; returns once the process is gone.
    """
    if not pid_alive(pid) or not any(expect_in_cmdline in arg for arg in cmdline(pid)):
        reap(pid)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, wait):
            reap(pid)
            return
    raise RuntimeError(f"process {pid} ({expect_in_cmdline}) survived SIGKILL")


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop our own child: SIGTERM, then SIGKILL after ``timeout`` s; returns its exit code.

    When the child was started in its own session (``start_new_session=True``) whatever is
    left of its process group afterwards is killed too, so no grandchild survives.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    kill_group(proc.pid)
    assert proc.returncode is not None
    return proc.returncode


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of the process group ``pgid`` (one we created); no-op if empty."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ArgvSampler:
    """Reads every other process's /proc/PID/cmdline (as any local user could) in a thread
    while a test works: ``hits`` keeps each argv that holds one of ``needles`` (a secret
    that must never be there); ``seen`` counts the argvs ``watched(raw)`` picks out (the
    process the test expects to have caught running, to show the sampler looked while it
    ran); ``samples`` counts the passes over /proc."""

    def __init__(self, *needles: bytes, watched: Callable[[bytes], bool]) -> None:
        self.needles = needles
        self.watched = watched
        self.hits: list[bytes] = []
        self.seen = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if any(needle in raw for needle in self.needles):
                    self.hits.append(raw)
                if self.watched(raw):
                    self.seen += 1
            self.samples += 1

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
