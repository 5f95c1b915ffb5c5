"""A private nfs-ganesha NFSv4 server on 127.0.0.1 exporting one temp directory (LAB.md "NFS").

``Ganesha(workdir).start()`` writes a config (VFS FSAL, NFSv4 only, no NLM/RQUOTA/UDP,
graceless, its own recovery dir), picks a free TCP port (``NFS_Port``) and runs
``ganesha.nfsd -F`` in the foreground; ``stop()`` kills exactly that PID. ``export_dir`` is the
exported local directory, ``pseudo`` its NFSv4 pseudo path, ``port`` the server's port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

GANESHA = "/usr/bin/ganesha.nfsd"
FSAL_VFS = "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so"


class GaneshaUnavailable(Exception):
    """nfs-ganesha is not installed (run scripts/bootstrap)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ganesha_missing() -> str | None:
    if not os.path.exists(GANESHA):
        return "ganesha.nfsd is not installed (nfs-ganesha; run scripts/bootstrap)"
    if not os.path.exists(FSAL_VFS):
        return "ganesha's VFS FSAL is not installed (nfs-ganesha-vfs; run scripts/bootstrap)"
    return None


class Ganesha:
    def __init__(self, workdir: Path, *, pseudo: str = "/export", port: int | None = None,
                 bind: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.export_dir = self.workdir / "export"
        self.pseudo = pseudo
        self.port = port or free_port(bind)
        self.bind = bind
        self.conf = self.workdir / "ganesha.conf"
        self.log = self.workdir / "ganesha.log"
        self.pidfile = self.workdir / "ganesha.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        recovery = self.workdir / "recovery"
        return f"""
NFS_CORE_PARAM {{
    Bind_addr = {self.bind};
    NFS_Port = {self.port};
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    Only_Numeric_Owners = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
}}
EXPORT {{
    Export_Id = 77;
    Path = "{self.export_dir}";
    Pseudo = "{self.pseudo}";
    Protocols = 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
"""

    def start(self, timeout: float = 20) -> Ganesha:
        missing = ganesha_missing()
        if missing:
            raise GaneshaUnavailable(missing)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "recovery").mkdir(exist_ok=True)
        self.conf.write_text(self.config_text())
        self.proc = subprocess.Popen(
            [GANESHA, "-F", "-f", str(self.conf), "-L", str(self.log), "-p", str(self.pidfile),
             "-N", "NIV_EVENT"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ganesha.nfsd exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection((self.bind, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ganesha.nfsd did not listen on {self.port}:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def pause(self) -> None:
        """Stop answering (SIGSTOP): a hung server."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir / "recovery", ignore_errors=True)

    def __enter__(self) -> Ganesha:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
