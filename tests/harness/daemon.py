"""The org.example.Storage daemon under test, on a private bus, in a private state dir.

``python -m example_storage.daemon --bus ADDRESS --config-dir WORKDIR/config
--run-dir WORKDIR/run --debug``, stdout and stderr appended to ``WORKDIR/daemon.log``.
Ready when it owns ``org.example.Storage``. Stopped by PID; whatever is left of its process
group is killed, and an ``atexit`` hook stops any daemon a test forgot.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .bus import PrivateBus, wait_for_name
from .procs import kill_group, stop_child

STORAGE_NAME = "org.example.Storage"
DEFAULT_MODULE = "example_storage.daemon"

_LIVE: set[StorageDaemon] = set()


@atexit.register
def _stop_all() -> None:  # last resort: a test that forgot to stop its daemon
    for d in list(_LIVE):
        d.kill9()


class StorageDaemon:
    """One daemon process; ``start()``/``stop()``/``kill9()``/``restart()`` keep the dirs,
    so a restart sees the state the previous run left."""

    def __init__(
        self,
        bus: PrivateBus,
        workdir: str | os.PathLike[str],
        *,
        module: str = DEFAULT_MODULE,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.bus = bus
        self.workdir = Path(workdir)
        self.config_dir = self.workdir / "config"
        self.run_dir = self.workdir / "run"
        self.log_path = self.workdir / "daemon.log"
        self.module = module
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.python = python
        #: argv prefix, e.g. ("umockdev-wrapper",) to run the daemon under a preload
        self.wrapper = list(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None
        #: exit code of the last run that ended (kept across restart(); None before any)
        self.returncode: int | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        return [
            *self.wrapper, self.python, "-m", self.module,
            "--bus", self.bus.address,
            "--config-dir", str(self.config_dir),
            "--run-dir", str(self.run_dir),
            "--debug",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float | None = None) -> StorageDaemon:
        """Start the daemon and wait until it owns org.example.Storage.

        Raises ``RuntimeError`` with the log's tail when it exits first or is not ready in
        ``timeout`` seconds (it is killed then; default 15 s, 90 s inside the VM lane,
        where Python under qemu TCG runs some 30 times slower).
        """
        if timeout is None:
            timeout = 90 if os.environ.get("EXAMPLE_STORAGE_IN_VM") else 15
        if self.running:
            raise RuntimeError("daemon already running")
        for d in (self.workdir, self.config_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        env = self.bus.env()
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"=== harness: start #{self.starts}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        _LIVE.add(self)
        if not wait_for_name(self.bus.address, STORAGE_NAME, timeout, alive=[self.proc]):
            rc = self.proc.poll()
            self.kill9()
            why = f"exited with {rc}" if rc is not None else f"not ready within {timeout}s"
            raise RuntimeError(
                f"storage daemon {why}; last lines of {self.log_path}:\n{self.log_tail()}"
            )
        return self

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns (and keeps in
        ``returncode``) the exit code: 0 is a clean shutdown, -9 means it had to be killed.
        Idempotent."""
        if self.proc is None:
            return self.returncode
        self.returncode = stop_child(self.proc, timeout)
        self._done()
        return self.returncode

    def kill9(self) -> int | None:
        """SIGKILL the daemon (and its process group) at once: a crash."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.returncode = self.proc.wait(10)
        kill_group(self.proc.pid)
        self._done()
        return self.returncode

    def _done(self) -> None:
        self.proc = None
        _LIVE.discard(self)
        # the bus drops the name once the connection is gone; wait so that the next start
        # (or an assertion on NameHasOwner) does not see the old owner.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and wait_for_name(self.bus.address, STORAGE_NAME, 0):
            time.sleep(0.05)

    def restart(self, timeout: float = 15) -> StorageDaemon:
        """stop() then start() with the same dirs."""
        self.stop()
        return self.start(timeout)

    def log(self) -> str:
        """Everything the daemon printed (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> StorageDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"StorageDaemon(pid={self.pid}, workdir={str(self.workdir)!r})"
