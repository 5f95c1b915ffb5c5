"""The VM lane: run commands (a pytest selection) inside Debian's kernel under qemu TCG.

The host's kernel has no device-mapper, NFS client or iSCSI initiator. The guest booted here
has all of them, and runs the host's own Python and checkout unchanged:

- the kernel is Debian's ``linux-image-<abi>-amd64`` (the one ``linux-image-amd64`` depends on),
  fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (never installed);
- a busybox initramfs loads the virtio/9p/overlay modules, mounts the host's ``/`` read-only
  over 9p under a tmpfs overlay (the guest can write anywhere, the host sees nothing), mounts
  the kernel's modules from a second 9p share, preloads device-mapper, and runs ``job.sh``
  from a third, writable 9p share (the *results* dir) with the output and exit code written
  back there, then powers off.

Everything prepared is cached in ``/var/cache/example-storage-vm/<kernel version>/``
(``EXAMPLE_STORAGE_VM_CACHE`` overrides the root) and rebuilt when missing, when the kernel
package changes, or when this file's recipe changes (the initramfs is keyed by a hash of
everything that goes into it).

API::

    image = prepare()                                   # cached; VmUnavailable -> skip
    res = run_in_vm(["tests/vm_guest", "-q"], timeout=600)
    res.returncode, res.output, res.junit_xml_path
    boot(["sh", "-c", "..."], net=True, disks=2)       # any command; VmResult too

    python -m tests.vm.lane [pytest args]               # what scripts/vm-test runs

Runs without a ``workdir`` keep their results (junit.xml, output, console.log) in
``$TMPDIR/example-storage-vm-runs/`` for a day; scratch disks are deleted after each run.

Inside the guest ``EXAMPLE_STORAGE_IN_VM=1`` is set, the scratch disks are ``/dev/vda``,
``/dev/vdb``... (sparse files on the host, deleted after the run), the results dir is
``/run/vm-lane`` and, with ``net=True``, the host is reachable at 10.0.2.2 (qemu user net).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testdata import LIBVIRT_TESTDATA

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("EXAMPLE_STORAGE_VM_CACHE", "/var/cache/example-storage-vm"))
# Bump when the way the kernel dir (download, extraction, depmod, vmlinux) is made changes.
KERNEL_RECIPE = 1
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # busybox-static
GUEST_RESULTS = "/run/vm-lane"  # where the results share is mounted in the guest
IN_VM_ENV = "EXAMPLE_STORAGE_IN_VM"

# Loaded from the initramfs (with their dependencies), before the root exists.
EARLY_MODULES = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay", "virtio_net")
# Loaded with the guest's modprobe once the root is up: device-mapper for LVM (thin pools,
# ext4 and iSCSI login need crc32c_generic), loop devices.
PRELOAD_MODULES = ("dm_mod", "dm_snapshot", "dm_thin_pool", "crc32c_generic", "loop")
# Modules that must exist for later lanes (NFS client, iSCSI initiator); loaded on demand.
EXTRA_MODULES = ("nfs", "nfsv4", "iscsi_tcp")

APPEND = (
    "console=ttyS0 quiet panic=-1 no_timer_check tsc=reliable mitigations=off "
    "random.trust_cpu=on 8250.nr_uarts=1"
)

# Busybox sh, PID 1 for the whole run: it never leaves the initramfs (the job runs chrooted
# into the overlay), so it can always report and power off. @KVER@ and @EARLY@ are filled in.
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/bin:/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
KVER=@KVER@
R=/newroot
say() { echo "vm-lane: $*"; }
bye() { sync; poweroff -f; echo o > /proc/sysrq-trigger; sleep 5; exit 1; }
die() { say "FATAL: $*"; [ -d /results ] && echo "$*" > /results/init-error; bye; }
for ko in @EARLY@; do
  case "$ko" in virtio_net*|net_failover*|failover*) continue;; esac
  insmod "/modules/$ko" || die "insmod $ko"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none results /results \
  || die "cannot mount the results share"
VM_NET=0; VM_LIVE=0; VM_CHECKOUT=; VM_TESTDATA=
. /results/config
# cache=loose: Python imports run ~2x faster than with cache=none (the root is read-only).
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /lower \
  || die "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay $R \
  || die "cannot mount the overlay root"
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
# the checkout at its own path: it may live below /tmp or /run, which are tmpfs here
if [ -n "$VM_CHECKOUT" ]; then
  mkdir -p "$R$VM_CHECKOUT"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro checkout \
    "$R$VM_CHECKOUT" || die "cannot mount the checkout share"
fi
# libvirt's XML test files (../shared beside the checkout), at their own path too
if [ -n "$VM_TESTDATA" ]; then
  mkdir -p "$R$VM_TESTDATA"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro testdata \
    "$R$VM_TESTDATA" || die "cannot mount the testdata share"
fi
mkdir -p $R/run/lock $R/run/vm-lane $R/lib/modules/$KVER
mount -o bind /results $R/run/vm-lane
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro modules \
  $R/lib/modules/$KVER || die "cannot mount the modules share"
chroot $R test -x /sbin/modprobe || die "no /sbin/modprobe on the host root (install kmod)"
echo /sbin/vm-lane-modprobe > /proc/sys/kernel/modprobe
chroot $R /sbin/modprobe -a @PRELOAD@ || say "WARNING: preloading modules failed"
hostname vm-lane
ip link set lo up
if [ "$VM_NET" = 1 ]; then
  for ko in @EARLY@; do
    case "$ko" in virtio_net*|net_failover*|failover*) insmod "/modules/$ko";; esac
  done
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 \
    && ip route add default via 10.0.2.2 || say "WARNING: network setup failed"
fi
set -o pipefail
if [ "$VM_LIVE" = 1 ]; then
  chroot $R /bin/sh /run/vm-lane/job.sh </dev/null 2>&1 | tee /results/output.txt
  rc=$?
else
  chroot $R /bin/sh /run/vm-lane/job.sh </dev/null >/results/output.txt 2>&1
  rc=$?
fi
echo $rc > /results/rc.tmp && mv /results/rc.tmp /results/rc
bye
"""

# The kernel's request_module() runs this from the initramfs root (PID 1's root).
MODPROBE_WRAPPER = '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n'


class VmLaneError(Exception):
    """The VM lane could not prepare, boot or report."""


class VmUnavailable(VmLaneError):
    """This machine cannot run the lane at all (not root, qemu/busybox-static/kmod missing)."""


class VmTimeout(VmLaneError):
    """The guest did not finish in time; qemu was killed."""


@dataclass(frozen=True)
class VmImage:
    """A prepared kernel: what ``qemu -kernel/-initrd`` and the modules share need."""

    kernel_version: str  # e.g. 6.1.0-56-amd64
    package_version: str  # the linux-image package's Debian version
    directory: Path
    kernel: Path  # vmlinux (or vmlinuz when it could not be decompressed)
    initrd: Path
    modules: Path  # .../lib/modules/<kernel_version>
    prepare_seconds: float  # time spent by this prepare() (0.0-ish when cached)
    timings: Mapping[str, float] = field(default_factory=dict)  # download/extract/... (s)


@dataclass(frozen=True)
class VmResult:
    """The outcome of one boot."""

    returncode: int  # the guest command's exit status
    output: str  # its stdout + stderr
    junit_xml_path: Path | None  # run_in_vm's junit report (None when not written)
    console: str  # the serial console (kernel + init messages)
    seconds: float  # qemu start to exit
    workdir: Path  # results/, console.log, qemu.log (scratch disks are removed)


# -- helpers -------------------------------------------------------------------------------
def _run(argv: Sequence[str], *, timeout: float, cwd: Path | None = None) -> str:
    """Run ``argv`` (no shell, LC_ALL=C); stdout on success, VmLaneError with stderr else."""
    env = dict(os.environ, LC_ALL="C")
    try:
        res = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise VmLaneError(f"{argv[0]} timed out after {timeout:.0f} s") from e
    except OSError as e:
        raise VmLaneError(f"cannot run {argv[0]}: {e}") from e
    if res.returncode != 0:
        raise VmLaneError(
            f"{shlex.join(argv)} failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}"
        )
    return res.stdout


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (program interpreter)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:6] != b"\x7fELF\x02\x01":
                return False
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum)
    )


def check_host() -> None:
    """Raise VmUnavailable when this machine cannot run the lane (the skip reasons)."""
    if os.geteuid() != 0:
        raise VmUnavailable(
            f"the VM lane needs root (euid is {os.geteuid()}): it exports / over 9p and "
            f"caches in {CACHE_ROOT}"
        )
    if shutil.which(QEMU) is None:
        raise VmUnavailable(f"{QEMU} is not installed (run scripts/bootstrap: qemu-system-x86)")
    if not _is_static_elf(BUSYBOX):
        raise VmUnavailable(f"{BUSYBOX} is missing or not static (install busybox-static)")
    if not os.access("/sbin/modprobe", os.X_OK) or shutil.which("depmod") is None:
        raise VmUnavailable("kmod (modprobe, depmod) is not installed")
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise VmUnavailable(f"{tool} is missing: the lane needs a Debian host")


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- which kernel --------------------------------------------------------------------------
def parse_kernel_depends(show: str) -> tuple[str, str | None] | None:
    """(abi, exact version or None) from ``apt-cache show linux-image-amd64``'s Depends,
    e.g. "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)" -> ("6.1.0-56-amd64",
    "6.1.192-2")."""
    for line in show.splitlines():
        if not line.startswith("Depends:"):
            continue
        for alt in line.removeprefix("Depends:").replace("|", ",").split(","):
            name, _, constraint = alt.strip().partition(" ")
            if name.startswith("linux-image-") and name.endswith("-amd64"):
                version = constraint.strip("() ")
                exact = version.removeprefix("= ").strip() if version.startswith("=") else None
                return name.removeprefix("linux-image-"), exact
    return None


def _apt_kernel() -> tuple[str, str] | None:
    """(kernel ABI version, package version) that linux-image-amd64 depends on, or None."""
    try:
        show = _run(["apt-cache", "show", "--no-all-versions", "linux-image-amd64"], timeout=60)
    except VmLaneError:
        return None
    found = parse_kernel_depends(show)
    if found is None:
        return None
    abi, version = found
    if version is None:
        policy = _run(["apt-cache", "policy", f"linux-image-{abi}"], timeout=60)
        for line in policy.splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "Candidate" and value and value != "(none)":
                version = value
    return (abi, version) if version else None


def pick_kernel() -> tuple[str, str]:
    """The kernel to use: apt's current one (running ``apt-get update`` once when apt knows
    none); offline, the newest complete kernel in the cache. (abi, package version)."""
    found = _apt_kernel()
    if found is None:
        with contextlib.suppress(VmLaneError):
            _run(["apt-get", "update", "-q"], timeout=600)
            found = _apt_kernel()
    if found is not None:
        return found
    cached = sorted(
        (stamp.parent.stat().st_mtime, stamp)
        for stamp in CACHE_ROOT.glob("*/kernel.json")
        if _read_json(stamp).get("recipe") == KERNEL_RECIPE
    )
    if cached:
        stamp = _read_json(cached[-1][1])
        return str(stamp["abi"]), str(stamp["package_version"])
    raise VmLaneError("apt knows no linux-image-amd64 and nothing is cached")


# -- building ------------------------------------------------------------------------------
def decompress_kernel(vmlinuz: Path, out: Path) -> bool:
    """Write the ELF vmlinux inside ``vmlinuz`` (xz payload) to ``out``; False when the
    payload is not xz or does not decompress to an ELF (then boot vmlinuz itself)."""
    data = vmlinuz.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    while start != -1:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            out.write_bytes(elf)
            return True
        start = data.find(b"\xfd7zXZ\x00", start + 1)
    zstd = data.find(b"\x28\xb5\x2f\xfd")
    if zstd != -1 and shutil.which("zstd"):
        res = subprocess.run(
            ["zstd", "-dc"], input=data[zstd:], capture_output=True, timeout=120, check=False
        )
        if res.stdout.startswith(b"\x7fELF"):
            out.write_bytes(res.stdout)
            return True
    return False


def _download_kernel(abi: str, dest: Path) -> Path:
    """apt-get download linux-image-<abi> into ``dest``; one apt-get update + retry."""
    argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"linux-image-{abi}"]
    try:
        _run(argv, cwd=dest, timeout=900)
    except VmLaneError:
        _run(["apt-get", "update", "-q"], timeout=600)
        _run(argv, cwd=dest, timeout=900)
    debs = sorted(dest.glob(f"linux-image-{abi}_*.deb"))
    if not debs:
        raise VmLaneError(f"apt-get download left no linux-image-{abi} .deb in {dest}")
    return debs[-1]


def _build_kernel_dir(abi: str, package_version: str, kdir: Path, timings: dict[str, float]
                      ) -> None:
    """Download, unpack, depmod and decompress the kernel into a fresh ``kdir``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{abi}.", dir=kdir.parent))
    try:
        t = time.monotonic()
        deb = _download_kernel(abi, tmp)
        timings["download"] = time.monotonic() - t
        t = time.monotonic()
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], timeout=600)
        deb.unlink()
        shutil.rmtree(tmp / "root" / "usr" / "share", ignore_errors=True)
        timings["extract"] = time.monotonic() - t
        t = time.monotonic()
        _run(["depmod", "-b", str(tmp / "root"), abi], timeout=300)
        timings["depmod"] = time.monotonic() - t
        t = time.monotonic()
        vmlinuz = tmp / "root" / "boot" / f"vmlinuz-{abi}"
        if not decompress_kernel(vmlinuz, tmp / "vmlinux"):
            shutil.copyfile(vmlinuz, tmp / "vmlinux")  # still bootable, just slower
        timings["vmlinux"] = time.monotonic() - t
        stamp = {"recipe": KERNEL_RECIPE, "abi": abi, "package_version": package_version}
        (tmp / "kernel.json").write_text(json.dumps(stamp) + "\n")
        if kdir.exists():
            old = kdir.with_name(f".{kdir.name}.old.{os.getpid()}")
            kdir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.chmod(0o755)
        tmp.rename(kdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune_other_kernels(abi)


def _prune_other_kernels(keep: str) -> None:
    """Remove cached kernels other than ``keep`` that no one is using (~400 MB each)."""
    for lock in CACHE_ROOT.glob("*.lock"):
        abi = lock.name.removesuffix(".lock")
        if abi == keep:
            continue
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a guest of that kernel is running
        try:
            shutil.rmtree(CACHE_ROOT / abi, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _module_order(root: Path, abi: str, names: Sequence[str]) -> list[Path]:
    """The .ko files (dependencies first, no duplicates) that load ``names``."""
    order: list[Path] = []
    out = _run(
        ["modprobe", "-d", str(root), "-S", abi, "--show-depends", "-a", *names], timeout=60
    )
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod" and Path(parts[1]) not in order:
            order.append(Path(parts[1]))
    return order


class _Cpio:
    """A minimal ``newc`` cpio writer (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
               ) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        self.buf.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _initrd_inputs(kdir: Path, abi: str) -> tuple[str, list[Path], str]:
    """(init script, early .ko files, recipe hash) for the initramfs of ``kdir``."""
    root = kdir / "root"
    kos = _module_order(root, abi, EARLY_MODULES)
    init = (
        INIT_SCRIPT.replace("@KVER@", abi)
        .replace("@EARLY@", " ".join(ko.name for ko in kos))
        .replace("@PRELOAD@", " ".join(PRELOAD_MODULES))
    )
    h = hashlib.sha256()
    for part in (init, MODPROBE_WRAPPER, *(str(k) for k in kos)):
        h.update(part.encode() + b"\0")
    h.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
    return init, kos, h.hexdigest()[:16]


def _build_initrd(out: Path, init: str, kos: Sequence[Path]) -> None:
    cpio = _Cpio()
    for d in ("bin", "sbin", "dev", "proc", "sys", "modules", "newroot", "lower", "ovl",
              "results", "tmp", "root"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", init.encode(), 0o755)
    cpio.file("sbin/vm-lane-modprobe", MODPROBE_WRAPPER.encode(), 0o755)
    for ko in kos:
        cpio.file(f"modules/{ko.name}", ko.read_bytes())
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    tmp.rename(out)


def _image(kdir: Path, stamp: dict[str, object], initrd: Path, seconds: float,
           timings: Mapping[str, float]) -> VmImage:
    abi = str(stamp["abi"])
    return VmImage(
        kernel_version=abi,
        package_version=str(stamp["package_version"]),
        directory=kdir,
        kernel=kdir / "vmlinux",
        initrd=initrd,
        modules=kdir / "root" / "lib" / "modules" / abi,
        prepare_seconds=seconds,
        timings=dict(timings),
    )


def _ready(kdir: Path, abi: str, package_version: str) -> VmImage | None:
    """The cached image when the kernel dir and the current initramfs are complete."""
    stamp = _read_json(kdir / "kernel.json")
    if stamp != {"recipe": KERNEL_RECIPE, "abi": abi, "package_version": package_version}:
        return None
    if not (kdir / "vmlinux").is_file():
        return None
    _, _, digest = _initrd_inputs(kdir, abi)
    initrd = kdir / f"init-{digest}.cpio.gz"
    return _image(kdir, stamp, initrd, 0.0, {}) if initrd.is_file() else None


def prepare() -> VmImage:
    """Make sure the kernel, vmlinux, modules and initramfs are cached; return them.

    Raises VmUnavailable when the machine cannot run the lane, VmLaneError when preparing
    fails. Safe against concurrent callers (an exclusive lock while building; runs hold a
    shared lock so a rebuild never pulls files from under a running guest).
    """
    check_host()
    t0 = time.monotonic()
    abi, package_version = pick_kernel()
    kdir = CACHE_ROOT / abi
    lock = CACHE_ROOT / f"{abi}.lock"
    with _flock(lock, fcntl.LOCK_SH):
        image = _ready(kdir, abi, package_version)
    if image is not None:
        return _image(kdir, _read_json(kdir / "kernel.json"), image.initrd,
                      time.monotonic() - t0, {})
    timings: dict[str, float] = {}
    with _flock(lock, fcntl.LOCK_EX):
        stamp = _read_json(kdir / "kernel.json")
        if stamp != {"recipe": KERNEL_RECIPE, "abi": abi, "package_version": package_version
                     } or not (kdir / "vmlinux").is_file():
            _build_kernel_dir(abi, package_version, kdir, timings)
            stamp = _read_json(kdir / "kernel.json")
        t = time.monotonic()
        init, kos, digest = _initrd_inputs(kdir, abi)
        initrd = kdir / f"init-{digest}.cpio.gz"
        if not initrd.is_file():
            for old in kdir.glob("init-*.cpio.gz"):
                old.unlink()
            _build_initrd(initrd, init, kos)
        timings["initramfs"] = time.monotonic() - t
    return _image(kdir, stamp, initrd, time.monotonic() - t0, timings)


# -- booting -------------------------------------------------------------------------------
def guest_python() -> Path:
    """The interpreter the guest runs: the checkout's venv (the host's own /usr/bin/python3
    underneath, seen through the 9p root), else the one running this code."""
    venv = REPO / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def _job_script(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    exports = {
        "PATH": f"{guest_python().parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
                ":/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        IN_VM_ENV: "1",
        "VM_LANE_RESULTS": GUEST_RESULTS,
        **env,
    }
    bad = [k for k in exports if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise ValueError(f"not environment variable names: {bad}")
    lines = ["#!/bin/sh", "# written by tests/vm/lane.py; runs chrooted in the guest's root"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines += [f"cd {shlex.quote(str(cwd))} || exit 125", f"exec {shlex.join(argv)}", ""]
    return "\n".join(lines)


def _qemu_argv(image: VmImage, workdir: Path, disks: Sequence[Path], net: bool, memory: int,
               smp: int, live: bool, testdata: Path | None = None) -> list[str]:
    argv = [
        QEMU, "-nodefaults", "-no-user-config", "-machine", "pc",
        "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(smp), "-m", str(memory),
        "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", APPEND,
        "-serial", "stdio" if live else f"file:{workdir / 'console.log'}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={image.modules},mount_tag=modules,security_model=none,"
                   "readonly=on",
        "-virtfs", f"local,path={workdir / 'results'},mount_tag=results,security_model=none",
        "-virtfs", f"local,path={REPO},mount_tag=checkout,security_model=none,readonly=on,"
                   "multidevs=remap",
    ]
    if testdata is not None:
        argv += ["-virtfs", f"local,path={testdata},mount_tag=testdata,security_model=none,"
                            "readonly=on,multidevs=remap"]
    for i, disk in enumerate(disks):
        argv += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe,index={i}"]
    if net:
        argv += ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    return argv


RUNS_DIR = Path(tempfile.gettempdir()) / "example-storage-vm-runs"
RUNS_KEEP_SECONDS = 24 * 3600


def _new_run_dir() -> Path:
    """A fresh dir under RUNS_DIR for a run without a caller-given workdir; run dirs older
    than a day are removed (they hold only results and logs: disks are deleted per run)."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in RUNS_DIR.iterdir():
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > RUNS_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=RUNS_DIR))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL qemu (its own process group, by PID) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def boot(
    argv: Sequence[str],
    *,
    timeout: float = 600,
    scratch_size: int = 4 << 30,
    disks: int = 1,
    net: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    workdir: Path | None = None,
    image: VmImage | None = None,
    memory: int = 1024,
    smp: int = 2,
    live: bool = False,
) -> VmResult:
    """Boot the guest, run ``argv`` (chrooted into the overlay root, in ``cwd``) and power
    off. ``disks`` sparse scratch disks of ``scratch_size`` bytes appear as /dev/vda...;
    ``live`` streams the console (with the command's output) to this process's stdout.
    Raises VmTimeout after ``timeout`` seconds (qemu killed), VmLaneError when the guest
    never reported an exit status."""
    image = image or prepare()
    if workdir is None:
        workdir = _new_run_dir()
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "output.txt", "junit.xml", "init-error"):
        (results / stale).unlink(missing_ok=True)
    # libvirt's test files, where the guest's tests look for them (a checkout below /tmp has
    # them below /tmp too, a tmpfs in the guest): shared read-only at the same path
    testdata = LIBVIRT_TESTDATA.absolute() if LIBVIRT_TESTDATA.is_dir() else None
    (results / "config").write_text(
        f"VM_NET={int(net)}\nVM_LIVE={int(live)}\nVM_CHECKOUT={shlex.quote(str(REPO))}\n"
        f"VM_TESTDATA={shlex.quote(str(testdata or ''))}\n")
    (results / "job.sh").write_text(_job_script(argv, cwd, env or {}))
    disk_paths = [workdir / f"disk{i}.img" for i in range(disks)]
    for path in disk_paths:
        with open(path, "wb") as f:
            f.truncate(scratch_size)
    qemu_log = workdir / "qemu.log"
    console = workdir / "console.log"
    start = time.monotonic()
    try:
        with _flock(CACHE_ROOT / f"{image.kernel_version}.lock", fcntl.LOCK_SH), \
             open(qemu_log, "wb") as log:
            proc = subprocess.Popen(
                _qemu_argv(image, workdir, disk_paths, net, memory, smp, live,
                           testdata.resolve() if testdata else None),
                stdin=subprocess.DEVNULL, stdout=None if live else log, stderr=log,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise VmTimeout(
                    f"the guest did not finish within {timeout:.0f} s (qemu killed)\n"
                    + _tail(results / "output.txt", console)
                ) from None
            except BaseException:
                _kill(proc)
                raise
    finally:
        for path in disk_paths:
            path.unlink(missing_ok=True)
    seconds = time.monotonic() - start
    console_text = console.read_text(errors="replace") if console.exists() else ""
    rc_file = results / "rc"
    if not rc_file.exists():
        init_error = results / "init-error"
        why = init_error.read_text().strip() if init_error.exists() else "no exit status"
        raise VmLaneError(
            f"the guest did not report ({why}); qemu exit {proc.returncode}\n"
            f"qemu: {qemu_log.read_text(errors='replace').strip()[-2000:]}\n"
            + _tail(results / "output.txt", console)
        )
    junit = results / "junit.xml"
    return VmResult(
        returncode=int(rc_file.read_text().strip()),
        output=(results / "output.txt").read_text(errors="replace"),
        junit_xml_path=junit if junit.exists() else None,
        console=console_text,
        seconds=seconds,
        workdir=workdir,
    )


def _tail(output: Path, console: Path, chars: int = 6000) -> str:
    parts = []
    for label, path in (("output", output), ("console", console)):
        if path.exists():
            parts.append(f"--- guest {label} (tail) ---\n"
                         + path.read_text(errors="replace")[-chars:])
    return "\n".join(parts)


def run_in_vm(
    pytest_args: Sequence[str],
    *,
    timeout: float = 900,
    scratch_size: int = 4 << 30,
    net: bool = False,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> VmResult:
    """Run ``pytest <pytest_args>`` in the guest from the checkout's root, with a junit
    report at ``result.junit_xml_path``. Other keyword arguments go to ``boot``."""
    argv = [
        str(guest_python()), "-m", "pytest", "-p", "no:cacheprovider",
        f"--junitxml={GUEST_RESULTS}/junit.xml", *pytest_args,
    ]
    return boot(argv, timeout=timeout, scratch_size=scratch_size, net=net, env=env, **kwargs)


@dataclass(frozen=True)
class VmLane:
    """A prepared lane (what the ``vm_lane`` fixture gives): ``run`` is ``run_in_vm`` on
    this image, ``boot`` runs any command."""

    image: VmImage

    def run(self, pytest_args: Sequence[str], **kwargs: Any) -> VmResult:
        return run_in_vm(pytest_args, image=self.image, **kwargs)

    def boot(self, argv: Sequence[str], **kwargs: Any) -> VmResult:
        return boot(argv, image=self.image, **kwargs)


def main(args: Sequence[str]) -> int:
    """``python -m tests.vm.lane [pytest args]``: run a selection in the guest, live."""
    pytest_args = list(args) or ["tests/vm_guest", "-q"]
    try:
        image = prepare()
    except VmLaneError as e:
        print(f"vm-test: cannot prepare the VM lane: {e}", file=sys.stderr)
        return 77 if isinstance(e, VmUnavailable) else 1
    how = ", ".join(f"{k} {v:.1f} s" for k, v in image.timings.items()) or "cached"
    print(f"vm-test: kernel {image.kernel_version} ({image.package_version}) ready in "
          f"{image.prepare_seconds:.1f} s ({how}); {image.directory}", flush=True)
    print(f"vm-test: pytest {shlex.join(pytest_args)} (in the guest)", flush=True)
    try:
        res = run_in_vm(pytest_args, image=image, live=True,
                        net=os.environ.get("VM_LANE_NET") == "1")
    except VmLaneError as e:
        print(f"\nvm-test: {e}", file=sys.stderr)
        return 1
    print(f"\nvm-test: guest pytest exit {res.returncode} after {res.seconds:.1f} s "
          f"(results in {res.workdir})")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
