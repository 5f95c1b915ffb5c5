"""A private, system-like D-Bus bus for one test (or the demo).

The configuration is Debian's ``/usr/share/dbus-1/system.conf`` with these changes:

- ``<listen>unix:path=DIR/system_bus_socket</listen>`` in a fresh temp dir (mode 0755, so
  that non-root test users can reach the socket);
- no ``<pidfile>``, no ``<syslog/>``, no service activation (``<standard_system_servicedirs/>``
  and ``<servicehelper>`` dropped: nothing is ever auto-started on this bus);
- ``<includedir>/usr/share/dbus-1/system.d</includedir>`` kept (it lets the real polkitd own
  ``org.freedesktop.PolicyKit1``), the ``/etc/dbus-1`` includes dropped (host-local policy
  must not leak into tests), and ``<includedir>DIR/system.d</includedir>`` added last, holding
  the project's ``dbus/org.example.Storage.conf`` plus any extra snippets a test passes in.

Non-root callers get the same config minus ``<user>`` (only root may switch to messagebus).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .procs import become_subreaper, kill_pid

REPO = Path(__file__).resolve().parents[2]
PROJECT_BUS_CONF = REPO / "dbus" / "org.example.Storage.conf"
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
SYSTEM_D = "/usr/share/dbus-1/system.d"

_LIVE: set[PrivateBus] = set()


@atexit.register
def _stop_all() -> None:  # last resort: a bus nobody stopped (runs after the daemons')
    for bus in list(_LIVE):
        bus.stop()


DOCTYPE = (
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
)


def busconfig_snippet(body: str) -> str:
    """Wrap policy XML (``<policy>...</policy>``) into a complete bus config file."""
    return f'<?xml version="1.0"?>\n{DOCTYPE}<busconfig>\n{body}\n</busconfig>\n'


def allow_own_snippet(name: str, user: str = "root") -> str:
    """A bus config letting ``user`` own ``name`` (e.g. root owning the polkit name)."""
    return busconfig_snippet(f'  <policy user="{user}">\n    <allow own="{name}"/>\n  </policy>')


def make_config(sockdir: Path, confdir: Path, *, as_root: bool) -> str:
    """The private bus's config text, derived from the system bus config (see module doc)."""
    root = ET.parse(SYSTEM_CONF).getroot()
    drop_tags = {"pidfile", "syslog", "standard_system_servicedirs", "servicehelper", "fork"}
    if not as_root:
        drop_tags.add("user")
    for child in list(root):
        tag, text = child.tag, (child.text or "").strip()
        if tag in drop_tags or tag == "listen":
            root.remove(child)
        elif tag in ("include", "includedir") and not text.startswith("/usr/share/dbus-1"):
            # relative includes (system.d, selinux contexts) and /etc/dbus-1/*: dropped
            root.remove(child)
    listen = ET.Element("listen")
    listen.text = f"unix:path={sockdir}/system_bus_socket"
    root.insert(1, listen)
    for path in (SYSTEM_D, str(confdir)):
        inc = ET.SubElement(root, "includedir")
        inc.text = path
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


class PrivateBus:
    """A ``dbus-daemon`` with a system-bus policy on a socket in a temp dir.

    ``extra_confs`` maps file names (``*.conf``) to bus config texts copied next to the
    project's conf, e.g. ``{"mock-polkit.conf": allow_own_snippet("org.freedesktop.PolicyKit1")}``.
    """

    def __init__(
        self,
        extra_confs: Mapping[str, str] | None = None,
        *,
        project_conf: Path | None = PROJECT_BUS_CONF,
    ) -> None:
        self.extra_confs = dict(extra_confs or {})
        self.project_conf = project_conf
        self.dir: Path | None = None
        self.address: str = ""
        self.pid: int | None = None
        self.config_file: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> PrivateBus:
        """Write the config, start the daemon, parse its address and PID."""
        if self.pid is not None:
            raise RuntimeError("bus already started")
        become_subreaper()
        # Always below /tmp, whatever TMPDIR says: a Unix socket path has at most 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="estest-bus-", dir="/tmp"))
        try:
            self.dir.chmod(0o755)
            confdir = self.dir / "system.d"
            confdir.mkdir(mode=0o755)
            confdir.chmod(0o755)
            if self.project_conf is not None:
                shutil.copy(self.project_conf, confdir / self.project_conf.name)
            for name, text in self.extra_confs.items():
                (confdir / name).write_text(text)
            self.config_file = self.dir / "bus.conf"
            self.config_file.write_text(
                make_config(self.dir, confdir, as_root=os.geteuid() == 0)
            )
            for f in confdir.iterdir():
                f.chmod(0o644)
            self.config_file.chmod(0o644)
            proc = subprocess.Popen(
                [
                    "dbus-daemon",
                    f"--config-file={self.config_file}",
                    "--fork",
                    "--print-address=1",
                    "--print-pid=1",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None and proc.stderr is not None
            # With --fork the daemon keeps no copy of our pipe, but read line by line anyway:
            # exactly two lines come (address, then pid).
            address = proc.stdout.readline().strip()
            pid_line = proc.stdout.readline().strip()
            rc = proc.wait(30)
            err = proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
            if rc != 0 or not address or not pid_line.isdigit():
                raise RuntimeError(
                    f"dbus-daemon failed (rc={rc}): stdout={address!r} {pid_line!r} stderr={err}"
                )
            self.address = address
            self.pid = int(pid_line)
            _LIVE.add(self)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the daemon by PID, wait until it is gone, remove the temp dir. Idempotent."""
        if self.pid is not None:
            kill_pid(self.pid, "dbus-daemon")
            self.pid = None
        _LIVE.discard(self)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        assert self.dir is not None, "bus not started"
        return self.dir / "system_bus_socket"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) pointing the system bus at this bus."""
        env = dict(os.environ if base is None else base)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        env.pop("DBUS_STARTER_ADDRESS", None)
        env.pop("DBUS_STARTER_BUS_TYPE", None)
        return env

    def __repr__(self) -> str:
        return f"PrivateBus(address={self.address!r}, pid={self.pid})"


def wait_for_name(address: str, name: str, timeout: float, alive: Sequence[object] = ()) -> bool:
    """Poll ``NameHasOwner(name)`` on ``address`` until true; False on timeout.

    ``alive`` may hold ``Popen`` objects: polling stops early (False) when one has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(
            [
                "busctl",
                f"--address={address}",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if res.returncode == 0 and res.stdout.strip() == "b true":
            return True
        if any(getattr(p, "poll", lambda: None)() is not None for p in alive):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
