"""One storage pool: its definitions, state machine, volumes and lock.

States: inactive -> (building -> inactive) -> running -> inactive; a running pool
whose storage vanished becomes inaccessible. Every mutation takes the pool's lock,
so two callers never build, start or change volumes of one pool at the same time.
The exception: a backend whose volumes are independent files (``concurrent_volume_ops``:
dir, fs, netfs) creates and deletes volumes under the lock's shared mode
(``volume_lock()``), side by side; the pool keeps their names apart (``_busy_names``)
and anything exclusive still waits for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..backends import overwrite
from ..backends.base import Backend, PoolDevice, PoolStats, RefreshResult
from ..errors import AlreadyExists, Busy, InvalidArgument, InvalidState, NotFound
from ..model.definitions import PoolDefinition, PoolSource, SourceDevice, VolumeDefinition
from ..model.names import validate_name
from ..model.volxml import parse_volume_xml
from .poollock import PoolLock

if TYPE_CHECKING:
    from .config_store import PoolConfigStore
    from .events import ListenerSet

log = logging.getLogger(__name__)

INACTIVE = "inactive"
BUILDING = "building"
RUNNING = "running"
DEGRADED = "degraded"
INACCESSIBLE = "inaccessible"
ACTIVE_STATES = (RUNNING, DEGRADED)

# How often a running pool whose backend sets ``polls_luns`` (iscsi-direct) re-lists its
# LUNs to notice ones added or removed on the target (seconds; Pool.Start's option
# 'lun-poll-interval' overrides it for that run, 0 turns the check off; the run's value
# is kept beside the pool's runtime state, so a daemon restart resumes with it).
DEFAULT_LUN_POLL_INTERVAL = 5.0
MAX_LUN_POLL_INTERVAL = 86400.0


class StoragePool:
    def __init__(
        self,
        definition: PoolDefinition,
        backend: Backend,
        store: PoolConfigStore,
        listeners: ListenerSet,
        *,
        persistent: bool,
        autostart: bool = False,
    ) -> None:
        self.definition = definition            # what runs now (or would run next)
        self.pending_definition: PoolDefinition | None = None   # Define while active
        self.backend = backend
        self.store = store
        self.listeners = listeners
        self.persistent = persistent
        self.autostart = autostart
        self.state = INACTIVE
        self.stats = PoolStats()
        self.volumes: dict[str, VolumeDefinition] = {}
        self.runtime_source: PoolSource | None = None   # as the storage reports it
        self.lost_device = ""          # the device whose loss made the pool inaccessible
        self.devices: list[PoolDevice] = []
        self.lock = PoolLock()
        self._busy_names: set[str] = set()   # volumes being created or deleted right now
        self.lun_poll_interval = DEFAULT_LUN_POLL_INTERVAL
        self._lun_poll: asyncio.Task | None = None

    # -- read-only views ----------------------------------------------------
    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> str:
        return self.definition.uuid or ""

    @property
    def type(self) -> str:
        return self.definition.type

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def target_path(self) -> str:
        target = self.definition.target
        return (target.path if target else None) or ""

    def xml_definition(self, inactive: bool = False) -> PoolDefinition:
        """The definition to show, with current figures (libvirt's GetXMLDesc)."""
        if inactive and self.persistent:
            return copy.deepcopy(self.pending_definition or self.definition)
        shown = copy.deepcopy(self.definition)
        if self.active and self.runtime_source is not None:
            shown.source = copy.deepcopy(self.runtime_source)
        shown.capacity = self.stats.capacity
        shown.allocation = self.stats.allocation
        shown.available = self.stats.available
        return shown

    def volume(self, name: str) -> VolumeDefinition:
        try:
            return self.volumes[name]
        except KeyError:
            raise NotFound(f"pool '{self.name}' has no volume '{name}'") from None

    def volume_lock(self):
        """What CreateVolume and Delete hold: the lock's shared mode when the backend can
        create and delete volumes side by side, else the lock itself."""
        if getattr(self.backend, "concurrent_volume_ops", False):
            return self.lock.shared()
        return self.lock

    @contextlib.contextmanager
    def _claim(self, name: str) -> Iterator[None]:
        """Keep ``name`` to one create or delete at a time (under volume_lock's shared
        mode several run at once); callers checked it is free."""
        self._busy_names.add(name)
        try:
            yield
        finally:
            self._busy_names.discard(name)

    # -- state helpers ------------------------------------------------------
    def _require_active(self, what: str) -> None:
        if not self.active:
            raise InvalidState(f"pool '{self.name}' is {self.state}; {what} needs it running")

    def _require_inactive(self, what: str) -> None:
        if self.state != INACTIVE:
            raise InvalidState(f"pool '{self.name}' is {self.state}; {what} needs it inactive")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.listeners.pool_changed(self)

    # -- pool operations (callers hold self.lock) ---------------------------
    async def build(self, overwrite: bool) -> None:
        self._require_inactive("Build")
        self._set_state(BUILDING)
        try:
            await self.backend.build(self.definition, overwrite)
        finally:
            self._set_state(INACTIVE)

    async def start(self) -> None:
        if self.state == INACCESSIBLE:
            # its storage went away while it ran: clear what is left (a stale mount)
            await self._stop_quietly()
            self.mark_inactive()
        self._require_inactive("Start")
        if self.pending_definition is not None:
            self.definition, self.pending_definition = self.pending_definition, None
        await self.backend.start(self.definition)
        try:
            result = await self.backend.refresh(self.definition)
        except BaseException:
            await self._stop_quietly()
            raise
        self.store.save_state(self.definition)
        if getattr(self.backend, "polls_luns", False):
            self.store.save_runtime(self.name, {"lun-poll-interval": self.lun_poll_interval})
        self.state = RUNNING
        self._apply_refresh(result)
        self.listeners.pool_changed(self)
        self._start_lun_poll()

    async def stop(self, force: bool = False) -> None:
        if self.state not in (*ACTIVE_STATES, INACCESSIBLE):
            raise InvalidState(f"pool '{self.name}' is {self.state}; it is not running")
        if force:
            await self.backend.stop(self.definition, force=True)   # also clears a stale mount
        elif self.state != INACCESSIBLE:
            await self.backend.stop(self.definition)
        self.mark_inactive()

    def mark_lost_device(self, path: str, remaining: int) -> None:
        """A device the running pool is built on went away (core/device_follower.py)."""
        self.lost_device = path
        if remaining > 0:
            self._set_state(DEGRADED)
            return
        self._stop_lun_poll()
        self._drop_volumes()
        self.stats = PoolStats()
        self.runtime_source = None
        self.devices = []
        self._set_state(INACCESSIBLE)

    def mark_inactive(self) -> None:
        """Forget runtime state: volumes gone, figures zero, state file removed."""
        self._stop_lun_poll()
        self.store.remove_state(self.name)
        self.lost_device = ""
        self._drop_volumes()
        self.stats = PoolStats()
        self.runtime_source = None
        self.devices = []
        if self.pending_definition is not None:
            self.definition, self.pending_definition = self.pending_definition, None
        self.state = INACTIVE
        self.listeners.pool_changed(self)

    async def delete(self) -> None:
        self._require_inactive("Delete")
        await self.backend.delete(self.definition)

    async def refresh(self) -> None:
        self._require_active("Refresh")
        try:
            result = await self.backend.refresh(self.definition)
        except Exception:
            if not await self.backend.is_active(self.definition):   # its storage went away
                self.mark_lost_device(self.target_path, 0)
            raise
        self._apply_lun_refresh(result)
        self.listeners.pool_changed(self)
        self.listeners.pool_refreshed(self)

    async def resume(self) -> bool:
        """After a daemon restart: is the pool recorded as active really active?"""
        try:
            if not await self.backend.is_active(self.definition):
                return False
            result = await self.backend.refresh(self.definition)
        except Exception as e:  # noqa: BLE001 - a broken pool must not stop the daemon
            log.warning("pool %s was active but cannot be resumed: %s", self.name, e)
            return False
        self.state = RUNNING
        self._apply_refresh(result)
        self.lun_poll_interval = self._saved_lun_poll_interval()
        self._start_lun_poll()
        return True

    def _saved_lun_poll_interval(self) -> float:
        """The interval the run being resumed was started with (the default if unknown)."""
        value = self.store.load_runtime(self.name).get("lun-poll-interval")
        if isinstance(value, (int, float)) and 0 <= value <= MAX_LUN_POLL_INTERVAL:
            return float(value)
        return DEFAULT_LUN_POLL_INTERVAL

    async def _stop_quietly(self) -> None:
        try:
            await self.backend.stop(self.definition)
        except Exception as e:  # noqa: BLE001 - the original error matters more
            log.warning("could not undo start of pool %s: %s", self.name, e)

    def _apply_refresh(self, result: RefreshResult) -> None:
        self.stats = result.stats
        self.runtime_source = result.source
        self.devices = result.devices
        fresh = {v.name: v for v in result.volumes}
        for name in list(self.volumes):
            if name not in fresh:
                self.listeners.volume_removed(self, self.volumes.pop(name))
        for name, vol in fresh.items():
            old = self.volumes.get(name)
            self.volumes[name] = vol
            if old is None:
                self.listeners.volume_added(self, vol)
            elif old != vol:
                self.listeners.volume_changed(self, vol)

    def _apply_lun_refresh(self, result: RefreshResult) -> None:
        """Apply a refresh; for a pool whose volumes are LUNs (its backend sets
        ``polls_luns`` or ``lun_volumes``), also tell the listeners which volumes came
        and went (Pool.LunsChanged)."""
        before = set(self.volumes)
        self._apply_refresh(result)
        if not (getattr(self.backend, "polls_luns", False)
                or getattr(self.backend, "lun_volumes", False)):
            return
        added = sorted(set(self.volumes) - before)
        removed = sorted(before - set(self.volumes))
        if added or removed:
            self.listeners.luns_changed(self, added, removed)

    async def relist_luns(self) -> None:
        """Re-read a running pool's LUNs as the host shows them now, without asking the
        storage (the backend's ``relist``: core/lun_follower.py calls this after uevents);
        callers hold self.lock."""
        relist = getattr(self.backend, "relist", None) or self.backend.refresh
        result = await relist(self.definition)
        before = (self.stats, set(self.volumes))
        self._apply_lun_refresh(result)
        if before != (self.stats, set(self.volumes)):
            self.listeners.pool_changed(self)

    # -- the periodic LUN check (iscsi-direct) ----------------------------------
    def _start_lun_poll(self) -> None:
        self._stop_lun_poll()
        if getattr(self.backend, "polls_luns", False) and self.lun_poll_interval > 0:
            self._lun_poll = asyncio.get_running_loop().create_task(self._poll_luns())

    def _stop_lun_poll(self) -> None:
        task, self._lun_poll = self._lun_poll, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _poll_luns(self) -> None:
        """Re-list the LUNs every ``lun_poll_interval`` seconds, under the pool's lock
        (skipping a round while someone else holds it); failures are logged, not fatal."""
        while True:
            await asyncio.sleep(self.lun_poll_interval)
            if self.lock.locked():
                continue
            async with self.lock:
                if not self.active:
                    return
                try:
                    result = await self.backend.refresh(self.definition)
                except Exception as e:  # noqa: BLE001 - try again next round
                    log.warning("LUN check of pool %s failed: %s", self.name, e)
                    continue
                before = (self.stats, set(self.volumes))
                self._apply_lun_refresh(result)
                if before != (self.stats, set(self.volumes)):
                    self.listeners.pool_changed(self)

    def _drop_volumes(self) -> None:
        for name in list(self.volumes):
            self.listeners.volume_removed(self, self.volumes.pop(name))

    async def _update_stats(self) -> None:
        """After a volume change: a pool whose storage reports its own view of the source
        (a disk pool's free extents, partition numbers) is re-read whole, as libvirt
        does; the others only need their figures."""
        if self.runtime_source is not None:
            self._apply_refresh(await self.backend.refresh(self.definition))
        else:
            before = self.stats
            self.stats = await self.backend.stats(self.definition)
            if self.stats == before:
                return   # nothing of the pool changed (a sparse file takes no blocks)
        self.listeners.pool_changed(self)

    # -- volume operations (callers hold self.lock) -------------------------
    def _check_new_name(self, name: str, what: str = "volume name") -> None:
        validate_name(name, what)
        if name in self.volumes:
            raise AlreadyExists(f"pool '{self.name}' already has a volume '{name}'")
        if name in self._busy_names:
            raise AlreadyExists(f"a volume '{name}' is being created in pool '{self.name}'")

    def parse_new_volume(self, xml: str) -> VolumeDefinition:
        vol = parse_volume_xml(xml, self.type)
        self._check_new_name(vol.name)
        if not vol.capacity:
            raise InvalidArgument("the volume XML needs a <capacity> greater than 0")
        return vol

    async def create_volume(self, xml: str) -> VolumeDefinition:
        """Callers hold volume_lock()."""
        self._require_active("CreateVolume")
        vol = self.parse_new_volume(xml)
        with self._claim(vol.name):
            created = await self.backend.create_volume(self.definition, vol)
            return await self._volume_appeared(created)

    async def create_volume_from(self, xml: str, source: VolumeDefinition) -> VolumeDefinition:
        self._require_active("CreateVolumeFrom")
        vol = parse_volume_xml(xml, self.type)
        self._check_new_name(vol.name)
        created = await self.backend.create_volume_from(self.definition, vol, source)
        return await self._volume_appeared(created)

    async def _volume_appeared(self, vol: VolumeDefinition) -> VolumeDefinition:
        self.volumes[vol.name] = vol
        self.listeners.volume_added(self, vol)
        await self._update_stats()
        return vol

    async def delete_volume(self, name: str, zeroed: bool = False) -> None:
        """Delete; ``zeroed`` (libvirt's DELETE_ZEROED): wipe it with zeroes first.
        Callers hold volume_lock() (the lock itself when ``zeroed``)."""
        self._require_active("volume Delete")
        vol = self.volume(name)
        if name in self._busy_names:
            raise Busy(f"volume '{name}' of pool '{self.name}' is busy: another call is "
                       "creating or deleting it")
        with self._claim(name):
            if zeroed:
                await self._wipe(vol, overwrite.ZERO)
            await self.backend.delete_volume(self.definition, vol)
            if self.volumes.get(name) is vol:
                del self.volumes[name]
            self.listeners.volume_removed(self, vol)
        await self._update_stats()

    async def resize_volume(self, name: str, capacity: int, shrink: bool) -> None:
        self._require_active("Resize")
        vol = self.volume(name)
        if capacity <= 0:
            raise InvalidArgument("capacity must be greater than 0")
        if capacity < (vol.capacity or 0) and not shrink:
            raise InvalidArgument(
                f"{capacity} is smaller than the volume's capacity {vol.capacity}; "
                "pass option 'shrink' to cut data off its end"
            )
        updated = await self.backend.resize_volume(self.definition, vol, capacity, shrink)
        self.volumes[name] = updated
        self.listeners.volume_changed(self, updated)
        await self._update_stats()

    async def snapshot_volume(self, name: str, snapshot_name: str, size: int
                              ) -> VolumeDefinition:
        self._require_active("Snapshot")
        origin = self.volume(name)
        self._check_new_name(snapshot_name, "snapshot name")
        if size <= 0:
            raise InvalidArgument("the snapshot size must be greater than 0")
        created = await self.backend.snapshot_volume(self.definition, origin, snapshot_name, size)
        return await self._volume_appeared(created)

    # -- devices (callers hold self.lock) -----------------------------------
    async def add_devices(self, paths: list[str], overwrite: bool) -> None:
        """Grow the pool onto more devices; they join its definition."""
        if self.state not in (INACTIVE, *ACTIVE_STATES):
            raise InvalidState(f"pool '{self.name}' is {self.state}")
        known = {d.path for d in self.definition.source.devices}
        new = [p for p in dict.fromkeys(paths) if p not in known]
        if not new:
            raise InvalidArgument("no device that is not in the pool already")
        await self.backend.add_devices(self.definition, new, overwrite)
        self.definition.source.devices.extend(SourceDevice(path=p) for p in new)
        await self._definition_changed()

    async def remove_device(self, path: str) -> None:
        """Take a device out of the pool (its data is moved off first, or it is refused)."""
        if self.state not in (INACTIVE, *ACTIVE_STATES):
            raise InvalidState(f"pool '{self.name}' is {self.state}")
        devices = self.definition.source.devices
        if path not in {d.path for d in devices}:
            raise NotFound(f"{path} is not a device of pool '{self.name}'")
        if len(devices) == 1:
            raise InvalidState(f"{path} is the last device of pool '{self.name}'; "
                               "delete the pool instead")
        await self.backend.remove_device(self.definition, path)
        self.definition.source.devices = [d for d in devices if d.path != path]
        await self._definition_changed()

    async def _definition_changed(self) -> None:
        """Persist a definition the pool itself changed, and re-read the storage."""
        if self.persistent:
            target = self.pending_definition or self.definition
            if target is not self.definition:
                target.source.devices = copy.deepcopy(self.definition.source.devices)
            self.store.save_config(target)
        if self.active:
            self.store.save_state(self.definition)
            self._apply_refresh(await self.backend.refresh(self.definition))
        self.listeners.pool_changed(self)

    async def wipe_volume(self, name: str, algorithm: str = overwrite.ZERO) -> None:
        """Wipe with ``algorithm`` (backends/overwrite.py: "zero" or "random")."""
        self._require_active("Wipe")
        overwrite.check_algorithm(algorithm)
        vol = self.volume(name)
        await self._wipe(vol, algorithm)
        updated = await self.backend.volume_info(self.definition, name)
        self.volumes[name] = updated
        self.listeners.volume_changed(self, updated)
        await self._update_stats()

    async def _wipe(self, vol: VolumeDefinition, algorithm: str) -> None:
        """backend.wipe_volume; stopped half-way (cancelled, failed), the volume's figures
        are re-read all the same: a part of it may have been written."""
        try:
            await self.backend.wipe_volume(self.definition, vol, algorithm)
        except BaseException:
            await self._reread_volume(vol)
            raise

    # -- data transfer (callers hold self.lock) -------------------------------
    async def upload_volume(self, name: str, fd: int, offset: int, length: int) -> int:
        """Write what ``fd`` holds into the volume at ``offset`` (``length`` bytes, 0: until
        ``fd`` ends; Volume.Upload). The caller owns ``fd``. The volume's figures are
        re-read afterwards, also when the upload stopped half-way."""
        self._require_active("Upload")
        vol = self.volume(name)
        try:
            return await self.backend.upload_volume(self.definition, vol, fd, offset, length)
        finally:
            await self._reread_volume(vol)

    async def download_volume(self, name: str, fd: int, offset: int, length: int) -> int:
        """Write the volume's bytes from ``offset`` (``length``, 0: to the end) into ``fd``
        (Volume.Download). The caller owns ``fd``."""
        self._require_active("Download")
        vol = self.volume(name)
        return await self.backend.download_volume(self.definition, vol, fd, offset, length)

    async def _reread_volume(self, vol: VolumeDefinition) -> None:
        """Announce a volume's new figures (allocation) after its data changed."""
        try:
            updated = await self.backend.volume_info(self.definition, vol.name)
            if self.volumes.get(vol.name) is vol and updated != vol:
                self.volumes[vol.name] = updated
                self.listeners.volume_changed(self, updated)
            await self._update_stats()
        except Exception as e:  # noqa: BLE001 - the transfer's own outcome matters more
            log.info("cannot re-read volume %s after its data changed: %s", vol.name, e)
