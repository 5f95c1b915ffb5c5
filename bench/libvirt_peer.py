"""libvirtd + libvirt-dbus as the peer of the bench, installed and run without touching the host.

Install (``ensure_installed``), only what is missing:

- ``libvirt-daemon`` and ``libvirt-glib-1.0-0`` with ``apt-get install --no-install-recommends
  --no-upgrade``. These packages (and what they pull in: libvirt0, the qemu driver, libyajl2)
  have no maintainer scripts and ship nothing in /etc, /run or /var: nothing is started,
  enabled or configured on the host.
- ``libvirt-dbus`` is *not* installed with apt: its package depends on
  ``libvirt-daemon-system``, whose postinst enables libvirtd's systemd units, creates users
  and writes /etc/libvirt. Instead its .deb is fetched with ``apt-get download`` and unpacked
  (``dpkg-deb -x``) into ``/var/cache/example-storage-bench/``; it runs from there with
  ``VIRT_DBUS_INTERFACES_DIR`` pointing at its interface files. A system-installed
  libvirt-dbus is used as it is.

Run (``Libvirtd``): ``unshare -m --propagation private``, other processes' loop-device and NFS
mounts detached from that namespace (their copies would keep the devices busy); then, inside
that mount namespace only, /etc and /var are overlaid (upper dirs in the bench's temp dir, so
nothing is written to the host's), and fresh temp dirs are bind-mounted on /etc/libvirt,
/var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /run (the host's /etc/libvirt and
/run/libvirt are never seen nor written). ``LIBVIRT_DRIVER_DIR`` holds only the drivers asked
for (storage, plus qemu for libvirt-dbus, which only opens hypervisor URIs). Authentication on
the unix socket is off (the socket is mode 0700, root only). ``LibvirtDbus`` runs ``libvirt-dbus
--system`` inside that namespace (``nsenter -t PID -m``) on the bench's private bus.

Processes are started by this module and stopped by their PID; ``cleanup()`` always runs.
``VirConnect`` is a tiny ctypes client of libvirt0 (for setup and the start-up probe).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness.bus import busconfig_snippet

ARCH_LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
DRIVERS = ARCH_LIBDIR / "libvirt" / "connection-driver"
LIBVIRTD = Path("/usr/sbin/libvirtd")
CACHE = Path("/var/cache/example-storage-bench")
APT_PACKAGES = ("libvirt-daemon", "libvirt-glib-1.0-0")
DBUS_NAME = "org.libvirt"

#: bus config for the private bus: root owns org.libvirt, anyone may call it
BUS_CONF = busconfig_snippet(
    '  <policy user="root">\n    <allow own="org.libvirt"/>\n  </policy>\n'
    '  <policy context="default">\n    <allow send_destination="org.libvirt"/>\n  </policy>'
)


class PeerUnavailable(RuntimeError):
    """libvirt cannot be installed or run here (the message says why)."""


def _run(argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def _installed(package: str) -> bool:
    res = _run(["dpkg-query", "-W", "-f=${db:Status-Status}", package])
    return res.returncode == 0 and res.stdout.strip() == "installed"


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class Install:
    libvirtd: Path
    libvirt_dbus: Path
    interfaces_dir: Path
    notes: tuple[str, ...]


def _apt_install(packages: list[str], log: list[str]) -> None:
    """apt-get install the missing ``packages`` under a policy-rc.d that forbids starting
    anything (only if the machine has none; removed afterwards)."""
    own_policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not own_policy.exists():
        own_policy.write_text("#!/bin/sh\nexit 101\n")
        own_policy.chmod(0o755)
        created = True
    try:
        argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "--no-upgrade",
                *packages]
        res = _run(argv, env=_apt_env())
        if res.returncode != 0:
            _run(["apt-get", "update", "-q"], env=_apt_env())
            res = _run(argv, env=_apt_env())
        if res.returncode != 0:
            raise PeerUnavailable(f"{' '.join(argv)} failed: {res.stderr.strip()[-500:]}")
        log.append(f"installed with apt-get: {' '.join(packages)}")
    finally:
        if created:
            own_policy.unlink(missing_ok=True)


def _unpacked_libvirt_dbus(log: list[str]) -> Path:
    """libvirt-dbus unpacked from its Debian package into CACHE (fetched once)."""
    res = _run(["apt-cache", "policy", "libvirt-dbus"])
    version = ""
    for line in res.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
    if not version or version == "(none)":
        _run(["apt-get", "update", "-q"], env=_apt_env())
        res = _run(["apt-cache", "policy", "libvirt-dbus"])
        for line in res.stdout.splitlines():
            if line.strip().startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
    if not version or version == "(none)":
        raise PeerUnavailable("apt knows no libvirt-dbus package")
    root = CACHE / f"libvirt-dbus_{version.replace(':', '%')}"
    binary = root / "usr" / "sbin" / "libvirt-dbus"
    if binary.is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # apt's sandbox user cannot write a root-only temp dir: let it
        os.chmod(tmp, 0o777)
        res = _run(["apt-get", "download", f"libvirt-dbus={version}"], cwd=tmp, env=_apt_env())
        debs = list(Path(tmp).glob("libvirt-dbus_*.deb"))
        if res.returncode != 0 or not debs:
            raise PeerUnavailable(f"apt-get download libvirt-dbus failed: {res.stderr.strip()}")
        staging = Path(tmp) / "root"
        res = _run(["dpkg-deb", "-x", str(debs[0]), str(staging)])
        if res.returncode != 0:
            raise PeerUnavailable(f"dpkg-deb -x failed: {res.stderr.strip()}")
        staging.rename(root)
    log.append(f"libvirt-dbus {version} unpacked (not installed) into {root}")
    return root


def ensure_installed() -> Install:
    """What the peer needs, installing only what is missing (see the module doc)."""
    notes: list[str] = []
    missing = [p for p in APT_PACKAGES if not _installed(p)]
    if missing:
        _apt_install(missing, notes)
    for so in ("libvirt_driver_storage.so", "libvirt_driver_qemu.so"):
        if not (DRIVERS / so).is_file():
            raise PeerUnavailable(f"{DRIVERS / so} is missing after installing libvirt-daemon")
    if _installed("libvirt-dbus"):
        binary = Path("/usr/sbin/libvirt-dbus")
        interfaces = Path("/usr/share/dbus-1/interfaces")
        notes.append("libvirt-dbus: the system's (installed package)")
    else:
        root = _unpacked_libvirt_dbus(notes)
        binary = root / "usr" / "sbin" / "libvirt-dbus"
        interfaces = root / "usr" / "share" / "dbus-1" / "interfaces"
    return Install(LIBVIRTD, binary, interfaces, tuple(notes))


# -- processes ---------------------------------------------------------------------------------

def _stop_pid(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM our child, SIGKILL after ``timeout`` s; reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


NAMESPACE_SCRIPT = r"""
set -eu
T="$1"; shift
# This namespace starts with a copy of every mount of the host, and the host's mounts are
# private here (nothing propagates): a copy of another process's loop-device or NFS mount
# would keep that device busy after its owner unmounted it. Detach them all here, except
# the bench's own (under the bench's temp dir, the parent of $T).
KEEP=$(dirname "$T")
awk '{for (i = 7; $i != "-"; i++); print $5, $(i + 1), $(i + 2)}' /proc/self/mountinfo |
while read -r point fstype source; do
  case "$source:$fstype" in /dev/loop*|*:nfs|*:nfs4) ;; *) continue ;; esac
  case "$point" in "$KEEP"/*) continue ;; esac
  umount -l "$point" 2>/dev/null || true
done
mount -t overlay bench-etc -o "lowerdir=/etc,upperdir=$T/ov/etc,workdir=$T/ov/etc-work" /etc
mount -t overlay bench-var -o "lowerdir=/var,upperdir=$T/ov/var,workdir=$T/ov/var-work" /var
mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind "$T/etc" /etc/libvirt
mount --bind "$T/lib" /var/lib/libvirt
mount --bind "$T/cache" /var/cache/libvirt
mount --bind "$T/log" /var/log/libvirt
mount --bind "$T/run" /run
# libvirt's qemu driver insists on its user existing (qemu.conf then says root): add it to
# the overlay's passwd/group, never to the host's (checked: /etc must be the overlay here)
[ "$(stat -f -c %T /etc)" = overlayfs ] || { echo "no overlay on /etc" >&2; exit 1; }
getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:" >>/etc/group
getent passwd libvirt-qemu >/dev/null ||
  echo "libvirt-qemu:x:64055:64055:bench:/var/lib/libvirt:/usr/sbin/nologin" >>/etc/passwd
exec "$@"
"""

LIBVIRTD_CONF = """\
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{log}"
"""

QEMU_CONF = """\
user = "root"
group = "root"
"""


class Libvirtd:
    """A libvirtd of its own in a private mount namespace (see the module doc).

    ``state`` is kept across ``stop()``/``start()`` (persistent pools survive a restart).
    """

    def __init__(self, install: Install, state: Path, bus_env: dict[str, str],
                 drivers: tuple[str, ...] = ("storage", "qemu")) -> None:
        self.install = install
        self.state = Path(state)
        self.bus_env = bus_env
        self.drivers = drivers
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def socket(self) -> Path:
        """The read-write socket, as the host sees it."""
        return self.state / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"storage:///system?socket={self.socket}"

    def _prepare(self) -> None:
        s = self.state
        for d in ("ov/etc", "ov/etc-work", "ov/var", "ov/var-work", "etc", "lib", "cache",
                  "log", "run/libvirt", "drivers"):
            (s / d).mkdir(parents=True, exist_ok=True)
        (s / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(log=s / "libvirtd.log"))
        (s / "etc" / "qemu.conf").write_text(QEMU_CONF)
        for link in (s / "drivers").iterdir():
            link.unlink()
        for drv in self.drivers:
            (s / "drivers" / f"libvirt_driver_{drv}.so").symlink_to(
                DRIVERS / f"libvirt_driver_{drv}.so")

    def start(self, timeout: float = 60) -> float:
        """Start libvirtd; returns the seconds until a client connection opens."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("libvirtd already running")
        self._prepare()
        self.socket.unlink(missing_ok=True)
        env = dict(self.bus_env)
        env["LIBVIRT_DRIVER_DIR"] = str(self.state / "drivers")
        argv = ["unshare", "-m", "--propagation", "private", "--",
                "sh", "-c", NAMESPACE_SCRIPT, "sh", str(self.state),
                str(self.install.libvirtd), "--config", str(self.state / "etc" / "libvirtd.conf"),
                "--pid-file", str(self.state / "run" / "libvirtd.pid"), "--timeout", "0"]
        out = open(self.state / "libvirtd.out", "ab")  # noqa: SIM115 - kept by the child
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        finally:
            out.close()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerUnavailable(f"libvirtd exited with {self.proc.returncode}: "
                                      f"{self.log_tail()}")
            if self.socket.exists():
                # the socket is there before the drivers are initialized; an opened
                # connection (its handshake waits for them) means ready
                with contextlib.suppress(OSError):
                    VirConnect(self.uri).close()
                    return time.monotonic() - t0
            time.sleep(0.005)
        self.stop()
        raise PeerUnavailable(f"libvirtd not ready within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, 20)
            self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        text = ""
        for name in ("libvirtd.out", "libvirtd.log"):
            with contextlib.suppress(OSError):
                text += (self.state / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class LibvirtDbus:
    """``libvirt-dbus --system`` in libvirtd's mount namespace, on the private bus."""

    def __init__(self, libvirtd: Libvirtd, threads: int | None = None) -> None:
        self.libvirtd = libvirtd
        self.threads = threads
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> None:
        from tests.harness.bus import wait_for_name

        inst = self.libvirtd.install
        env = dict(self.libvirtd.bus_env)
        env["VIRT_DBUS_INTERFACES_DIR"] = str(inst.interfaces_dir)
        argv = ["nsenter", "-t", str(self.libvirtd.pid), "-m", "--",
                str(inst.libvirt_dbus), "--system"]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        out = open(self.libvirtd.state / "libvirt-dbus.out", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        finally:
            out.close()
        address = env["DBUS_SYSTEM_BUS_ADDRESS"]
        if not wait_for_name(address, DBUS_NAME, timeout, alive=[self.proc]):
            self.stop()
            tail = (self.libvirtd.state / "libvirt-dbus.out").read_text(errors="replace")
            raise PeerUnavailable(f"libvirt-dbus did not take {DBUS_NAME}: {tail[-800:]}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc)
            self.proc = None


# -- a tiny libvirt client (ctypes) ------------------------------------------------------------

class VirConnect:
    """Just what the bench needs from libvirt0: pools by XML, autostart, volume count."""

    def __init__(self, uri: str) -> None:
        lib = ctypes.CDLL("libvirt.so.0")
        p, c, i, u = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint
        for name, res, args in (
            ("virConnectOpen", p, [c]),
            ("virConnectClose", i, [p]),
            ("virStoragePoolDefineXML", p, [p, c, u]),
            ("virStoragePoolLookupByName", p, [p, c]),
            ("virStoragePoolCreate", i, [p, u]),
            ("virStoragePoolSetAutostart", i, [p, i]),
            ("virStoragePoolNumOfVolumes", i, [p]),
            ("virStoragePoolFree", i, [p]),
            ("virGetLastErrorMessage", c, []),
            ("virSetErrorFunc", None, [p, p]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self._ignore = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(
            lambda *_: None)
        lib.virSetErrorFunc(None, ctypes.cast(self._ignore, ctypes.c_void_p))
        self.lib = lib
        self.conn = lib.virConnectOpen(uri.encode())
        if not self.conn:
            raise OSError(self._error())

    def _error(self) -> str:
        msg = self.lib.virGetLastErrorMessage()
        return msg.decode() if msg else "unknown libvirt error"

    def define_autostart_pool(self, xml: str) -> None:
        pool = self.lib.virStoragePoolDefineXML(self.conn, xml.encode(), 0)
        if not pool:
            raise OSError(self._error())
        try:
            if self.lib.virStoragePoolSetAutostart(pool, 1) < 0:
                raise OSError(self._error())
            if self.lib.virStoragePoolCreate(pool, 0) < 0:
                raise OSError(self._error())
        finally:
            self.lib.virStoragePoolFree(pool)

    def volume_count(self, pool_name: str) -> int:
        """Number of volumes of an active pool; -1 when it is missing or inactive."""
        pool = self.lib.virStoragePoolLookupByName(self.conn, pool_name.encode())
        if not pool:
            return -1
        try:
            return self.lib.virStoragePoolNumOfVolumes(pool)
        finally:
            self.lib.virStoragePoolFree(pool)

    def close(self) -> None:
        if self.conn:
            self.lib.virConnectClose(self.conn)
            self.conn = None


def remove_state(state: Path) -> None:
    """Remove a stopped libvirtd's state dir (nothing is mounted there on the host)."""
    shutil.rmtree(state, ignore_errors=True)
