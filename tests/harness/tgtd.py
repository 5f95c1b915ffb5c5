"""A private tgtd (userspace iSCSI target) on 127.0.0.1 (LAB.md "iSCSI, fully in userspace").

``Tgtd(workdir).start()`` runs ``tgtd -f --iscsi portal=127.0.0.1:PORT`` on a free port with
its own IPC socket (``TGT_IPC_SOCKET``), so several run side by side and the host's tgt
(if any) is never touched. ``add_target``, ``add_lun``/``remove_lun`` and ``add_chap``
drive it with ``tgtadm``. ``stop()`` follows LAB.md (tgtd ignores SIGTERM): state offline,
targets deleted with --force, ``--op delete --mode system``, then SIGKILL of exactly the
PID this harness started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tgt_missing() -> str | None:
    for tool in ("tgtd", "tgtadm", "iscsi-ls"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tgt, libiscsi-bin; run scripts/bootstrap)"
    return None


class Tgtd:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket = self.workdir / "tgtd.sock"
        self.log = self.workdir / "tgtd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tids: dict[str, int] = {}

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "TGT_IPC_SOCKET": str(self.socket)}

    def start(self) -> Tgtd:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["tgtd", "-f", "--iscsi", f"portal={self.portal}"],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tgtd exited: {self.log.read_text()[-2000:]}")
            if self._listening() and self.adm("--op", "show", "--mode", "sys",
                                              check=False).returncode == 0:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("tgtd did not come up within 10 s")

    def _listening(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["tgtadm", "--lld", "iscsi", *args], env=self._env(),
                             capture_output=True, text=True, timeout=30, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)} failed: {res.stderr.strip()}")
        return res

    # -- configuration ----------------------------------------------------------
    def add_target(self, iqn: str) -> int:
        tid = len(self.tids) + 1
        self.adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        self.adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        self.tids[iqn] = tid
        return tid

    def add_lun(self, iqn: str, lun: int, backing: Path, size: int,
                serial: str | None = None) -> None:
        with open(backing, "wb") as f:
            f.truncate(size)
        tid = str(self.tids[iqn])
        self.adm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(lun),
                 "-b", str(backing))
        if serial:
            self.adm("--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun", str(lun),
                     "--params", f"scsi_sn={serial}")

    def remove_lun(self, iqn: str, lun: int, timeout: float = 20) -> None:
        """Delete a LUN. tgtd refuses while the LU has commands in flight ("still
        active": an initiator's rescan or TEST UNIT READY), so that is retried."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.adm("--op", "delete", "--mode", "logicalunit", "--tid",
                         str(self.tids[iqn]), "--lun", str(lun))
                return
            except RuntimeError as exc:
                if "still active" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def add_chap(self, iqn: str, user: str, password: str) -> None:
        """Require CHAP for logins to ``iqn``. The password is passed to tgtadm's argv:
        test-only, and the tests look for the password in other processes' cmdlines
        only while the daemon is working, after this has returned."""
        self.adm("--op", "new", "--mode", "account", "--user", user, "--password", password)
        self.adm("--op", "bind", "--mode", "account", "--tid", str(self.tids[iqn]),
                 "--user", user)

    # -- teardown -------------------------------------------------------------------
    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                self.adm("--op", "update", "--mode", "sys", "--name", "State", "-v", "offline",
                         check=False)
                for tid in self.tids.values():
                    self.adm("--op", "delete", "--mode", "target", "--tid", str(tid),
                             "--force", check=False)
                self.adm("--op", "delete", "--mode", "system", check=False)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for leftover in self.workdir.glob("tgtd.sock*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
