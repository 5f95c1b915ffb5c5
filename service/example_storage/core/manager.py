"""The set of pools: define, create, undefine, look up, and restore after a restart."""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

from ..backends.base import Backend
from ..backends.registry import backend_for
from ..errors import AlreadyExists, InvalidArgument, InvalidState, NotFound
from ..model.definitions import PoolDefinition, VolumeDefinition
from ..model.names import validate_uuid
from ..model.poolxml import format_pool_sources_xml, parse_pool_xml, parse_source_xml
from .config_store import PoolConfigStore
from .device_follower import PoolDeviceFollower
from .device_lookup import same_device
from .devices import DeviceRegistry
from .events import ListenerSet
from .jobs import JobRegistry
from .pool import INACTIVE, StoragePool
from .secrets import SecretStore

log = logging.getLogger(__name__)


class StorageManager:
    def __init__(
        self,
        config_dir: Path,
        run_dir: Path,
        backend_factory: Callable[[str], Backend] = backend_for,
    ) -> None:
        self.store = PoolConfigStore(config_dir, run_dir)
        self.listeners = ListenerSet()
        self.jobs = JobRegistry(self.listeners)    # long operations (Job objects)
        self.pools: dict[str, StoragePool] = {}
        self._backend_for = backend_factory
        self.secrets = SecretStore(config_dir)   # CHAP secrets; never logged or returned
        self._registry_lock = asyncio.Lock()   # name/UUID uniqueness of new pools
        # the host's block devices; started by the service (coldplug + uevents)
        self.devices = DeviceRegistry(self.listeners, pool_of=self.pool_using_device)
        self.listeners.add(PoolDeviceFollower(self))

    # -- start-up -----------------------------------------------------------
    async def load(self) -> None:
        """Read persistent configs and runtime state, resume active pools, autostart."""
        self.store.prepare()
        for stored in self.store.load_configs():
            self._add(stored.definition, persistent=True, autostart=stored.autostart)
        for definition in self.store.load_states():
            pool = self.pools.get(definition.name)
            if pool is None:
                pool = self._add(definition, persistent=False)
            elif pool.uuid != (definition.uuid or ""):
                log.warning("state of pool %s has another UUID; ignoring it", definition.name)
                self.store.remove_state(definition.name)
                continue
            else:
                # The running definition may differ from the persistent one.
                pool.pending_definition, pool.definition = pool.definition, definition
            await self._resume(pool)
        for pool in list(self.pools.values()):
            if pool.autostart and pool.state == INACTIVE:
                try:
                    async with pool.lock:
                        await pool.start()
                    log.info("autostarted pool %s", pool.name)
                except Exception as e:  # noqa: BLE001 - one bad pool must not stop the rest
                    log.error("autostart of pool %s failed: %s", pool.name, e)

    async def _resume(self, pool: StoragePool) -> None:
        if await pool.resume():
            log.info("pool %s is still active", pool.name)
            if pool.pending_definition == pool.definition:
                pool.pending_definition = None
            return
        log.info("pool %s is no longer active", pool.name)
        self.store.remove_state(pool.name)
        if pool.pending_definition is not None:
            pool.definition, pool.pending_definition = pool.pending_definition, None
        if not pool.persistent:
            del self.pools[pool.name]

    def _backend(self, pool_type: str) -> Backend:
        backend = self._backend_for(pool_type)
        if hasattr(backend, "secret_lookup"):      # backends that log in (iscsi-direct)
            backend.secret_lookup = self.secrets.for_auth
        return backend

    def set_secret(self, usage: str, value: bytes, uuid: str | None = None) -> None:
        """Store a secret (Manager.SetSecret); an empty value removes it."""
        self.secrets.set(usage, value, uuid=uuid)
        log.info("secret for usage '%s' %s", usage[:256], "set" if value else "removed")

    def _add(self, definition: PoolDefinition, *, persistent: bool, autostart: bool = False
             ) -> StoragePool:
        pool = StoragePool(
            definition, self._backend(definition.type), self.store, self.listeners,
            persistent=persistent, autostart=autostart,
        )
        self.pools[pool.name] = pool
        return pool

    # -- lookups ------------------------------------------------------------
    def pool(self, name: str) -> StoragePool:
        try:
            return self.pools[name]
        except KeyError:
            raise NotFound(f"no pool named '{name[:256]}'") from None

    def pool_by_uuid(self, value: str) -> StoragePool:
        wanted = validate_uuid(value)
        for pool in self.pools.values():
            if pool.uuid == wanted:
                return pool
        raise NotFound(f"no pool with UUID {wanted}")

    def pool_using_device(self, path: str) -> StoragePool | None:
        """The pool whose source names the block device ``path`` (by any path that
        resolves to it), an active one first; None when no pool uses it."""
        found = None
        for pool in self.pools.values():
            sources = [d.path for d in pool.definition.source.devices]
            sources += [d.path for d in pool.devices]
            if any(same_device(source, path) for source in sources):
                if pool.active:
                    return pool
                found = found or pool
        return found

    def volume_by(self, field: str, value: str) -> tuple[StoragePool, VolumeDefinition]:
        for pool in self.pools.values():
            for vol in pool.volumes.values():
                if getattr(vol, field) == value:
                    return pool, vol
        raise NotFound(f"no volume with {field} '{value[:4096]}'")

    async def find_pool_sources(self, pool_type: str, source_xml: str) -> str:
        """libvirt's <sources> list of what storage of ``pool_type`` the host offers
        (every VG for 'logical'); ``source_xml`` is an optional <source> hint."""
        hint = parse_source_xml(source_xml, pool_type)
        sources = await self._backend(pool_type).find_sources(hint)
        return format_pool_sources_xml(sources, pool_type)

    # -- define / create / undefine -----------------------------------------
    def _new_definition(self, xml: str) -> PoolDefinition:
        definition = parse_pool_xml(xml)
        if definition.uuid is None:
            definition.uuid = str(uuidlib.uuid4())
        if definition.name in self.pools:
            raise AlreadyExists(f"a pool named '{definition.name}' exists already")
        for other in self.pools.values():
            if other.uuid == definition.uuid:
                raise AlreadyExists(
                    f"pool '{other.name}' already has UUID {definition.uuid}"
                )
        return definition

    async def define_pool(self, xml: str) -> StoragePool:
        async with self._registry_lock:
            definition = self._new_definition(xml)
            self.store.save_config(definition)
            pool = self._add(definition, persistent=True)
        self.listeners.pool_added(pool)
        return pool

    async def create_pool(self, xml: str, build: bool = False, overwrite: bool = False
                          ) -> StoragePool:
        """A transient pool, started (and built first when asked)."""
        async with self._registry_lock:
            definition = self._new_definition(xml)
            pool = self._add(definition, persistent=False)
            async with pool.lock:
                try:
                    if build:
                        await pool.build(overwrite)
                    await pool.start()
                except BaseException:
                    del self.pools[pool.name]
                    raise
        self.listeners.pool_added(pool)
        return pool

    async def redefine_pool(self, pool: StoragePool, xml: str) -> None:
        definition = parse_pool_xml(xml)
        if definition.name != pool.name:
            raise InvalidArgument(
                f"the XML names pool '{definition.name}'; this pool is '{pool.name}' "
                "(renaming is not supported)"
            )
        if definition.type != pool.type:
            raise InvalidArgument(
                f"the XML is of type '{definition.type}'; this pool is '{pool.type}'"
            )
        if definition.uuid is None:
            definition.uuid = pool.uuid
        elif definition.uuid != pool.uuid:
            raise InvalidArgument(f"the XML has UUID {definition.uuid}; this pool {pool.uuid}")
        async with pool.lock:
            self.store.save_config(definition)
            if pool.state == INACTIVE:
                pool.definition = definition
                pool.pending_definition = None
            else:
                pool.pending_definition = definition
            if not pool.persistent:
                pool.persistent = True
            self.listeners.pool_changed(pool)

    async def undefine_pool(self, pool: StoragePool) -> None:
        async with pool.lock:
            if not pool.persistent:
                raise InvalidState(f"pool '{pool.name}' is transient; nothing to undefine")
            self.store.remove_config(pool.name)
            pool.persistent = False
            pool.autostart = False
            pool.pending_definition = None
            if pool.state == INACTIVE:
                self.pools.pop(pool.name, None)
                self.listeners.pool_removed(pool)
            else:
                self.listeners.pool_changed(pool)

    async def destroy_pool(self, pool: StoragePool, force: bool = False) -> None:
        async with pool.lock:
            await pool.stop(force)
            if not pool.persistent:
                self.pools.pop(pool.name, None)
                self.listeners.pool_removed(pool)

    async def set_autostart(self, pool: StoragePool, autostart: bool) -> None:
        async with pool.lock:
            if not pool.persistent:
                raise InvalidState(f"pool '{pool.name}' is transient; it cannot autostart")
            self.store.set_autostart(pool.name, autostart)
            pool.autostart = autostart
            self.listeners.pool_changed(pool)
