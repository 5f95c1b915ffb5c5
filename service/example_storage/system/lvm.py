"""LVM2 through its command-line tools: JSON reports, pure parsers, and the commands.

Every read is ``pvs/vgs/lvs --reportformat json --units b --nosuffix -o FIELDS`` (sizes in
bytes); ``parse_pvs``/``parse_vgs``/``parse_lvs`` turn that output into dataclasses and
are pure. Every command runs through ``run_command`` with a timeout; stdin is /dev/null, so a
question LVM asks is answered "no" and the command fails rather than hangs. ``--yes`` is
passed where the caller has already decided (removing what it named, pvcreate over data
with ``overwrite``, lvcreate wiping stale signatures inside a new LV).

LVM reads its configuration from ``$LVM_SYSTEM_DIR/lvm.conf`` (default ``/etc/lvm``); the
daemon's ``--lvm-system-dir`` option sets that variable, which every command inherits.
With ``global { activation = 0 }`` (a host without device-mapper) LVM edits metadata only:
nothing can be activated, snapshots and thin pools cannot be made, pvmove must not run.
``activation_possible()`` tells which world we are in.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from ..errors import (
    AlreadyExists,
    Busy,
    CommandFailed,
    Failed,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotSupported,
    StorageError,
)
from .runner import run_command

# Metadata commands wait for LVM's own locks; they finish in well under a second otherwise.
LVM_TIMEOUT = 120.0
# pvmove copies data: allow 5 MiB/s at least, and 10 minutes on top.
PVMOVE_MIN_RATE = 5 * 1024 * 1024
PVMOVE_BASE_TIMEOUT = 600.0

# Every LVM command gets these (file-descriptor leak warnings are noise on stderr).
_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
REPORT_ARGS = ("--reportformat", "json", "--units", "b", "--nosuffix")

PV_FIELDS = (
    "pv_name", "pv_uuid", "vg_name", "pv_fmt", "pv_attr", "pv_size", "pv_free", "pv_used",
    "dev_size", "pv_pe_count", "pv_pe_alloc_count",
)
VG_FIELDS = (
    "vg_name", "vg_uuid", "vg_attr", "vg_size", "vg_free", "vg_extent_size",
    "vg_extent_count", "vg_free_count", "pv_count", "lv_count", "snap_count",
    "vg_missing_pv_count",
)
LV_FIELDS = (
    "lv_name", "vg_name", "lv_uuid", "lv_attr", "lv_size", "origin", "origin_size", "pool_lv",
    "data_percent", "lv_layout", "lv_role", "lv_path",
)  # LV fields only: one segment field (segtype, devices) would give one row per segment

# LVM's name rules (lib/misc/lvm-string.c, LVM 2.03).
NAME_CHARS = re.compile(r"[A-Za-z0-9+_.-]+")
NAME_MAX = 127
# "VG/LV" must stay under LVM's internal limit: measured with LVM 2.03.16, the two names
# together may have at most 124 characters.
VG_LV_MAX = 124
LV_RESERVED_PREFIXES = ("snapshot", "pvmove")
LV_RESERVED_PARTS = (
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_imeta", "_iorig",
    "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata",
    "_vorigin",
)


# -- names ----------------------------------------------------------------------

def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must not be empty")
    if name.startswith("-"):
        raise InvalidArgument(f"{what} '{name[:64]}' must not start with '-'")
    if name in (".", ".."):
        raise InvalidArgument(f"{what} must not be '.' or '..'")
    if not NAME_CHARS.fullmatch(name):
        raise InvalidArgument(
            f"{what} '{name[:64]}' may only contain letters, digits and '+', '_', '.', '-'"
        )
    if len(name) > NAME_MAX:
        raise InvalidArgument(f"{what} is longer than {NAME_MAX} characters")
    return name


def validate_vg_name(name: str) -> str:
    """A volume group name LVM accepts, or InvalidArgument saying why not."""
    return _check_name(name, "volume group name")


def validate_lv_name(name: str, vg: str | None = None) -> str:
    """A logical volume name LVM accepts (in ``vg``, if given), or InvalidArgument."""
    _check_name(name, "logical volume name")
    for prefix in LV_RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise InvalidArgument(
                f"logical volume name '{name[:64]}': names starting '{prefix}' are reserved"
            )
    for part in LV_RESERVED_PARTS:
        if part in name:
            raise InvalidArgument(
                f"logical volume name '{name[:64]}': names including '{part}' are reserved"
            )
    if vg is not None and len(vg) + len(name) > VG_LV_MAX:
        raise InvalidArgument(
            f"volume group and logical volume names together exceed {VG_LV_MAX} characters"
        )
    return name


def _check_device_arg(path: str) -> str:
    # Device arguments must never be taken for options.
    if not path or not path.startswith("/"):
        raise InvalidArgument(f"device '{path[:256]}' is not an absolute path")
    return path


def size_arg(size: int) -> str:
    """An LVM size argument in bytes (LVM wants whole 512-byte sectors)."""
    if size <= 0:
        raise InvalidArgument("size must be greater than 0")
    return f"{round_up(size, 512)}b"


def round_up(size: int, unit: int) -> int:
    return -(-size // unit) * unit if unit > 0 else size


# -- parsed reports ---------------------------------------------------------------

@dataclass(frozen=True)
class PhysicalVolume:
    name: str            # the device path LVM found it on ("[unknown]" when missing)
    uuid: str
    vg_name: str         # "" for an orphan PV
    fmt: str
    attr: str
    size: int
    free: int
    used: int
    dev_size: int
    pe_count: int
    pe_alloc_count: int

    @property
    def missing(self) -> bool:
        return len(self.attr) > 2 and self.attr[2] == "m"


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    uuid: str
    attr: str
    size: int
    free: int
    extent_size: int
    extent_count: int
    free_count: int
    pv_count: int
    lv_count: int
    snap_count: int
    missing_pv_count: int

    @property
    def partial(self) -> bool:
        return len(self.attr) > 3 and self.attr[3] == "p"

    @property
    def exported(self) -> bool:
        return len(self.attr) > 2 and self.attr[2] == "x"


# lv_attr[4] (state) letters that mean "a device-mapper device exists".
_ACTIVE_STATES = frozenset("asISmMdicC")


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    vg_name: str
    uuid: str
    attr: str
    size: int
    origin: str
    origin_size: int | None
    pool_lv: str
    data_percent: float | None
    layout: tuple[str, ...]     # lv_layout: ('linear',), ('thin', 'sparse'), ('pool', 'thin')
    role: tuple[str, ...]       # lv_role: ('public',), ('public', 'snapshot', ...)

    @property
    def path(self) -> str:
        return f"/dev/{self.vg_name}/{self.name}"

    @property
    def kind(self) -> str:
        """lv_attr[0]: '-' plain, 's' snapshot, 'o' origin, 't' thin pool, 'V' thin..."""
        return self.attr[:1] or "-"

    @property
    def hidden(self) -> bool:
        return self.name.startswith("[")

    @property
    def is_thin_pool(self) -> bool:
        return self.kind == "t" or ("pool" in self.layout and "thin" in self.layout)

    @property
    def is_thin(self) -> bool:
        return self.kind == "V" or ("thin" in self.layout and "sparse" in self.layout)

    @property
    def is_snapshot(self) -> bool:
        """A snapshot of another LV: thick ('s'/'S') or thin (a thin LV with an origin)."""
        return self.kind in ("s", "S") or (self.is_thin and bool(self.origin))

    @property
    def is_internal(self) -> bool:
        """Not a user volume: hidden sub-LVs, pools, pvmove and metadata LVs."""
        return self.hidden or self.is_thin_pool or self.kind in ("p", "e", "d", "D", "T")

    @property
    def active(self) -> bool | None:
        """True/False; None when LVM cannot tell (activation disabled)."""
        state = self.attr[4:5]
        if state in ("", "X"):
            return None
        return state in _ACTIVE_STATES

    @property
    def activation_skip(self) -> bool:
        return len(self.attr) > 9 and self.attr[9] == "k"


def _report_rows(text: str, kind: str) -> list[dict[str, str]]:
    """The ``kind`` rows ('pv', 'vg', 'lv') of an LVM JSON report."""
    try:
        data = json.loads(text)
        reports = data["report"]
        rows: list[dict[str, str]] = []
        for report in reports:
            rows.extend(report.get(kind, []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Failed(f"cannot read the LVM {kind}s report: {exc}") from None
    if not all(isinstance(r, dict) for r in rows):
        raise Failed(f"cannot read the LVM {kind}s report: unexpected rows")
    return rows


def _int(row: dict[str, str], key: str) -> int:
    value = str(row.get(key, "")).strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise Failed(f"LVM reported {key}={value[:32]!r}, not a number") from None


def _opt_int(row: dict[str, str], key: str) -> int | None:
    return _int(row, key) if str(row.get(key, "")).strip() else None


def _opt_float(row: dict[str, str], key: str) -> float | None:
    value = str(row.get(key, "")).strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise Failed(f"LVM reported {key}={value[:32]!r}, not a number") from None


def _str(row: dict[str, str], key: str) -> str:
    return str(row.get(key, ""))


def _words(row: dict[str, str], key: str) -> tuple[str, ...]:
    return tuple(w for w in _str(row, key).split(",") if w)


def parse_pvs(text: str) -> list[PhysicalVolume]:
    """``pvs --reportformat json --units b --nosuffix -o PV_FIELDS`` output."""
    return [
        PhysicalVolume(
            name=_str(r, "pv_name"), uuid=_str(r, "pv_uuid"), vg_name=_str(r, "vg_name"),
            fmt=_str(r, "pv_fmt"), attr=_str(r, "pv_attr"), size=_int(r, "pv_size"),
            free=_int(r, "pv_free"), used=_int(r, "pv_used"), dev_size=_int(r, "dev_size"),
            pe_count=_int(r, "pv_pe_count"), pe_alloc_count=_int(r, "pv_pe_alloc_count"),
        )
        for r in _report_rows(text, "pv")
    ]


def parse_vgs(text: str) -> list[VolumeGroup]:
    """``vgs --reportformat json --units b --nosuffix -o VG_FIELDS`` output."""
    return [
        VolumeGroup(
            name=_str(r, "vg_name"), uuid=_str(r, "vg_uuid"), attr=_str(r, "vg_attr"),
            size=_int(r, "vg_size"), free=_int(r, "vg_free"),
            extent_size=_int(r, "vg_extent_size"), extent_count=_int(r, "vg_extent_count"),
            free_count=_int(r, "vg_free_count"), pv_count=_int(r, "pv_count"),
            lv_count=_int(r, "lv_count"), snap_count=_int(r, "snap_count"),
            missing_pv_count=_int(r, "vg_missing_pv_count"),
        )
        for r in _report_rows(text, "vg")
    ]


def parse_lvs(text: str) -> list[LogicalVolume]:
    """``lvs --reportformat json --units b --nosuffix -o LV_FIELDS`` output."""
    out: list[LogicalVolume] = []
    seen: set[tuple[str, str]] = set()
    for r in _report_rows(text, "lv"):
        lv = LogicalVolume(
            name=_str(r, "lv_name"), vg_name=_str(r, "vg_name"), uuid=_str(r, "lv_uuid"),
            attr=_str(r, "lv_attr"), size=_int(r, "lv_size"), origin=_str(r, "origin"),
            origin_size=_opt_int(r, "origin_size"), pool_lv=_str(r, "pool_lv"),
            data_percent=_opt_float(r, "data_percent"), layout=_words(r, "lv_layout"),
            role=_words(r, "lv_role"),
        )
        # A report with segment fields has one row per segment: keep one per LV.
        if (lv.vg_name, lv.uuid or lv.name) not in seen:
            seen.add((lv.vg_name, lv.uuid or lv.name))
            out.append(lv)
    return out


def parse_lvmconfig_value(text: str) -> str | None:
    """The value of ``lvmconfig KEY`` output (``name=value``; strings are quoted)."""
    for line in text.splitlines():
        _key, sep, value = line.strip().partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


# -- errors -----------------------------------------------------------------------

_NOISE = (
    re.compile(r"WARNING: Activation disabled"),
    re.compile(r"WARNING: Skipping zeroing"),
    re.compile(r"WARNING: Logical volume \S+ not zeroed"),
    re.compile(r"File descriptor \d+ .* leaked"),
    re.compile(r"Run `\w+ --help' for more information"),
)
_NOSPACE = re.compile(r"insufficient (free space|suitable allocatable extents)|"
                      r"not enough free space|no free extents", re.I)
_NOTFOUND = re.compile(r"not found|failed to find|cannot find|no such device", re.I)
_EXISTS = re.compile(r"already exists", re.I)
_BUSY = re.compile(r"in use|is open|contains a filesystem in use|device or resource busy", re.I)
_NO_DM = re.compile(r"without using device-mapper|device-mapper kernel driver|"
                    r"failure to communicate with kernel device-mapper", re.I)


def clean_stderr(stderr: str) -> str:
    """LVM's stderr without the noise lines, joined into one message."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not any(p.search(ln) for p in _NOISE)]
    return "; ".join(kept) or "; ".join(lines)


def classify_error(exc: CommandFailed, what: str) -> StorageError:
    """Map a failed LVM command to the error a caller should see."""
    detail = clean_stderr(exc.stderr) or f"exit status {exc.returncode}"
    message = f"{what}: {detail}"
    if _NOSPACE.search(detail):
        return NoSpace(message)
    if _NO_DM.search(detail):
        return NotSupported(f"{what}: this needs device-mapper, which is not available "
                            f"(LVM runs in metadata-only mode here): {detail}")
    if _EXISTS.search(detail):
        return AlreadyExists(message)
    if _BUSY.search(detail):
        return Busy(message)
    if _NOTFOUND.search(detail):
        return NotFound(message)
    return Failed(message)


async def _lvm(argv: list[str], what: str, *, timeout: float = LVM_TIMEOUT) -> str:
    try:
        result = await run_command(argv, timeout=timeout, env=_ENV)
    except CommandFailed as exc:
        raise classify_error(exc, what) from None
    return result.stdout


# -- reading ----------------------------------------------------------------------

async def pvs(devices: list[str] | None = None) -> list[PhysicalVolume]:
    """Every PV LVM sees (orphans too), or only those on ``devices``."""
    argv = ["pvs", *REPORT_ARGS, "-o", ",".join(PV_FIELDS)]
    argv += [_check_device_arg(d) for d in devices or []]
    return parse_pvs(await _lvm(argv, "pvs"))


async def vgs(vg: str | None = None) -> list[VolumeGroup]:
    """Every VG, or just ``vg`` (NotFound when it does not exist)."""
    argv = ["vgs", *REPORT_ARGS, "-o", ",".join(VG_FIELDS)]
    if vg is not None:
        argv.append(validate_vg_name(vg))
    return parse_vgs(await _lvm(argv, f"volume group '{vg}'" if vg else "vgs"))


async def find_vg(vg: str) -> VolumeGroup | None:
    """The VG named ``vg``, or None."""
    for group in await vgs():
        if group.name == vg:
            return group
    return None


async def lvs(vg: str, name: str | None = None) -> list[LogicalVolume]:
    """The LVs of ``vg`` (visible ones: no hidden sub-LVs), or just ``vg/name``."""
    target = f"{validate_vg_name(vg)}/{validate_lv_name(name)}" if name else validate_vg_name(vg)
    argv = ["lvs", *REPORT_ARGS, "-o", ",".join(LV_FIELDS), target]
    return parse_lvs(await _lvm(argv, f"logical volumes of '{target}'"))


async def config_value(key: str) -> str | None:
    """A setting as LVM will use it (``lvmconfig --type full KEY``)."""
    if not re.fullmatch(r"[a-z_]+/[a-z_]+", key):
        raise InvalidArgument(f"invalid LVM config key '{key[:64]}'")
    out = await _lvm(["lvmconfig", "--type", "full", key], f"lvmconfig {key}")
    return parse_lvmconfig_value(out)


def kernel_has_device_mapper() -> bool:
    """True when the running kernel offers device-mapper (dm_mod loaded or built in)."""
    if os.path.exists("/sys/class/misc/device-mapper"):
        return True
    try:
        with open("/proc/misc") as f:
            return any(line.split()[-1:] == ["device-mapper"] for line in f)
    except OSError:
        return False


async def activation_possible() -> bool:
    """Can LVM activate LVs here: device-mapper in the kernel and activation enabled?"""
    if not kernel_has_device_mapper():
        return False
    return (await config_value("global/activation")) != "0"


# -- physical volumes and groups ------------------------------------------------------

async def pvcreate(devices: list[str], *, overwrite: bool = False, force: bool = False
                   ) -> None:
    """Make ``devices`` PVs. Only with ``overwrite`` does pvcreate get ``--yes`` (wipe
    the signatures it finds); without, its question is answered "no" and it fails.
    ``force`` (-ff) also takes a PV of another VG."""
    argv = ["pvcreate", *(["--yes"] if overwrite else []), *(["-ff"] if force else [])]
    argv += [_check_device_arg(d) for d in devices]
    await _lvm(argv, f"pvcreate {' '.join(devices)}")


async def pvremove(devices: list[str]) -> None:
    argv = ["pvremove", "--yes", *[_check_device_arg(d) for d in devices]]
    await _lvm(argv, f"pvremove {' '.join(devices)}")


async def vgcreate(vg: str, devices: list[str]) -> None:
    argv = ["vgcreate", validate_vg_name(vg), *[_check_device_arg(d) for d in devices]]
    await _lvm(argv, f"vgcreate {vg}")


async def vgextend(vg: str, devices: list[str]) -> None:
    argv = ["vgextend", validate_vg_name(vg), *[_check_device_arg(d) for d in devices]]
    await _lvm(argv, f"vgextend {vg}")


async def vgreduce(vg: str, device: str) -> None:
    await _lvm(["vgreduce", "--yes", validate_vg_name(vg), _check_device_arg(device)],
               f"vgreduce {vg} {device}")


async def vgremove(vg: str) -> None:
    """Remove an (empty) VG; never with --force: LVs are the caller's to delete first."""
    await _lvm(["vgremove", "--yes", validate_vg_name(vg)], f"vgremove {vg}")


async def vgchange_activate(vg: str, active: bool) -> None:
    await _lvm(["vgchange", "--yes", "-ay" if active else "-an", validate_vg_name(vg)],
               f"{'activating' if active else 'deactivating'} volume group '{vg}'")


def pvmove_timeout(used_bytes: int) -> float:
    return PVMOVE_BASE_TIMEOUT + used_bytes / PVMOVE_MIN_RATE


async def pvmove(device: str, used_bytes: int) -> None:
    """Move every extent off ``device`` to other PVs of its VG (needs device-mapper:
    on a metadata-only host pvmove leaves a half-done move in the metadata)."""
    await _lvm(["pvmove", "--yes", "-i", "0", _check_device_arg(device)],
               f"pvmove {device}", timeout=pvmove_timeout(used_bytes))


# -- logical volumes ----------------------------------------------------------------

async def lvcreate(vg: str, name: str, size: int) -> None:
    """A linear LV of ``size`` bytes (rounded up to whole extents by LVM)."""
    await _lvm(["lvcreate", "--yes", "-n", validate_lv_name(name, vg), "-L", size_arg(size),
                validate_vg_name(vg)], f"lvcreate {vg}/{name}")


async def lvcreate_thin_pool(vg: str, name: str, size: int) -> None:
    await _lvm(["lvcreate", "--yes", "--type", "thin-pool", "-n", validate_lv_name(name, vg),
                "-L", size_arg(size), validate_vg_name(vg)], f"lvcreate thin pool {vg}/{name}")


async def lvcreate_thin(vg: str, thin_pool: str, name: str, virtual_size: int) -> None:
    """A thin LV of ``virtual_size`` bytes in ``vg/thin_pool``."""
    await _lvm(["lvcreate", "--yes", "-n", validate_lv_name(name, vg), "-V",
                size_arg(virtual_size), "--thinpool",
                f"{validate_vg_name(vg)}/{validate_lv_name(thin_pool)}"],
               f"lvcreate thin volume {vg}/{name}")


async def lvcreate_snapshot(vg: str, origin: str, name: str, size: int | None, *,
                            thin: bool = False) -> None:
    """A snapshot of ``vg/origin``.

    With ``size``: a thick snapshot whose copy-on-write area holds ``size`` bytes. Without:
    a thin snapshot when the origin is thin (``thin``), created without LVM's
    activation-skip flag so that it activates with its VG like any other volume; else a
    thick one whose copy-on-write area is as large as its origin, so it never fills up.
    """
    argv = ["lvcreate", "--yes", "-s", "-n", validate_lv_name(name, vg)]
    if size is not None:
        argv += ["-L", size_arg(size)]
    elif thin:
        argv += ["--setactivationskip", "n"]
    else:
        argv += ["-l", "100%ORIGIN"]
    argv.append(f"{validate_vg_name(vg)}/{validate_lv_name(origin)}")
    await _lvm(argv, f"snapshot {vg}/{name} of {origin}")


async def lvextend(vg: str, name: str, size: int) -> None:
    await _lvm(["lvextend", "--yes", "-L", size_arg(size),
                f"{validate_vg_name(vg)}/{validate_lv_name(name)}"], f"lvextend {vg}/{name}")


async def lvreduce(vg: str, name: str, size: int) -> None:
    """Shrink ``vg/name`` to ``size``: data past the new end is lost (callers ask first)."""
    await _lvm(["lvreduce", "--yes", "-L", size_arg(size),
                f"{validate_vg_name(vg)}/{validate_lv_name(name)}"], f"lvreduce {vg}/{name}")


async def lvremove(vg: str, name: str) -> None:
    """Remove one LV. ``--yes`` also answers "remove its snapshots too?": callers check
    for snapshots first."""
    await _lvm(["lvremove", "--yes", f"{validate_vg_name(vg)}/{validate_lv_name(name)}"],
               f"lvremove {vg}/{name}")
