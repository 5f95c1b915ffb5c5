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
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound, StorageError
from ..system import blkid, hostwatch, udev
from ..system.sysfs import SysBlock, SysfsReader
from .device_events import ADD, CHANGE, DEFAULT_PENDING_LIMIT, REMOVE, PendingEvents
from .device_lookup import find_devices, pick_device
from .device_model import BlockDevice, _udev_content, describe, has_udev_content
from .device_usage import HostUsage, PoolOf, compute_usage, read_host_usage

if TYPE_CHECKING:
    from .events import ListenerSet

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10
PROBE_CONCURRENCY = 4
DEFAULT_INTERVAL = 0.2          # seconds between two refreshes of one device


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

