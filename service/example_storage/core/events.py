"""What core tells the outside world (the D-Bus adapter) about changes.

Core calls these synchronously after each change; a listener must not block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..model.definitions import VolumeDefinition
    from .device_model import BlockDevice
    from .jobs import Job
    from .pool import StoragePool


class StorageListener(Protocol):
    def pool_added(self, pool: StoragePool) -> None: ...

    def pool_removed(self, pool: StoragePool) -> None: ...

    def pool_changed(self, pool: StoragePool) -> None:
        """Some property of the pool may have changed (state, figures, flags)."""

    def pool_refreshed(self, pool: StoragePool) -> None: ...

    def volume_added(self, pool: StoragePool, volume: VolumeDefinition) -> None: ...

    def volume_removed(self, pool: StoragePool, volume: VolumeDefinition) -> None: ...

    def volume_changed(self, pool: StoragePool, volume: VolumeDefinition) -> None: ...

    def luns_changed(self, pool: StoragePool, added: list[str], removed: list[str]) -> None:
        """The LUNs (volume names) of a pool that polls its target came or went
        (after their volume_added/volume_removed events)."""

    # Host block devices (core/devices.py): appeared, went away, properties changed.
    def device_added(self, device: BlockDevice) -> None: ...

    def device_removed(self, device: BlockDevice) -> None: ...

    def device_changed(self, device: BlockDevice) -> None: ...

    # Long operations (core/jobs.py): started; progress figures changed (throttled);
    # ended (``job.success`` and ``job.message`` tell how) and forgotten.
    def job_added(self, job: Job) -> None: ...

    def job_changed(self, job: Job) -> None: ...

    def job_removed(self, job: Job) -> None: ...


class ListenerSet:
    """Fans every event out to the registered listeners that handle it (a listener
    may implement only some of the events)."""

    def __init__(self) -> None:
        self._listeners: list[StorageListener] = []

    def add(self, listener: StorageListener) -> None:
        self._listeners.append(listener)

    def __getattr__(self, event: str):
        def fan_out(*args) -> None:
            for listener in list(self._listeners):
                handler = getattr(listener, event, None)
                if handler is not None:
                    handler(*args)

        return fan_out
