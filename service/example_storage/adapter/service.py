"""Puts core on the bus: exports the manager, follows core's events, authorizes calls."""

import logging

from ..backends.registry import all_backends
from ..core.capabilities import capabilities_xml, supported_types
from ..core.manager import StorageManager
from ..errors import Failed
from .authority import PolkitAuthority
from .bus import MessageBus, NameFlag, RequestNameReply
from .calls import CallerTracker
from .direct_replies import DirectReplies
from .manager_iface import ManagerInterface
from .objects import ObjectTree
from .paths import BUS_NAME, MANAGER_PATH

log = logging.getLogger(__name__)


class StorageService:
    def __init__(self, bus: MessageBus, manager: StorageManager, udev_source: str = "auto"
                 ) -> None:
        self.bus = bus
        self.manager = manager
        self.udev_source = udev_source   # auto, udev, kernel or none (coldplug only)
        self.authority = PolkitAuthority(bus)
        self.objects = ObjectTree(bus, self)
        self.manager_object = ManagerInterface(self)

    def capabilities_xml(self) -> str:
        return capabilities_xml(all_backends().values())

    def supported_pool_types(self) -> list[str]:
        return supported_types(all_backends().values())

    async def start(self) -> None:
        """Export everything, restore pools, and only then take the bus name."""
        self.bus.add_message_handler(
            CallerTracker(lambda path: self.objects.volume_at(path) is not None))
        self.bus.add_message_handler(DirectReplies(self.objects, self.manager_object))
        self.bus.export(MANAGER_PATH, self.manager_object)
        # Restoring pools exports nothing while it runs (each volume would otherwise be
        # exported, then unexported and exported again with its pool); what it restored
        # is exported once, then the tree follows core's events. No await in between.
        await self.manager.load()
        for pool in list(self.manager.pools.values()):
            self.objects.pool_added(pool)
            for volume in list(pool.volumes.values()):
                self.objects.volume_added(pool, volume)
        self.manager.listeners.add(self.objects)
        # host block devices: listen to uevents, scan them all (before taking the name)
        source = None if self.udev_source == "none" else self.udev_source
        await self.manager.devices.start(source)
        self.objects.announcing = True     # from now on a client may know of us
        reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise Failed(f"{BUS_NAME} is owned by another process on this bus")
        log.info("owning %s", BUS_NAME)
