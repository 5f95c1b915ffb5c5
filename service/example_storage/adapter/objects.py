"""Keeps the exported D-Bus objects in step with core.

Implements core's StorageListener: a pool or volume that appears is exported and
announced with InterfacesAdded from the manager's path; one that goes away is
unexported with InterfacesRemoved; a change is announced with PropertiesChanged
carrying only the properties whose values differ from what was last announced.
"""

import logging

from .bus import MarshalledSignal, MessageBus, Variant, marshal
from .device_iface import DeviceInterface
from .job_iface import JobInterface
from .managed_objects import ObjectEntries
from .paths import (
    MANAGER_PATH,
    OBJECT_MANAGER_IFACE,
    device_path,
    job_path,
    pool_path,
    volume_path,
)
from .pool_iface import PoolInterface
from .properties import ExportedObject
from .volume_iface import VolumeInterface

log = logging.getLogger(__name__)

_INTERFACES_ADDED = MarshalledSignal(MANAGER_PATH, OBJECT_MANAGER_IFACE, "InterfacesAdded",
                                     "oa{sa{sv}}")
_INTERFACES_REMOVED = MarshalledSignal(MANAGER_PATH, OBJECT_MANAGER_IFACE,
                                       "InterfacesRemoved", "oas")


class ObjectTree:
    def __init__(self, bus: MessageBus, service) -> None:
        self.bus = bus
        self.service = service
        self.objects: dict[str, ExportedObject] = {}
        self._announced: dict[str, dict[str, object]] = {}
        # each object's GetManagedObjects entry, also its InterfacesAdded body
        self.entries = ObjectEntries()
        # False while the service starts: it takes its bus name only once everything is
        # exported, and a client learns of the objects by GetManagedObjects when the name
        # appears; signals from a name nobody knows yet would only cost (10,000 volumes:
        # ~0.5 s of start-up spent marshalling InterfacesAdded that no client matches).
        self.announcing = False

    # -- lookups for the interfaces -----------------------------------------
    def volume_at(self, path: str) -> VolumeInterface | None:
        obj = self.objects.get(path)
        return obj if isinstance(obj, VolumeInterface) else None

    # -- export / unexport --------------------------------------------------
    def _export(self, path: str, obj: ExportedObject) -> None:
        if path in self.objects:
            self._unexport(path)
        self.objects[path] = obj
        self.bus.export(path, obj)
        values = obj.property_values()
        self._announced[path] = values
        if self.announcing:
            self.bus.send_signal(_INTERFACES_ADDED,
                                 self.entries.interfaces_added_body(path, obj, values))

    def _unexport(self, path: str) -> None:
        obj = self.objects.pop(path, None)
        if obj is None:
            return
        self._announced.pop(path, None)
        self.entries.forget(path)
        self.bus.unexport(path, obj)
        if self.announcing:
            self.bus.send_signal(_INTERFACES_REMOVED, marshal("oas", [path, [obj.name]]))

    def _changed(self, path: str) -> dict[str, object]:
        """Announce the properties that differ from the last announcement; return them."""
        obj = self.objects.get(path)
        if obj is None:
            return {}
        values = obj.property_values()
        before = self._announced.get(path, {})
        changed = {k: v for k, v in values.items() if before.get(k) != v}
        self._announced[path] = values
        if changed and self.announcing:
            obj.emit_properties_changed(changed)
        return changed

    # -- StorageListener ----------------------------------------------------
    def pool_added(self, pool) -> None:
        self._export(pool_path(pool.name), PoolInterface(pool, self.service))

    def pool_removed(self, pool) -> None:
        for name in list(pool.volumes):
            self._unexport(volume_path(pool.name, name))
        self._unexport(pool_path(pool.name))

    def pool_changed(self, pool) -> None:
        self._changed(pool_path(pool.name))

    def pool_refreshed(self, pool) -> None:
        obj = self.objects.get(pool_path(pool.name))
        if isinstance(obj, PoolInterface):
            obj.Refreshed()

    def volume_added(self, pool, volume) -> None:
        path = volume_path(pool.name, volume.name)
        self._export(path, VolumeInterface(pool, volume.name, self.service))

    def volume_removed(self, pool, volume) -> None:
        self._unexport(volume_path(pool.name, volume.name))

    def volume_changed(self, pool, volume) -> None:
        self._changed(volume_path(pool.name, volume.name))

    # -- long operations (core/jobs.py) -----------------------------------------
    def job_added(self, job) -> None:
        self._export(job_path(job.id), JobInterface(job, self.service))
        self.service.manager_object.jobs_changed()

    def job_changed(self, job) -> None:
        if self.bus.connected:
            self._changed(job_path(job.id))

    def job_removed(self, job) -> None:
        """The last figures, then Completed, then InterfacesRemoved."""
        path = job_path(job.id)
        if not self.bus.connected:    # the daemon is stopping: nobody to tell
            self.objects.pop(path, None)
            self._announced.pop(path, None)
            self.entries.forget(path)
            return
        obj = self.objects.get(path)
        if isinstance(obj, JobInterface):
            self._changed(path)
            obj.Completed(bool(job.success), job.message)
        self._unexport(path)
        self.service.manager_object.jobs_changed()

    def luns_changed(self, pool, added: list[str], removed: list[str]) -> None:
        obj = self.objects.get(pool_path(pool.name))
        if isinstance(obj, PoolInterface):
            obj.LunsChanged([volume_path(pool.name, n) for n in added],
                            [volume_path(pool.name, n) for n in removed])

    # -- host block devices (also announced by the Manager's Device* signals) --
    def device_added(self, device) -> None:
        path = device_path(device.name)
        obj = DeviceInterface(device, self.service)
        self._export(path, obj)
        self.service.manager_object.DeviceAdded(path, obj.property_variants())

    def device_removed(self, device) -> None:
        path = device_path(device.name)
        if path in self.objects:
            self._unexport(path)
            self.service.manager_object.DeviceRemoved(path)

    def device_changed(self, device) -> None:
        path = device_path(device.name)
        obj = self.objects.get(path)
        if not isinstance(obj, DeviceInterface):
            self.device_added(device)
            return
        obj.device = device
        changed = self._changed(path)
        if changed:
            signatures = dict(obj.PROPERTIES)
            self.service.manager_object.DeviceChanged(
                path, {k: Variant(signatures[k], v) for k, v in changed.items()})
