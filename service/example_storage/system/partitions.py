"""Partition tables: read, change, and keep the kernel's partition nodes in step.

Reading uses ``sfdisk -J`` (JSON: the label, the exact partition type codes and GUIDs)
and ``parted -m ... unit B print free`` (the free regions, exactly as libvirt's
parthelper sees them through libparted). Changes use parted (mklabel, mkpart, rm: it
tells the kernel through BLKPG, so ``/dev/<disk>pN`` appears at once) and sfdisk
(type, size of one existing partition), always followed by ``partx`` so the kernel's
view matches the table even on kernels that cannot parse partition tables themselves.

The parsers are pure functions of the tools' text; sizes are bytes everywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field

from ..errors import CommandFailed, Failed
from .runner import run_command

TOOL_TIMEOUT = 60.0
MiB = 1024 * 1024
SYSFS_SECTOR = 512                    # sysfs start/size are always in 512-byte units
NODE_WAIT = 5.0                       # how long a new partition node may take to appear

# sfdisk's / parted's words for "there is no partition table on this device".
_NO_TABLE = ("does not contain a recognized partition table", "unrecognised disk label")


# --- data ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """One entry of a partition table (sizes in bytes, ``end`` exclusive)."""

    number: int
    start: int
    size: int
    type: str          # dos: lower-case hex without 0x ('83'); gpt: upper-case type GUID
    node: str = ""     # sfdisk's idea of the device node
    uuid: str = ""     # GPT partition UUID (PARTUUID)
    name: str = ""     # GPT partition name

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class PartitionTable:
    label: str                          # 'dos', 'gpt', 'sun', 'sgi'
    id: str
    sector_size: int
    partitions: list[Partition] = field(default_factory=list)
    first_usable: int | None = None     # gpt: first usable byte
    last_usable_end: int | None = None  # gpt: end (exclusive) of the last usable sector

    def by_number(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)

    def extended(self) -> Partition | None:
        """The dos extended partition, if there is one."""
        if self.label != "dos":
            return None
        return next((p for p in self.partitions if p.type in DOS_EXTENDED), None)

    def logicals(self) -> list[Partition]:
        return [p for p in self.partitions if self.label == "dos" and p.number > 4]


@dataclass(frozen=True)
class FreeRegion:
    """Free space as parted reports it: [start, end) in bytes."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class PartedLayout:
    """The parts of ``parted -m unit B print free`` this service uses."""

    size: int                   # the device's size in bytes
    logical_sector_size: int
    physical_sector_size: int
    label: str                  # parted's word: 'gpt', 'msdos', 'loop', 'unknown', ...
    free: list[FreeRegion] = field(default_factory=list)
    partitions: dict[int, FreeRegion] = field(default_factory=dict)   # number -> extent


@dataclass(frozen=True)
class KernelPartition:
    """A partition the kernel knows (sysfs), in bytes."""

    number: int
    name: str
    start: int
    size: int
    devno: int = 0


# --- partition types ----------------------------------------------------------------------

GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
GPT_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
GPT_RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
GPT_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"

DOS_EXTENDED = frozenset({"5", "f", "85"})

# libvirt's disk volume format -> partition type to create. 'none' is plain Linux data.
_CREATE_TYPE: dict[str, dict[str, str]] = {
    "dos": {"none": "83", "linux": "83", "fat16": "e", "fat32": "c", "linux-swap": "82",
            "linux-lvm": "8e", "linux-raid": "fd"},
    "gpt": {"none": GPT_LINUX, "linux": GPT_LINUX, "fat16": GPT_BASIC_DATA,
            "fat32": GPT_BASIC_DATA, "linux-swap": GPT_SWAP, "linux-lvm": GPT_LVM,
            "linux-raid": GPT_RAID},
}
# Partition type -> libvirt's disk volume format; anything else reads as 'none'.
# GPT's "basic data" type does not say which FAT (or NTFS) it holds: it reads as fat32.
_READ_FORMAT: dict[str, dict[str, str]] = {
    "dos": {"83": "linux", "82": "linux-swap", "8e": "linux-lvm", "fd": "linux-raid",
            "1": "fat16", "4": "fat16", "6": "fat16", "e": "fat16", "14": "fat16",
            "16": "fat16", "1e": "fat16", "b": "fat32", "c": "fat32", "1b": "fat32",
            "1c": "fat32", "5": "extended", "f": "extended", "85": "extended"},
    "gpt": {GPT_LINUX: "linux", GPT_SWAP: "linux-swap", GPT_LVM: "linux-lvm",
            GPT_RAID: "linux-raid", GPT_BASIC_DATA: "fat32"},
}


def volume_format(label: str, ptype: str) -> str:
    """libvirt's volume format name for a partition of type ``ptype``."""
    return _READ_FORMAT.get(label, {}).get(normalize_type(label, ptype), "none")


def partition_type_for(label: str, fmt: str) -> str | None:
    """The partition type that makes a volume of format ``fmt``; None if this table
    type cannot express it (an extended partition, say)."""
    return _CREATE_TYPE.get(label, {}).get(fmt)


def normalize_type(label: str, ptype: str) -> str:
    if label == "dos":
        t = ptype.strip().lower().removeprefix("0x").lstrip("0")
        return t or "0"
    return ptype.strip().upper()


def partition_name(disk_name: str, number: int) -> str:
    """The kernel's name for partition ``number`` of ``disk_name`` (libvirt's rule too):
    'p' between them when the disk's name ends in a digit (loop3p1, nvme0n1p2, sda1)."""
    sep = "p" if disk_name[-1:].isdigit() else ""
    return f"{disk_name}{sep}{number}"


# --- parsers ------------------------------------------------------------------------------

_TRAILING_NUMBER = re.compile(r"([0-9]+)$")


def parse_sfdisk_json(text: str) -> PartitionTable:
    """``sfdisk -J DEVICE`` output -> PartitionTable (sizes converted to bytes)."""
    try:
        doc = json.loads(text)
        pt = doc["partitiontable"]
        label = str(pt["label"])
        sector = int(pt.get("sectorsize", 512))
    except (ValueError, KeyError, TypeError) as exc:
        raise Failed(f"cannot parse sfdisk output: {exc}") from None
    if pt.get("unit", "sectors") != "sectors" or sector <= 0:
        raise Failed(f"unexpected sfdisk units: {pt.get('unit')!r}, sector size {sector}")
    table = PartitionTable(label=label, id=str(pt.get("id", "")), sector_size=sector)
    if "firstlba" in pt and "lastlba" in pt:
        table.first_usable = int(pt["firstlba"]) * sector
        table.last_usable_end = (int(pt["lastlba"]) + 1) * sector
    for entry in pt.get("partitions", []):
        node = str(entry.get("node", ""))
        m = _TRAILING_NUMBER.search(node)
        if not m:
            raise Failed(f"cannot tell the partition number of '{node}' from sfdisk")
        try:
            table.partitions.append(Partition(
                number=int(m.group(1)),
                start=int(entry["start"]) * sector,
                size=int(entry["size"]) * sector,
                type=normalize_type(label, str(entry.get("type", ""))),
                node=node,
                uuid=str(entry.get("uuid", "")),
                name=str(entry.get("name", "")),
            ))
        except (KeyError, ValueError, TypeError) as exc:
            raise Failed(f"cannot parse sfdisk partition entry {entry!r}: {exc}") from None
    table.partitions.sort(key=lambda p: p.number)
    return table


def _bytes(field_text: str) -> int:
    if not field_text.endswith("B"):
        raise ValueError(f"not a byte count: {field_text!r}")
    return int(field_text[:-1])


def parse_parted_machine(text: str, device: str) -> PartedLayout:
    """``parted -s -m DEVICE unit B print free`` output -> PartedLayout.

    Lines end in ';'. After 'BYT;' comes the device line
    ``path:size:transport:lss:pss:label:model:flags;`` (``device`` is passed so that a
    path containing ':' is no problem), then one line per partition
    ``number:start:end:size:fs:name:flags;`` or free region ``1:start:end:size:free;``
    (end inclusive, so regions are returned with end + 1).
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    try:
        i = lines.index("BYT;")
    except ValueError:
        raise Failed("cannot parse parted output: no 'BYT;' line") from None
    if len(lines) <= i + 1 or not lines[i + 1].startswith(device + ":"):
        raise Failed(f"cannot parse parted output: no line for {device}")
    dev_fields = lines[i + 1][len(device) + 1:].rstrip(";").split(":")
    try:
        layout = PartedLayout(
            size=_bytes(dev_fields[0]),
            logical_sector_size=int(dev_fields[2]),
            physical_sector_size=int(dev_fields[3]),
            label=dev_fields[4],
        )
    except (IndexError, ValueError) as exc:
        raise Failed(f"cannot parse parted device line: {exc}") from None
    for line in lines[i + 2:]:
        fields = line.rstrip(";").split(":")
        if len(fields) < 5:
            continue
        try:
            number = int(fields[0])
            region = FreeRegion(_bytes(fields[1]), _bytes(fields[2]) + 1)
        except ValueError:
            continue
        if fields[4] == "free" and len(fields) == 5:
            layout.free.append(region)
        else:
            layout.partitions[number] = region
    return layout


def parse_sysfs_partitions(entries: dict[str, dict[str, str]]) -> list[KernelPartition]:
    """{child name: {'partition': N, 'start': S, 'size': Z, 'dev': 'MAJ:MIN'}} (the text
    of sysfs files) -> the kernel's partitions, in bytes, sorted by number."""
    found = []
    for name, files in entries.items():
        try:
            major, minor = (int(x) for x in files["dev"].split(":"))
            found.append(KernelPartition(
                number=int(files["partition"]),
                name=name,
                start=int(files["start"]) * SYSFS_SECTOR,
                size=int(files["size"]) * SYSFS_SECTOR,
                devno=os.makedev(major, minor),
            ))
        except (KeyError, ValueError):
            continue
    return sorted(found, key=lambda k: k.number)


def is_no_table_error(stderr: str) -> bool:
    return any(s in stderr for s in _NO_TABLE)


# --- free space arithmetic (pure) ---------------------------------------------------------

def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment


def aligned(region: FreeRegion, alignment: int = MiB) -> FreeRegion | None:
    """The part of ``region`` whose start and end lie on ``alignment``; None if empty."""
    start, end = align_up(region.start, alignment), align_down(region.end, alignment)
    return FreeRegion(start, end) if end > start else None


def outside(region: FreeRegion, container: Partition | None) -> bool:
    """True when ``region`` does not lie inside ``container`` (a dos extended partition)."""
    if container is None:
        return True
    return region.end <= container.start or region.start >= container.end


def best_fit(regions: list[FreeRegion], size: int) -> FreeRegion | None:
    """The smallest region that holds ``size`` bytes (libvirt's choice), else None."""
    fitting = [r for r in regions if r.size >= size]
    return min(fitting, key=lambda r: (r.size, r.start)) if fitting else None


def lowest_free_number(used: set[int], limit: int) -> int | None:
    return next((n for n in range(1, limit + 1) if n not in used), None)


# --- commands -----------------------------------------------------------------------------

async def read_table(device: str) -> PartitionTable | None:
    """The partition table on ``device``; None when it carries none."""
    result = await run_command(["sfdisk", "-J", "--", device], timeout=TOOL_TIMEOUT,
                               check=False)
    if result.returncode != 0:
        if is_no_table_error(result.stderr):
            return None
        raise CommandFailed(result.argv, result.returncode, result.stderr)
    return parse_sfdisk_json(result.stdout)


async def read_layout(device: str) -> PartedLayout:
    """Free regions and partition extents as parted sees them."""
    result = await run_command(
        ["parted", "-s", "-m", "--", device, "unit", "B", "print", "free"],
        timeout=TOOL_TIMEOUT,
    )
    return parse_parted_machine(result.stdout, device)


async def make_label(device: str, label: str) -> None:
    """A new, empty partition table ('gpt' or 'msdos')."""
    await run_command(["parted", "-s", "--", device, "mklabel", label], timeout=TOOL_TIMEOUT)


async def add_partition(device: str, start: int, size: int) -> None:
    """A primary partition over bytes [start, start + size) (parted: BLKPG adds the node)."""
    await run_command(
        ["parted", "-s", "--", device, "unit", "B", "mkpart", "primary",
         f"{start}B", f"{start + size - 1}B"],
        timeout=TOOL_TIMEOUT,
    )


async def remove_partition(device: str, number: int) -> None:
    await run_command(["parted", "-s", "--", device, "rm", str(number)], timeout=TOOL_TIMEOUT)


async def set_type(device: str, number: int, ptype: str) -> None:
    """Change the type of one partition (the kernel does not care: no re-read)."""
    await run_command(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--part-type", "--", device,
         str(number), ptype],
        timeout=TOOL_TIMEOUT,
    )


async def set_size(device: str, number: int, sectors: int) -> None:
    """Give partition ``number`` a new size in sectors, keeping its start."""
    await run_command(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "-N", str(number), "--", device],
        input=f",{sectors}\n".encode(),
        timeout=TOOL_TIMEOUT,
    )


async def wipe_signatures(device: str) -> None:
    """Erase every signature (partition tables included) wipefs finds on ``device``."""
    await run_command(["wipefs", "-a", "-q", "--", device], timeout=TOOL_TIMEOUT)


# --- the kernel's view --------------------------------------------------------------------

def kernel_partitions(devno: int) -> list[KernelPartition]:
    """The partitions of the disk ``devno`` that the kernel knows (sysfs)."""
    base = f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}"
    entries: dict[str, dict[str, str]] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        files = {}
        for key in ("partition", "start", "size", "dev"):
            try:
                with open(os.path.join(base, name, key)) as f:
                    files[key] = f.read().strip()
            except OSError:
                break
        else:
            entries[name] = files
    return parse_sysfs_partitions(entries)


def kernel_mismatch(table: PartitionTable | None, kernel: list[KernelPartition]
                    ) -> list[str]:
    """How the kernel's partitions differ from the table (empty: in step). The kernel
    gives an extended partition only 1 KiB, so only its start is compared."""
    wanted = {p.number: p for p in (table.partitions if table else [])}
    have = {k.number: k for k in kernel}
    problems = []
    for number, part in wanted.items():
        k = have.get(number)
        if k is None:
            problems.append(f"partition {number} is missing")
        elif k.start != part.start or (k.size != part.size and part.type not in DOS_EXTENDED):
            problems.append(f"partition {number} has the wrong extent")
    problems += [f"partition {n} is not in the table" for n in have if n not in wanted]
    return problems


def _nodes_missing(kernel: list[KernelPartition]) -> list[str]:
    return [k.name for k in kernel if not os.path.exists(os.path.join("/dev", k.name))]


async def sync_kernel(device: str, devno: int, table: PartitionTable | None) -> None:
    """Make the kernel's partitions (and their /dev nodes) match ``table``: ``partx -u``
    (or ``partx -d`` for an empty table) when they differ, then wait for the nodes."""
    kernel = kernel_partitions(devno)
    if kernel_mismatch(table, kernel):
        if table and table.partitions:
            await run_command(["partx", "-u", "--", device], timeout=TOOL_TIMEOUT)
            # partx 2.38 -u only adds partitions numbered up to the count of entries
            # (a dos table's logical partitions 5+ can be left out): add those one by one.
            have = {k.number for k in kernel_partitions(devno)}
            for part in table.partitions:
                if part.number not in have:
                    await run_command(["partx", "-a", "--nr", str(part.number), "--", device],
                                      timeout=TOOL_TIMEOUT)
        elif kernel:
            await run_command(["partx", "-d", "--", device], timeout=TOOL_TIMEOUT)
        kernel = kernel_partitions(devno)
        problems = kernel_mismatch(table, kernel)
        if problems:
            raise Failed(f"the kernel's partitions of {device} do not match its partition "
                         f"table after partx: {'; '.join(problems)}")
    deadline = time.monotonic() + NODE_WAIT
    while missing := _nodes_missing(kernel):
        if time.monotonic() > deadline:
            raise Failed(f"partition nodes did not appear: {', '.join(missing)}")
        await asyncio.sleep(0.02)
