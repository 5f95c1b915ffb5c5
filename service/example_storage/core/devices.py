"""The host's block devices: what each is, what is on it, who uses it; kept current
from uevents.

Start-up scans everything (coldplug); afterwards uevents are applied. Without udevd the
properties udev would give come from sysfs and ``blkid -p``, and writes to a device
(mkfs, parted), which make no uevent, are seen through inotify on its node, as udevd
does. Listeners hear ``device_added``, ``device_removed`` and ``device_changed``.

Coalescing: per device, the not yet applied events form a short queue in which a
"change" collapses into a queued change or add, and "add"/"remove" are kept in order
(``PendingEvents``). A change is applied at most once per ``interval`` per device (the
first at once, then one after the interval for everything that came meanwhile), so a
storm of change events costs bounded memory and at most one signal per device and
interval, while the last applied state is read after the last event. If the queues
ever hold more than ``pending_limit`` entries, or the kernel says events were lost,
they are dropped and everything is rescanned instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound, StorageError
from ..system import blkid, hostwatch, mounts, udev
from ..system.sysfs import SysBlock, SysfsReader

if TYPE_CHECKING:
    from .events import ListenerSet
    from .pool import StoragePool

log = logging.getLogger(__name__)

ADD, REMOVE, CHANGE = "add", "remove", "change"
PROBE_TIMEOUT = 10
PROBE_CONCURRENCY = 4
DEFAULT_INTERVAL = 0.2          # seconds between two refreshes of one device
DEFAULT_PENDING_LIMIT = 100_000  # queued add/remove/change entries before a rescan

_MPATH_PREFIX = "mpath-"
_HEX = re.compile(r"^[0-9a-f]+$")


# -- one device ----------------------------------------------------------------
@dataclass(frozen=True)
class BlockDevice:
    """A block device as the service describes it. Empty text/0 means unknown/none."""

    name: str                       # kernel name: "sda", "loop0p1", "dm-0"
    path: str                       # device node: "/dev/sda"
    major_minor: str = ""
    size: int = 0
    type: str = "disk"              # see device_type()
    read_only: bool = False
    removable: bool = False
    wwn: str = ""                   # "0x600a0b8..." (NAA, lower-case hex) or as the device says
    serial: str = ""
    vendor: str = ""
    model: str = ""
    fs_type: str = ""               # blkid TYPE: ext4, xfs, swap, LVM2_member, ...
    fs_usage: str = ""              # filesystem, raid, crypto, other
    fs_uuid: str = ""
    fs_label: str = ""
    pt_type: str = ""               # partition table on this device: gpt, dos
    pt_uuid: str = ""
    part_uuid: str = ""             # this partition's entry in its parent's table
    part_label: str = ""
    part_type: str = ""
    part_number: int = 0
    parent: str = ""                # kernel name of the disk of a partition
    holders: tuple[str, ...] = ()   # kernel names of devices built on this one
    slaves: tuple[str, ...] = ()    # kernel names of devices this one is built on
    dm_name: str = ""
    dm_uuid: str = ""
    backing_file: str = ""          # of a loop device
    scsi_address: str = ""          # H:C:T:L
    diskseq: int = 0
    symlinks: tuple[str, ...] = ()  # /dev/disk/by-*, /dev/mapper/...
    # -- usage: derived from the other devices, the mount table and the pools --
    mount_points: tuple[str, ...] = ()
    in_use_reasons: tuple[str, ...] = ()
    pool: str = ""                  # name of the pool using it
    multipath: str = ""             # the multipath map this device is a path of
    udev_properties: bool = dataclasses.field(default=False, compare=False)

    @property
    def in_use(self) -> bool:
        return bool(self.in_use_reasons)

    @property
    def hidden(self) -> bool:
        """Multipath members are listed through their map only."""
        return bool(self.multipath)

    @property
    def display_name(self) -> str:
        return self.dm_name or self.name


USAGE_FIELDS = ("mount_points", "in_use_reasons", "pool", "multipath")


def device_type(sys: SysBlock) -> str:
    """partition, multipath, dm, loop, md, lun (a SCSI logical unit), rom, ram, nbd, disk."""
    name = sys.name
    if sys.devtype == "partition":
        return "partition"
    if sys.dm_uuid.startswith(_MPATH_PREFIX):
        return "multipath"
    if sys.dm_name or sys.dm_uuid or name.startswith("dm-"):
        return "dm"
    if name.startswith("loop"):
        return "loop"
    if name.startswith("md"):
        return "md"
    if name.startswith("sr"):
        return "rom"
    if sys.scsi_address:
        return "lun"
    if name.startswith(("zram", "ram")):
        return "ram"
    if name.startswith("nbd"):
        return "nbd"
    return "disk"


def normalize_wwn(value: str) -> str:
    """A WWN in one spelling: "naa.600A0B8.." / "0x600a0b8.." / "wwn-0x600a.." become
    "0x600a0b8..", a multipath WWID "3600a0b8.." (SCSI designator type 3 = NAA) too.
    Other identifiers (eui., t10., nvme.) are only lower-cased."""
    text = value.strip().lower()
    text = text.removeprefix("wwn-")
    for prefix in ("naa.", "0x"):
        if text.startswith(prefix) and _HEX.match(text[len(prefix):]):
            return "0x" + text[len(prefix):]
    if text.startswith("3") and len(text) in (17, 33) and _HEX.match(text):
        return "0x" + text[1:]
    return text


def wwn_keys(wwn: str) -> set[str]:
    """The spellings a lookup may use for ``wwn``: the full NAA and udev's ID_WWN (its
    first 64 bits, without the vendor extension)."""
    if not wwn:
        return set()
    full = normalize_wwn(wwn)
    keys = {full}
    if full.startswith("0x") and len(full) == 34:
        keys.add(full[:18])
    return keys


def _udev_content(props: dict[str, str]) -> dict[str, str]:
    """udev's ID_* properties in blkid's names."""
    mapping = {
        "ID_FS_TYPE": "TYPE", "ID_FS_USAGE": "USAGE", "ID_FS_UUID": "UUID",
        "ID_FS_LABEL": "LABEL", "ID_PART_TABLE_TYPE": "PTTYPE", "ID_PART_TABLE_UUID": "PTUUID",
        "ID_PART_ENTRY_UUID": "PART_ENTRY_UUID", "ID_PART_ENTRY_NAME": "PART_ENTRY_NAME",
        "ID_PART_ENTRY_TYPE": "PART_ENTRY_TYPE", "ID_PART_ENTRY_NUMBER": "PART_ENTRY_NUMBER",
    }
    out = {blkid_key: props[key] for key, blkid_key in mapping.items() if props.get(key)}
    if props.get("ID_FS_LABEL_ENC"):
        out["LABEL"] = udev.decode_udev_escapes(props["ID_FS_LABEL_ENC"])
    if props.get("ID_PART_ENTRY_NAME"):
        out["PART_ENTRY_NAME"] = udev.decode_udev_escapes(props["ID_PART_ENTRY_NAME"])
    return out


def has_udev_content(props: dict[str, str]) -> bool:
    return any(k.startswith(("ID_FS_", "ID_PART_")) for k in props)


def describe(sys: SysBlock, content: dict[str, str], udev_props: dict[str, str],
             symlinks: Iterable[str] = ()) -> BlockDevice:
    """A device from what sysfs says, what is on it (blkid's keys) and udev's properties.
    Pure: usage fields stay empty (see compute_usage)."""
    whole = sys.devtype != "partition"
    wwn = ""
    serial = vendor = model = ""
    if whole:
        wwn = (udev_props.get("ID_WWN_WITH_EXTENSION") or udev_props.get("ID_WWN")
               or sys.wwid)
        if not wwn and sys.dm_uuid.startswith(_MPATH_PREFIX):
            wwn = sys.dm_uuid[len(_MPATH_PREFIX):]
        wwn = normalize_wwn(wwn) if wwn else ""
        serial = (udev_props.get("ID_SCSI_SERIAL") or udev_props.get("ID_SERIAL_SHORT")
                  or sys.serial)
        vendor = sys.vendor or udev_props.get("ID_VENDOR", "").replace("_", " ")
        model = sys.model or udev_props.get("ID_MODEL", "").replace("_", " ")
    links = set(symlinks)
    if sys.dm_name:
        links.add("/dev/mapper/" + sys.dm_name)
    number = sys.partition or _int(content.get("PART_ENTRY_NUMBER"))
    return BlockDevice(
        name=sys.name,
        path=sys.node,
        major_minor=sys.major_minor,
        size=sys.size,
        type=device_type(sys),
        read_only=sys.read_only,
        removable=sys.removable,
        wwn=wwn,
        serial=serial,
        vendor=vendor,
        model=model,
        fs_type=content.get("TYPE", ""),
        fs_usage=content.get("USAGE", ""),
        fs_uuid=content.get("UUID", ""),
        fs_label=content.get("LABEL", ""),
        pt_type=content.get("PTTYPE", "") if whole else "",
        pt_uuid=content.get("PTUUID", "") if whole else "",
        part_uuid=content.get("PART_ENTRY_UUID", "") if not whole else "",
        part_label=content.get("PART_ENTRY_NAME", "") if not whole else "",
        part_type=content.get("PART_ENTRY_TYPE", "") if not whole else "",
        part_number=number if not whole else 0,
        parent=sys.parent or "",
        holders=sys.holders,
        slaves=sys.slaves,
        dm_name=sys.dm_name,
        dm_uuid=sys.dm_uuid,
        backing_file=sys.loop_backing_file.removesuffix(" (deleted)"),
        scsi_address=sys.scsi_address,
        diskseq=sys.diskseq or 0,
        symlinks=tuple(sorted(links)),
        udev_properties=has_udev_content(udev_props),
    )


def _int(text: str | None) -> int:
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


# -- usage ------------------------------------------------------------------------
PoolOf = Callable[[str], "StoragePool | None"]


@dataclass(frozen=True)
class HostUsage:
    """What, beside the devices themselves, tells whether a device is in use."""

    mounts: dict[str, tuple[str, ...]]      # "MAJ:MIN" -> mount points
    swaps: frozenset[str] = frozenset()     # device nodes used as swap
    pool_of: PoolOf | None = None


def read_host_usage(pool_of: PoolOf | None) -> HostUsage:
    by_dev: dict[str, list[str]] = {}
    try:
        entries = mounts.parse_mountinfo(mounts.read_mountinfo())
    except OSError:
        entries = []
    for entry in entries:
        points = by_dev.setdefault(f"{entry.major}:{entry.minor}", [])
        if entry.mount_point not in points:
            points.append(entry.mount_point)
    swaps = frozenset(os.path.realpath(p) for p in hostwatch.read_swaps())
    return HostUsage({k: tuple(v) for k, v in by_dev.items()}, swaps, pool_of)


def compute_usage(devices: dict[str, BlockDevice], host: HostUsage
                  ) -> dict[str, BlockDevice]:
    """Every device with its usage fields filled in (pure but for ``pool_of``)."""
    pools: dict[str, tuple[str, bool]] = {}
    if host.pool_of is not None:
        for dev in devices.values():
            pool = host.pool_of(dev.path)
            if pool is not None:
                pools[dev.name] = (pool.name, pool.active)

    def own_reasons(dev: BlockDevice) -> tuple[list[str], str, str]:
        reasons = [f"mounted at {p}" for p in host.mounts.get(dev.major_minor, ())]
        if dev.path in host.swaps:
            reasons.append("active swap")
        if dev.fs_type in ("LVM2_member", "LVM1_member"):
            reasons.append("LVM physical volume")
        multipath = ""
        for holder_name in dev.holders:
            holder = devices.get(holder_name)
            if holder is not None and holder.type == "multipath":
                multipath = holder.name
                reasons.append(f"member of multipath {holder.display_name}")
            else:
                shown = holder.display_name if holder is not None else holder_name
                reasons.append(f"held by {shown}")
        pool_name = ""
        pool = pools.get(dev.name) or pools.get(dev.parent)
        if pool is not None:
            pool_name, active = pool
            if active:
                reasons.append(f"held by pool {pool_name}")
        return reasons, pool_name, multipath

    result: dict[str, BlockDevice] = {}
    for dev in devices.values():
        reasons, pool_name, multipath = own_reasons(dev)
        if dev.type == "multipath":
            dev = _with_paths_identity(dev, devices)
        result[dev.name] = dataclasses.replace(
            dev, mount_points=host.mounts.get(dev.major_minor, ()),
            in_use_reasons=tuple(reasons), pool=pool_name, multipath=multipath)
    # a disk is in use while one of its partitions is
    for dev in devices.values():
        if dev.parent and result[dev.name].in_use and dev.parent in result:
            parent = result[dev.parent]
            note = f"partition {dev.name} in use"
            if note not in parent.in_use_reasons:
                result[dev.parent] = dataclasses.replace(
                    parent, in_use_reasons=parent.in_use_reasons + (note,))
    return result


def _with_paths_identity(dev: BlockDevice, devices: dict[str, BlockDevice]) -> BlockDevice:
    """A multipath map is the LUN its paths lead to: it has their WWN, serial, vendor,
    model where it has none of its own."""
    paths = [devices[n] for n in dev.slaves if n in devices]
    if not paths:
        return dev
    first = paths[0]
    return dataclasses.replace(
        dev, wwn=dev.wwn or first.wwn, serial=dev.serial or first.serial,
        vendor=dev.vendor or first.vendor, model=dev.model or first.model)


# -- lookups ----------------------------------------------------------------------
_BY_LINK = {
    "/dev/disk/by-uuid/": "fs_uuid",
    "/dev/disk/by-partuuid/": "part_uuid",
    "/dev/disk/by-label/": "fs_label",
    "/dev/disk/by-partlabel/": "part_label",
    "/dev/mapper/": "dm_name",
}
_PREFIXED = {"UUID=": "fs_uuid", "PARTUUID=": "part_uuid", "LABEL=": "fs_label",
             "PARTLABEL=": "part_label"}


def _block_rdev(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode) or st.st_rdev == 0:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def same_device(a: str, b: str) -> bool:
    """Whether two paths name the same block device (equal, same target, same node)."""
    if not a or not b:
        return False
    if a == b or os.path.realpath(a) == os.path.realpath(b):
        return True
    rdev = _block_rdev(a)
    return rdev is not None and rdev == _block_rdev(b)


def _field_matches(devices: Iterable[BlockDevice], field: str, value: str,
                   fold: bool = False) -> list[BlockDevice]:
    if not value:
        return []
    if fold:
        value = value.lower()
        return [d for d in devices if getattr(d, field) and getattr(d, field).lower() == value]
    return [d for d in devices if getattr(d, field) == value]


def find_devices(devices: dict[str, BlockDevice], ident: str) -> list[BlockDevice]:
    """Every device ``ident`` names: a path (node, /dev/disk/by-* or any link to the
    node), a kernel or device-mapper name, a WWN, a serial, a filesystem UUID or a
    PARTUUID (also as UUID=..., PARTUUID=..., LABEL=..., PARTLABEL=...)."""
    all_devs = list(devices.values())
    if ident.startswith("/"):
        found = [d for d in all_devs if d.path == ident or ident in d.symlinks]
        if found:
            return found
        if os.path.lexists(ident):
            real = os.path.realpath(ident)
            found = [d for d in all_devs if d.path == real]
            if found:
                return found
            rdev = _block_rdev(ident)
            return [d for d in all_devs if rdev and d.major_minor == rdev]
        # udev's links do not exist without udevd: understand their names anyway
        for prefix, field in _BY_LINK.items():
            if ident.startswith(prefix):
                value = udev.decode_udev_escapes(ident[len(prefix):])
                return _field_matches(all_devs, field, value, fold=field.endswith("uuid"))
        if ident.startswith("/dev/disk/by-id/"):
            rest = ident[len("/dev/disk/by-id/"):]
            if rest.startswith("wwn-"):
                return _by_wwn(all_devs, rest)
            _, _, serialish = rest.partition("-")
            return [d for d in all_devs if d.serial and d.type != "partition"
                    and (serialish == d.serial or serialish.endswith("_" + d.serial))]
        return []
    for prefix, field in _PREFIXED.items():
        if ident.startswith(prefix):
            value = ident[len(prefix):]
            return _field_matches(all_devs, field, value, fold=field.endswith("uuid"))
    if ident in devices:
        return [devices[ident]]
    for finder in (
        lambda: _field_matches(all_devs, "dm_name", ident),
        lambda: _by_wwn(all_devs, ident),
        lambda: [d for d in all_devs if d.serial == ident and d.type != "partition"],
        lambda: _field_matches(all_devs, "fs_uuid", ident, fold=True),
        lambda: _field_matches(all_devs, "part_uuid", ident, fold=True),
    ):
        found = finder()
        if found:
            return found
    return []


def _by_wwn(devices: list[BlockDevice], ident: str) -> list[BlockDevice]:
    wanted = normalize_wwn(ident)
    return [d for d in devices if d.type != "partition" and wanted in wwn_keys(d.wwn)]


def pick_device(found: list[BlockDevice], ident: str,
                devices: dict[str, BlockDevice] | None = None) -> BlockDevice:
    """The one device a lookup means: a multipath map stands for its paths."""
    if not found:
        raise NotFound(f"no block device '{ident[:4096]}'")
    visible = [d for d in found if not d.hidden]
    maps_of_paths = {d.multipath for d in found if d.hidden}
    if len(found) == 1 and ident in (found[0].name, found[0].path):
        return found[0]   # named exactly: a multipath path by its own name or node
    if not visible and len(maps_of_paths) == 1 and devices:
        the_map = devices.get(maps_of_paths.pop())
        if the_map is not None:
            return the_map
    visible = visible or found
    maps = [d for d in visible if d.type == "multipath"]
    if len(maps) == 1:
        return maps[0]
    if len(visible) == 1:
        return visible[0]
    names = ", ".join(sorted(d.name for d in visible))
    raise InvalidArgument(f"'{ident[:4096]}' names several devices: {names}")


# -- the event queue ------------------------------------------------------------------
class PendingEvents:
    """Not yet applied uevents, per device, coalesced (see the module docstring).

    Per device the queue alternates add/remove, with at most one trailing change:
    a change after a queued change or add adds nothing (the add reads the whole state
    anyway), an add or remove drops the changes queued before it.
    """

    def __init__(self, limit: int = DEFAULT_PENDING_LIMIT) -> None:
        self.limit = limit
        self._queues: dict[str, deque[tuple[str, dict[str, str]]]] = {}
        self._count = 0
        self.overflowed = False

    def __len__(self) -> int:
        return self._count

    def push(self, name: str, action: str, props: dict[str, str] | None = None) -> None:
        if action not in (ADD, REMOVE):
            action = CHANGE   # change, move, online, offline...: re-read the device
        queue = self._queues.setdefault(name, deque())
        before = len(queue)
        if action == CHANGE:
            if not (queue and queue[-1][0] in (CHANGE, ADD)):
                queue.append((CHANGE, {}))
        else:
            while queue and queue[-1][0] == CHANGE:
                queue.pop()
            if queue and queue[-1][0] == action:
                if action == ADD:
                    queue[-1] = (ADD, dict(props or {}))
            else:
                queue.append((action, dict(props or {}) if action == ADD else {}))
        self._count += len(queue) - before
        if not queue:
            del self._queues[name]
        if self._count > self.limit:
            self.overflowed = True
            self.clear()

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0

    def names(self) -> list[str]:
        return list(self._queues)

    def head(self, name: str) -> tuple[str, dict[str, str]] | None:
        queue = self._queues.get(name)
        return queue[0] if queue else None

    def pop(self, name: str) -> tuple[str, dict[str, str]]:
        queue = self._queues[name]
        item = queue.popleft()
        self._count -= 1
        if not queue:
            del self._queues[name]
        return item

    def actions(self, name: str) -> list[str]:
        return [a for a, _ in self._queues.get(name, ())]


# -- the registry -----------------------------------------------------------------------
Prober = Callable[[str], Awaitable[dict[str, str]]]


async def blkid_probe(node: str) -> dict[str, str]:
    try:
        return await blkid.probe(node, timeout=PROBE_TIMEOUT)
    except StorageError as exc:
        log.debug("cannot probe %s: %s", node, exc)
        return {}


class DeviceRegistry:
    """All block devices of the host, by kernel name."""

    def __init__(
        self,
        listeners: ListenerSet,
        *,
        pool_of: PoolOf | None = None,
        sysfs: SysfsReader | None = None,
        prober: Prober = blkid_probe,
        interval: float = DEFAULT_INTERVAL,
        pending_limit: int = DEFAULT_PENDING_LIMIT,
        host_usage: Callable[[PoolOf | None], HostUsage] = read_host_usage,
        udev_root: str = "/",
    ) -> None:
        self.listeners = listeners
        self.pool_of = pool_of
        self.sysfs = sysfs or SysfsReader()
        self.prober = prober
        self.interval = interval
        self.host_usage = host_usage
        self.udev_root = udev_root
        self.devices: dict[str, BlockDevice] = {}
        self.pending = PendingEvents(pending_limit)
        self.source: str | None = None
        self.started = False
        self._last_refresh: dict[str, float] = {}
        self._usage_dirty = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._probe_slots = asyncio.Semaphore(PROBE_CONCURRENCY)
        self._monitor: udev.UeventMonitor | None = None
        self._node_watcher: hostwatch.NodeWatcher | None = None
        self._mount_watcher: hostwatch.MountWatcher | None = None
        self._use_udev_db = False
        listeners.add(self)   # pool events change the devices' Pool and InUse

    # -- life cycle ------------------------------------------------------------------
    async def start(self, source: str | None = "auto", *, watch_host: bool = True) -> None:
        """Listen to uevents (``source``: auto, udev, kernel, or None), scan all
        devices, then apply events as they come."""
        chosen = udev.choose_source(source) if source else None
        self.source = chosen
        self._use_udev_db = chosen == udev.UDEV
        if chosen is not None:
            # listen first: nothing that happens during the scan is missed
            self._monitor = udev.UeventMonitor(chosen, self.handle_uevent)
            self._monitor.start()
            if chosen == udev.KERNEL and watch_host:
                try:
                    self._node_watcher = hostwatch.NodeWatcher(self._node_written)
                    self._node_watcher.start()
                except OSError as exc:
                    log.warning("cannot watch device nodes for writes: %s", exc)
        if watch_host:
            try:
                self._mount_watcher = hostwatch.MountWatcher(self.usage_changed)
                self._mount_watcher.start()
            except OSError as exc:
                log.warning("cannot watch the mount table: %s", exc)
        await self.coldplug()
        self._task = asyncio.ensure_future(self._run())
        self.started = True
        if len(self.pending):
            self._wake.set()

    async def close(self) -> None:
        for watcher in (self._monitor, ):
            if watcher is not None:
                watcher.stop()
        for closable in (self._node_watcher, self._mount_watcher):
            if closable is not None:
                closable.close()
        self._monitor = self._node_watcher = self._mount_watcher = None
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def coldplug(self) -> None:
        """Scan every device now (at start-up, and after lost events)."""
        await self._rescan()

    # -- inputs -------------------------------------------------------------------------
    def handle_uevent(self, event: udev.UEvent) -> None:
        if event.overflow:
            self.pending.overflowed = True
            self.pending.clear()
        elif event.name:
            self.pending.push(event.name, event.action, event.properties)
        self._wake.set()

    def _node_written(self, name: str) -> None:
        self.handle_uevent(udev.UEvent(CHANGE, name))

    def usage_changed(self) -> None:
        """The mount table or a pool changed: recompute every device's usage."""
        self._usage_dirty = True
        self._wake.set()

    # StorageListener events that change usage (the registry listens to the manager)
    def pool_added(self, pool) -> None:
        self.usage_changed()

    def pool_removed(self, pool) -> None:
        self.usage_changed()

    def pool_changed(self, pool) -> None:
        self.usage_changed()

    # -- queries ------------------------------------------------------------------------
    def list(self, include_hidden: bool = False) -> list[BlockDevice]:
        return [d for _, d in sorted(self.devices.items())
                if include_hidden or not d.hidden]

    def get(self, name: str) -> BlockDevice:
        try:
            return self.devices[name]
        except KeyError:
            raise NotFound(f"no block device '{name[:256]}'") from None

    def lookup(self, ident: str) -> BlockDevice:
        if not isinstance(ident, str) or not ident.strip():
            raise InvalidArgument("the device identifier must not be empty")
        return pick_device(find_devices(self.devices, ident.strip()), ident, self.devices)

    # -- the worker -----------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self.pending.overflowed:
                    self.pending.overflowed = False
                    log.warning("too many pending device events: rescanning all devices")
                    await self._rescan()
                    continue
                ready, due = self._take_ready(loop.time())
                if ready or self._usage_dirty:
                    await self._apply_round(ready)
                    if ready:
                        self._wake.set()   # look again: more may be ready now
                        continue
                if due is not None:
                    self._wake_at(due)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watcher must outlive any bad event
                log.exception("applying device events failed")

    def _wake_at(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._wake.set)

    def _take_ready(self, now: float) -> tuple[list[tuple[str, str, dict]], float | None]:
        """One event per device whose head is due; the time the next change is due."""
        ready: list[tuple[str, str, dict]] = []
        due_next: float | None = None
        for name in self.pending.names():
            action, _ = self.pending.head(name)
            if action == CHANGE:
                due = self._last_refresh.get(name, float("-inf")) + self.interval
                if due > now:
                    due_next = due if due_next is None else min(due_next, due)
                    continue
            action, props = self.pending.pop(name)
            ready.append((name, action, props))
        return ready, due_next

    async def _apply_round(self, ready: list[tuple[str, str, dict]]) -> None:
        """Apply one event for each of some devices, then announce what changed.

        Two steps, so that a client hears of a device at once: what sysfs says (size,
        partitions, holders...) is announced first; what is on a device (filesystem,
        partition table: blkid) follows when the probe is done. Until then a device keeps
        the content it had, unless it holds new media (another DISKSEQ): that is unknown.
        A new device is announced once, whole, after its probe.
        """
        loop = asyncio.get_running_loop()
        before = dict(self.devices)
        fresh: dict[str, BlockDevice | None] = {}
        readded: set[str] = set()
        to_probe: list[tuple[SysBlock, dict[str, str], set[str]]] = []
        links = udev.disk_links(self.udev_root) if ready else {}
        for name, action, props in ready:
            self._last_refresh[name] = loop.time()
            if action == REMOVE:
                fresh[name] = None
                continue
            sys = self.sysfs.read(name)
            if sys is None:
                if action == ADD and name not in self.devices:
                    fresh[name] = _minimal_device(name, props)
                continue
            old = self.devices.get(name)
            same_media = old is not None and (old.major_minor, old.diskseq) == (
                sys.major_minor, sys.diskseq or 0)
            if action == ADD and old is not None and not same_media:
                readded.add(name)   # a new device under an old name: the remove was missed
            udev_props, symlinks, content = self._known_content(sys, links)
            if content is None:
                to_probe.append((sys, udev_props, symlinks))
                if name in readded:   # the old one goes now, the new one after its probe
                    readded.discard(name)
                    fresh[name] = None
                if old is None or name in fresh:
                    continue   # a new device is announced whole, after its probe
                content = _content_of(old) if same_media else {}
            fresh[name] = describe(sys, content, udev_props, symlinks)
        self._usage_dirty = False
        self._commit(before, fresh, readded)
        if not to_probe:
            return
        probed = await asyncio.gather(*(self._probe(sys) for sys, _, _ in to_probe))
        before = dict(self.devices)
        fresh = {}
        for (sys, udev_props, symlinks), content in zip(to_probe, probed, strict=True):
            fresh[sys.name] = describe(sys, content, udev_props, symlinks)
        self._commit(before, fresh, set())

    async def _rescan(self) -> None:
        before = dict(self.devices)
        links = udev.disk_links(self.udev_root)
        present = self.sysfs.read_all()
        described = await asyncio.gather(*(self._describe(s, links) for s in present))
        fresh: dict[str, BlockDevice | None] = {name: None for name in before}
        loop = asyncio.get_running_loop()
        for dev in described:
            fresh[dev.name] = dev
            self._last_refresh[dev.name] = loop.time()
        self._usage_dirty = False
        self._commit(before, fresh, set())

    def _commit(self, before: dict[str, BlockDevice], fresh: dict[str, BlockDevice | None],
                readded: set[str]) -> None:
        """Store the new state, recompute usage, emit the events (removals first, then
        additions parents first, then changes)."""
        content = {n: d for n, d in before.items()}
        for name, dev in fresh.items():
            if dev is None:
                content.pop(name, None)
                self._last_refresh.pop(name, None)
            else:
                content[name] = dev
        final = compute_usage(content, self.host_usage(self.pool_of))
        self.devices = final
        removed = [n for n in before if n not in final or n in readded]
        added = [n for n in final if n not in before or n in readded]
        changed = [n for n in final if n in before and n not in readded
                   and final[n] != before[n]]
        for name in sorted(removed, key=_children_first):
            self._unwatch(name)
            self.listeners.device_removed(before[name])
        for name in sorted(added, key=_parents_first):
            self._watch(final[name])
            self.listeners.device_added(final[name])
        for name in sorted(changed, key=_parents_first):
            self.listeners.device_changed(final[name])
        # relatives see new holders/partitions: refresh them (rate-limited as changes)
        for name in set(removed) | set(added):
            dev = final.get(name) or before.get(name)
            for other in (dev.parent, *dev.slaves):
                if other and other in final and other not in fresh:
                    self.pending.push(other, CHANGE)
                    self._wake.set()

    def _known_content(self, sys: SysBlock, links: dict[str, tuple[str, ...]]
                       ) -> tuple[dict[str, str], set[str], dict[str, str] | None]:
        """udev's properties, the device's links, and what is on it if that is known
        without probing (from udev, or nothing on an empty device); None: probe it."""
        record = (udev.read_udev_db(sys.major, sys.minor, self.udev_root)
                  if self._use_udev_db else None)
        props = dict(sys.uevent)
        symlinks = set(links.get(sys.node, ()))
        if record is not None:
            props.update(record.properties)
            symlinks.update(record.symlinks)
        if has_udev_content(props):
            return props, symlinks, _udev_content(props)
        if record is not None or sys.size == 0:
            return props, symlinks, {}   # udevd probed it and found nothing; or empty
        return props, symlinks, None

    async def _probe(self, sys: SysBlock) -> dict[str, str]:
        async with self._probe_slots:
            return await self.prober(sys.node)

    async def _describe(self, sys: SysBlock, links: dict[str, tuple[str, ...]]
                        ) -> BlockDevice:
        props, symlinks, content = self._known_content(sys, links)
        if content is None:
            content = await self._probe(sys)
        return describe(sys, content, props, symlinks)

    def _watch(self, dev: BlockDevice) -> None:
        if self._node_watcher is not None:
            self._node_watcher.watch(dev.name, dev.path)

    def _unwatch(self, name: str) -> None:
        if self._node_watcher is not None:
            self._node_watcher.unwatch(name)


_CONTENT_KEYS = {
    "fs_type": "TYPE", "fs_usage": "USAGE", "fs_uuid": "UUID", "fs_label": "LABEL",
    "pt_type": "PTTYPE", "pt_uuid": "PTUUID", "part_uuid": "PART_ENTRY_UUID",
    "part_label": "PART_ENTRY_NAME", "part_type": "PART_ENTRY_TYPE",
}


def _content_of(dev: BlockDevice | None) -> dict[str, str]:
    """What was probed on ``dev``, in blkid's names (describe's input)."""
    if dev is None:
        return {}
    return {key: getattr(dev, field) for field, key in _CONTENT_KEYS.items()
            if getattr(dev, field)}


def _minimal_device(name: str, props: dict[str, str]) -> BlockDevice:
    """A device that was gone again before it could be read: what its event said."""
    devname = props.get("DEVNAME", name)
    path = devname if devname.startswith("/dev/") else "/dev/" + devname
    mm = f"{props['MAJOR']}:{props['MINOR']}" if "MAJOR" in props and "MINOR" in props else ""
    return BlockDevice(name=name, path=path, major_minor=mm,
                       type="partition" if props.get("DEVTYPE") == "partition" else "disk")


def _parents_first(name: str) -> tuple[int, str]:
    return (len(name), name)


def _children_first(name: str) -> tuple[int, str]:
    return (-len(name), name)
