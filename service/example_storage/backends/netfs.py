"""The 'netfs' pool: a network filesystem (NFS; CIFS and GlusterFS where their mount helpers
exist) mounted at the target directory; volumes are files in it, as in a dir pool.

A network server can stop answering: nothing here touches the mounted filesystem without a
timeout. Mount state comes from /proc/self/mountinfo (never from stat of the mount point),
statvfs of the mount runs in its own daemon thread that is abandoned after
``STAT_TIMEOUT`` (TimedOut), and every mount/umount runs through run_command with a timeout
(``umount -i -c``: no helper talking to the server, no path canonicalization).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import (
    Busy,
    CommandFailed,
    Failed,
    InvalidArgument,
    InvalidState,
    NotSupported,
    TimedOut,
)
from ..model.definitions import PoolDefinition, PoolSource, SourceHost
from ..system import mounts
from ..system.libc import libc_call
from ..system.runner import run_command, which
from . import file_volumes
from .base import PoolStats, RefreshResult
from .dir import DirBackend

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 20.0
FORCE_TIMEOUT = 10.0
STAT_TIMEOUT = 5.0
LIST_TIMEOUT = 60.0
DISCOVERY_TIMEOUT = 20.0

# The mount helper each source format needs; 'auto' mounts NFS (as libvirt does).
HELPERS = {"auto": "mount.nfs", "nfs": "mount.nfs", "cifs": "mount.cifs",
           "glusterfs": "mount.glusterfs"}
PACKAGES = {"mount.nfs": "nfs-common", "mount.cifs": "cifs-utils",
            "mount.glusterfs": "glusterfs-client"}
NFS_TYPES = ("nfs", "nfs4")

T = TypeVar("T")


# -- pure helpers ---------------------------------------------------------------
def source_spec(pool: PoolDefinition) -> tuple[str, str]:
    """(filesystem type for mount -t, the mount source) of a netfs pool definition."""
    src = pool.source
    if len(src.hosts) != 1 or not src.hosts[0].name:
        raise InvalidArgument(f"pool '{pool.name}' needs exactly one <host name=.../>")
    host = src.hosts[0].name
    if any(c in host for c in "/:@ \t\n\0") and not _is_ipv6(host):
        raise InvalidArgument(f"invalid host name '{host[:64]}'")
    path = src.dir or ""
    fmt = (src.format or "auto").lower()
    if fmt not in HELPERS:
        raise InvalidArgument(f"unknown netfs format '{fmt}' (known: {', '.join(HELPERS)})")
    if any(c in path for c in "\n\0"):
        raise InvalidArgument("invalid source directory")
    shown_host = f"[{host}]" if _is_ipv6(host) else host
    if fmt == "cifs":
        if not path:
            raise InvalidArgument(f"pool '{pool.name}' needs a <dir path=.../> (the share)")
        return "cifs", f"//{shown_host}/{path.lstrip('/')}"
    if not path.startswith("/"):
        raise InvalidArgument(f"pool '{pool.name}' needs an absolute <dir path=.../>")
    if fmt == "glusterfs":
        return "glusterfs", f"{shown_host}:{path}"
    return "nfs", f"{shown_host}:{path}"


def _is_ipv6(host: str) -> bool:
    return ":" in host and re.fullmatch(r"[0-9A-Fa-f:.]+", host) is not None


def mount_options(pool: PoolDefinition) -> list[str]:
    """The XML's <fs:mount_opts>, plus vers=N for <protocol ver=N/> (NFS only)."""
    opts = list(pool.mount_opts)
    ver = pool.source.protocol_ver
    if ver:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", ver):
            raise InvalidArgument(f"invalid NFS protocol version '{ver[:16]}'")
        if not any(o.split("=", 1)[0] in ("vers", "nfsvers") for o in opts):
            opts.append(f"vers={ver}")
    return opts


def same_source(a: str, b: str) -> bool:
    """'host:/dir' equal up to trailing slashes (the kernel shows 'host:/dir/' as given)."""
    ha, sep, pa = a.partition(":/")
    hb, _, pb = b.partition(":/")
    if not sep or ha != hb:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.normpath("/" + pa) == os.path.normpath("/" + pb)


def matching_mount(entry: mounts.MountEntry | None, fstype: str, spec: str) -> bool:
    if entry is None:
        return False
    if fstype == "nfs":
        return entry.fstype in NFS_TYPES and same_source(entry.source, spec)
    if fstype == "glusterfs":
        return entry.fstype.startswith("fuse.glusterfs") and same_source(entry.source, spec)
    return entry.fstype in ("cifs", "smb3") and entry.source.rstrip("/") == spec.rstrip("/")


def parse_showmount(text: str) -> list[str]:
    """Export paths from ``showmount -e --no-headers HOST`` (or with its header line)."""
    exports = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Export list for"):
            continue
        path = line.split()[0]
        if path.startswith("/"):
            exports.append(path)
    return exports


def parse_nfs_ls(text: str) -> list[str]:
    """Directories in an ``nfs-ls nfs://HOST/?version=4`` listing of the NFSv4 pseudo-root:
    lines like ``drwxr-xr-x  2     0     0         4096 export``."""
    found = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[0].startswith("d") and parts[5] not in (".", ".."):
            found.append("/" + parts[5])
    return found


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    path: str

    def __str__(self) -> str:
        return f"{self.command}[{self.pid}] ({self.path})"


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def holders_of(top: str, proc: str = "/proc") -> list[Holder]:
    """Processes with an open file, cwd or root under ``top`` (readlink of /proc/PID/...
    never touches the filesystem itself, so a dead server cannot hang this)."""
    found: list[Holder] = []
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid == me:
            continue
        base = f"{proc}/{pid}"
        links = [f"{base}/cwd", f"{base}/root"]
        with contextlib.suppress(OSError):
            links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            target = target.removesuffix(" (deleted)")
            if _under(target, top):
                found.append(Holder(pid, _comm(base), target))
                break
    return found


def _comm(base: str) -> str:
    try:
        with open(f"{base}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


MNT_FORCE = 1
MNT_DETACH = 2


def umount2(target: str, flags: int) -> None:
    """The umount2 syscall itself: umount(8) looks at the mount point first, which hangs
    on a dead server; the kernel's own lookup of a mount point does not."""
    libc_call("umount2", (ctypes.c_char_p, ctypes.c_int), os.fsencode(target), flags,
              path=target)


async def with_deadline(fn: Callable[..., T], *args: Any, timeout: float, what: str) -> T:
    """Run ``fn(*args)`` in a fresh daemon thread; TimedOut after ``timeout`` seconds (the
    thread is abandoned: a call stuck on a dead server must not use up the shared pool)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def set_result(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value, exc = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            value, exc = None, e
        with contextlib.suppress(RuntimeError):   # the loop is gone (shutting down)
            loop.call_soon_threadsafe(set_result, value, exc)

    threading.Thread(target=work, name=f"netfs:{what[:40]}", daemon=True).start()
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        raise TimedOut(f"{what}: no answer within {timeout:g} s "
                       "(is the server down?)") from None


# -- the backend ----------------------------------------------------------------
class NetfsBackend(DirBackend):
    type_name = "netfs"
    checks_mount = True            # volume_dir: the filesystem is mounted there
    required_tools = ("mount", "umount")
    optional_tools = ("qemu-img", "mount.nfs", "showmount", "nfs-ls")
    pool_formats = ("auto", "nfs", "glusterfs", "cifs")
    features = DirBackend.features - {"add_devices", "remove_device"}
    local_files = False   # file work in threads: the server may stall

    # -- mount state (mountinfo only) -----------------------------------------
    @staticmethod
    def _mount_point(pool: PoolDefinition) -> str:
        """The target with its parent resolved (never the target itself: that may be a
        mount of a dead server)."""
        target = DirBackend.target_path(pool)
        parent, name = os.path.split(target)
        return os.path.join(os.path.realpath(parent), name)

    def _mounted_here(self, pool: PoolDefinition, text: str | None = None) -> bool:
        fstype, spec = source_spec(pool)
        return matching_mount(mounts.find_mount(self._mount_point(pool), text), fstype, spec)

    async def is_active(self, pool: PoolDefinition) -> bool:
        try:
            return self._mounted_here(pool)
        except InvalidArgument:
            return False

    async def volume_dir(self, pool: PoolDefinition) -> str:
        path = self.target_path(pool)
        if not self._mounted_here(pool):
            _, spec = source_spec(pool)
            raise InvalidState(
                f"pool '{pool.name}': {spec} is not mounted at {path} any more "
                "(the mount went away; Destroy and Start the pool again)"
            )
        await with_deadline(os.statvfs, path, timeout=STAT_TIMEOUT,
                            what=f"pool '{pool.name}': statvfs {path}")
        return path

    # -- pool ----------------------------------------------------------------
    async def build(self, pool: PoolDefinition, overwrite: bool) -> None:
        source_spec(pool)
        if self._mounted_here(pool):
            return
        await asyncio.to_thread(self._make_target, pool)

    async def start(self, pool: PoolDefinition) -> None:
        fstype, spec = source_spec(pool)
        opts = mount_options(pool)
        fmt = (pool.source.format or "auto").lower()
        helper = HELPERS[fmt]
        if which(helper) is None:
            raise NotSupported(
                f"pool '{pool.name}': {fmt} sources need {helper} (package "
                f"{PACKAGES[helper]}), which is not installed"
            )
        target = self.target_path(pool)
        text = mounts.read_mountinfo()
        entry = mounts.find_mount(self._mount_point(pool), text)
        if matching_mount(entry, fstype, spec):
            return
        if entry is not None:
            raise Busy(f"{target} is already the mount point of {entry.source}")
        if not os.path.isdir(target):
            await asyncio.to_thread(self._make_target, pool)
        try:
            await mounts.mount(spec, target, fstype, opts, timeout=MOUNT_TIMEOUT)
        except TimedOut:
            await self._clear_failed_mount(pool)
            raise TimedOut(f"mounting {spec} timed out after {MOUNT_TIMEOUT:g} s "
                           "(is the server reachable?)") from None

    async def _clear_failed_mount(self, pool: PoolDefinition) -> None:
        if self._mounted_here(pool):
            await self._umount2(pool, MNT_DETACH)

    async def _umount(self, target: str, flags: list[str], timeout: float) -> None:
        # -i: no umount.nfs helper (it would talk to the server); -c: no canonicalization
        # (stat of the mount point would hang on a dead server)
        await run_command(["umount", "-i", "-c", *flags, "--", target], timeout=timeout)

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        """Unmount. Busy names the processes holding the mount; with ``force`` it is
        unmounted anyway: ``umount -f`` (aborts requests to a dead server), then a lazy
        unmount if it is still there; the holders are logged."""
        if not self._mounted_here(pool):
            return
        target = self.target_path(pool)
        _, spec = source_spec(pool)
        if not force:
            try:
                await self._umount(target, [], UMOUNT_TIMEOUT)
                return
            except TimedOut:
                raise TimedOut(f"unmounting {spec} from {target} timed out (server down?); "
                               "pass option 'force' to unmount it anyway") from None
            except CommandFailed:
                if not self._mounted_here(pool):
                    return
            held = await self._holders(pool)
            raise Busy(f"cannot unmount {spec} from {target}: in use by {held}; "
                       "pass option 'force' to unmount it anyway")
        held = await self._holders(pool)
        log.warning("pool %s: forcing the unmount of %s from %s, held by %s",
                    pool.name, spec, target, held)
        try:
            await self._umount2(pool, MNT_FORCE)
        except (OSError, TimedOut) as exc:
            log.warning("pool %s: umount -f failed (%s); detaching lazily", pool.name, exc)
        if self._mounted_here(pool):
            await self._umount2(pool, MNT_DETACH)
        if self._mounted_here(pool):
            raise Busy(f"{spec} is still mounted at {target}")
        log.warning("pool %s: unmounted %s (it was held by %s)", pool.name, spec, held)

    async def _umount2(self, pool: PoolDefinition, flags: int) -> None:
        """umount2 with a deadline. Once the mount has left the mount table the call may
        still wait for the dead server while the kernel tears the filesystem down: that
        is done as far as the pool is concerned (the thread finishes in the background)."""
        target = self.target_path(pool)
        what = f"umount -{'l' if flags & MNT_DETACH else 'f'} {target}"
        try:
            await with_deadline(umount2, target, flags, timeout=FORCE_TIMEOUT, what=what)
        except TimedOut:
            if self._mounted_here(pool):
                raise
            log.warning("pool %s: %s: unmounted, the kernel still tears it down",
                        pool.name, what)

    async def _holders(self, pool: PoolDefinition) -> str:
        holders = await asyncio.to_thread(holders_of, self._mount_point(pool))
        return ", ".join(map(str, holders)) or "no process found"

    async def stats(self, pool: PoolDefinition) -> PoolStats:
        path = await self.volume_dir(pool)
        return await with_deadline(self._stats, path, timeout=STAT_TIMEOUT,
                                   what=f"pool '{pool.name}': statvfs {path}")

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        stats = await self.stats(pool)
        path = self.target_path(pool)
        try:
            volumes = await asyncio.wait_for(file_volumes.list_volumes(path), LIST_TIMEOUT)
        except TimeoutError:
            raise TimedOut(f"pool '{pool.name}': listing {path} timed out") from None
        return RefreshResult(stats=stats, volumes=volumes)

    # -- discovery -----------------------------------------------------------
    async def find_sources(self, hint: PoolSource | None) -> list[PoolSource]:
        """The server's exports: NFSv3 MOUNT protocol (showmount -e) where rpcbind
        answers, else the NFSv4 pseudo-root (nfs-ls)."""
        if hint is None or len(hint.hosts) != 1 or not hint.hosts[0].name:
            raise InvalidArgument("FindPoolSources for netfs needs <source><host name=.../>")
        host = hint.hosts[0]
        if any(c in host.name for c in "/?&# \t\n\0@"):
            raise InvalidArgument(f"invalid host name '{host.name[:64]}'")
        errors: list[str] = []
        paths: list[str] | None = None
        if host.port is None and which("showmount"):
            try:
                res = await run_command(["showmount", "-e", "--no-headers", "--", host.name],
                                        timeout=DISCOVERY_TIMEOUT)
                paths = parse_showmount(res.stdout)
            except (CommandFailed, TimedOut) as exc:
                errors.append(f"showmount: {exc}")
        if paths is None and which("nfs-ls"):
            shown = f"[{host.name}]" if _is_ipv6(host.name) else host.name
            url = f"nfs://{shown}/?version=4"
            if host.port is not None:
                url += f"&nfsport={host.port}"
            try:
                res = await run_command(["nfs-ls", url], timeout=DISCOVERY_TIMEOUT)
                paths = parse_nfs_ls(res.stdout)
            except (CommandFailed, TimedOut) as exc:
                errors.append(f"nfs-ls: {exc}")
        if paths is None:
            if not errors:
                raise NotSupported("listing NFS exports needs showmount (nfs-common) or "
                                   "nfs-ls (libnfs-utils)")
            raise Failed(f"cannot list the exports of {host.name}: " + "; ".join(errors))
        return [
            PoolSource(hosts=[SourceHost(host.name, host.port)], dir=p, format="nfs")
            for p in paths
        ]
