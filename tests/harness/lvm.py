"""A private LVM configuration for tests: LVM sees only the test's own loop devices.

``PrivateLvm(workdir)`` writes ``workdir/lvm.conf`` whose device filter accepts exactly
the devices given to ``allow()`` (by exact path, nothing else), with udev, the devices
file, hints, lvmpolld, D-Bus notification and dmeventd monitoring off, and locking,
backup and archive dirs inside ``workdir``. On a kernel without device-mapper it also
sets ``global { activation = 0 }`` (metadata only). Point LVM at it with ``env()``
(``LVM_SYSTEM_DIR``) or the daemon's ``--lvm-system-dir``.

``cleanup()`` deactivates and removes every VG and PV *this configuration sees*, which by
construction are on the test's own devices only. The host's ``/etc/lvm`` and
``/run/lvm`` are never used.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

_SAFE_PATH = re.compile(r"/dev/[A-Za-z0-9/_.+-]+")


def kernel_has_device_mapper() -> bool:
    if os.path.exists("/sys/class/misc/device-mapper"):
        return True
    try:
        return any(line.split()[-1:] == ["device-mapper"]
                   for line in Path("/proc/misc").read_text().splitlines())
    except OSError:
        return False


def lvm_installed() -> bool:
    return any(os.access(os.path.join(d, "lvm"), os.X_OK)
               for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"))


class PrivateLvm:
    def __init__(self, workdir: str | os.PathLike[str], devices: Iterable[str] = (), *,
                 activation: bool | None = None) -> None:
        self.dir = Path(workdir)
        self.activation = kernel_has_device_mapper() if activation is None else activation
        self.devices: list[str] = []
        for sub in ("lock", "backup", "archive"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.allow(*devices)

    @property
    def system_dir(self) -> str:
        return str(self.dir)

    def allow(self, *devices: str) -> None:
        """Let LVM see these devices too (exact paths) and rewrite lvm.conf."""
        for dev in devices:
            if not _SAFE_PATH.fullmatch(dev):
                raise ValueError(f"unexpected device path {dev!r}")
            if dev not in self.devices:
                self.devices.append(dev)
        self.write()

    def forget(self, *devices: str) -> None:
        """Stop LVM from seeing these devices (before they are detached: a loop device
        path may soon name someone else's device)."""
        self.devices = [d for d in self.devices if d not in devices]
        self.write()

    def config_text(self) -> str:
        accept = ", ".join(f'"a|^{re.escape(d)}$|"' for d in self.devices)
        filt = f"[ {accept + ', ' if accept else ''}\"r|.*|\" ]"
        return f"""\
# Written by tests/harness/lvm.py: only this test's devices are visible.
devices {{
    filter = {filt}
    global_filter = {filt}
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
    hints = "none"
    scan_lvs = 0
}}
global {{
    activation = {1 if self.activation else 0}
    locking_dir = "{self.dir / 'lock'}"
    event_activation = 0
    use_lvmpolld = 0
    notify_dbus = 0
    system_id_source = "none"
}}
activation {{
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}}
backup {{
    backup = 1
    backup_dir = "{self.dir / 'backup'}"
    archive = 1
    archive_dir = "{self.dir / 'archive'}"
}}
"""

    def write(self) -> None:
        tmp = self.dir / "lvm.conf.tmp"
        tmp.write_text(self.config_text())
        os.replace(tmp, self.dir / "lvm.conf")

    def env(self) -> dict[str, str]:
        return {"LVM_SYSTEM_DIR": str(self.dir), "LVM_SUPPRESS_FD_WARNINGS": "1"}

    def run(self, *argv: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """Run an LVM command with this configuration."""
        env = dict(os.environ)
        env.update(self.env())
        env["LC_ALL"] = "C"
        res = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr}")
        return res

    def report(self, tool: str, fields: str, *args: str) -> list[dict[str, str]]:
        """Rows of ``tool --reportformat json --units b --nosuffix -o fields args``."""
        import json

        res = self.run(tool, "--reportformat", "json", "--units", "b", "--nosuffix",
                       "-o", fields, *args)
        kind = {"pvs": "pv", "vgs": "vg", "lvs": "lv"}[tool]
        return [row for rep in json.loads(res.stdout)["report"] for row in rep.get(kind, [])]

    def cleanup(self) -> None:
        """Remove every VG and PV this configuration sees (only the test's devices)."""
        if not self.devices or not lvm_installed():
            return
        vgs = {row["vg_name"] for row in self.report("pvs", "vg_name") if row["vg_name"]}
        for vg in sorted(vgs):
            if self.activation:
                self.run("vgchange", "-an", vg, check=False)
            self.run("vgremove", "-ff", "-y", vg, check=False)
        for row in self.report("pvs", "pv_name"):
            if row["pv_name"] in self.devices:
                self.run("pvremove", "-ff", "-y", row["pv_name"], check=False)

    def __enter__(self) -> PrivateLvm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
