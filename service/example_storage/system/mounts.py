"""The mount table (/proc/self/mountinfo) and mount/umount."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ..errors import Busy, CommandFailed, InvalidArgument
from .runner import run_command

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def devno(self) -> int:
        return os.makedev(self.major, self.minor)


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012``, ``\\134``)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _split_opts(text: str) -> tuple[str, ...]:
    return tuple(o for o in text.split(",") if o)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the text of /proc/<pid>/mountinfo; malformed lines are skipped."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        try:
            major, minor = (int(x) for x in fields[2].split(":", 1))
            entry = MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                major=major,
                minor=minor,
                root=unescape(fields[3]),
                mount_point=unescape(fields[4]),
                options=_split_opts(fields[5]),
                optional_fields=tuple(fields[6:sep]),
                fstype=fields[sep + 1],
                source=unescape(fields[sep + 2]),
                super_options=_split_opts(fields[sep + 3]) if len(fields) > sep + 3 else (),
            )
        except ValueError:
            continue
        entries.append(entry)
    return entries


def read_mountinfo() -> str:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _entries(mountinfo_text: str | None) -> list[MountEntry]:
    return parse_mountinfo(read_mountinfo() if mountinfo_text is None else mountinfo_text)


def find_mount(mount_point: str, mountinfo_text: str | None = None) -> MountEntry | None:
    """The mount visible at ``mount_point`` (the topmost if several are stacked), or None."""
    want = os.path.normpath(mount_point)
    found = None
    for entry in _entries(mountinfo_text):
        if os.path.normpath(entry.mount_point) == want:
            found = entry  # later lines are mounted on top of earlier ones
    return found


def _devno_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def mounts_of_source(device_path: str, mountinfo_text: str | None = None) -> list[MountEntry]:
    """Every mount of ``device_path``: same major:minor as the block device, or same source."""
    devno = _devno_of(device_path)
    names = {device_path, os.path.realpath(device_path)}
    return [
        e
        for e in _entries(mountinfo_text)
        if (devno is not None and e.devno == devno) or e.source in names
    ]


def mounts_of_devno(devno: int, mountinfo_text: str | None = None) -> list[MountEntry]:
    return [e for e in _entries(mountinfo_text) if e.devno == devno]


def is_mount_point(path: str, mountinfo_text: str | None = None) -> bool:
    return find_mount(path, mountinfo_text) is not None


async def mount(
    source: str,
    target: str,
    fstype: str | None,
    options: list[str],
    *,
    timeout: float = 120,
) -> None:
    """``mount [-t FSTYPE] [-o OPTS] SOURCE TARGET``; fstype None or 'auto' lets mount probe."""
    for opt in options:
        if not opt or any(c in opt for c in ("\0", "\n")):
            raise InvalidArgument(f"invalid mount option {opt!r}")
    argv = ["mount"]
    if fstype and fstype != "auto":
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    argv += ["--", source, target]
    await run_command(argv, timeout=timeout)


async def unmount(
    target: str, *, force: bool = False, lazy: bool = False, timeout: float = 120
) -> None:
    """``umount [-f] [-l] TARGET``; a busy filesystem raises Busy with umount's words."""
    argv = ["umount"]
    if force:
        argv.append("-f")
    if lazy:
        argv.append("-l")
    argv += ["--", target]
    try:
        await run_command(argv, timeout=timeout)
    except CommandFailed as exc:
        if "busy" in exc.stderr.lower():
            raise Busy(f"cannot unmount {target}: {exc.stderr.strip()}") from None
        raise
