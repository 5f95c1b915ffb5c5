"""Asks polkit whether a D-Bus caller may perform an action.

Subject ``system-bus-name`` (the caller's unique name), the call's details (pool,
volume) for rules to match on, user interaction unless the caller's options say
``auth.no_user_interaction``. Without polkit on the bus only uid 0 passes.

Round trips are kept off the hot path: whether polkit is on the bus is asked once and
then followed with NameOwnerChanged (one match rule), and a caller's uid is kept per
unique name (the bus never hands a unique name to another connection), so a root
caller without polkit costs no bus call at all. With polkit every call is asked.
"""

import asyncio
import logging
from collections import OrderedDict

from ..errors import NotAuthorized, NotAuthorizedCanObtain, NotAuthorizedDismissed
from .bus import DBusError, Message, MessageBus, MessageType, Variant

log = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1
CALL_TIMEOUT = 120.0   # an authentication dialog may take a while
UID_CACHE_SIZE = 4096  # callers whose uid is remembered (least recently used dropped)
POLKIT_OWNER_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{POLKIT_NAME}'"
)


class PolkitAuthority:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._uids: OrderedDict[str, int] = OrderedDict()
        self._polkit: bool | None = None      # polkit on the bus? None: not known
        self._owner_changes = 0               # NameOwnerChanged signals seen for it
        self._watch: asyncio.Future | None = None

    def _on_message(self, msg: Message) -> None:
        """Bus message handler: follow polkit coming and going."""
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.sender == "org.freedesktop.DBus" and msg.body
                and msg.body[0] == POLKIT_NAME):
            self._owner_changes += 1
            self._polkit = bool(msg.body[2])
        return None

    async def _watching(self) -> bool:
        """Subscribe to polkit's NameOwnerChanged once; False if that failed (then
        presence is asked on every call)."""
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._subscribe())
        elif self._watch.done():
            return self._watch.result()
        return await asyncio.shield(self._watch)

    async def _subscribe(self) -> bool:
        self.bus.add_message_handler(self._on_message)
        try:
            await self._bus_call("AddMatch", "s", [POLKIT_OWNER_RULE])
        except DBusError as e:
            log.warning("cannot follow polkit on the bus (%s); asking on every call", e.text)
            self.bus.remove_message_handler(self._on_message)
            return False
        return True

    async def _bus_call(self, member: str, signature: str, body: list, *,
                        destination: str = "org.freedesktop.DBus",
                        path: str = "/org/freedesktop/DBus",
                        interface: str = "org.freedesktop.DBus") -> list:
        reply = await self.bus.call(Message(
            destination=destination, path=path, interface=interface, member=member,
            signature=signature, body=body,
        ))
        if reply.message_type == MessageType.ERROR:
            raise DBusError(reply.error_name, (reply.body or [""])[0])
        return reply.body

    async def caller_uid(self, sender: str) -> int:
        uid = self._uids.get(sender)
        if uid is not None:
            self._uids.move_to_end(sender)
            return uid
        (uid,) = await self._bus_call("GetConnectionUnixUser", "s", [sender])
        self._uids[sender] = uid
        while len(self._uids) > UID_CACHE_SIZE:
            self._uids.popitem(last=False)
        return uid

    async def polkit_present(self) -> bool:
        watching = await self._watching()
        if watching and self._polkit is not None:
            return self._polkit
        seen = self._owner_changes
        (present,) = await self._bus_call("NameHasOwner", "s", [POLKIT_NAME])
        if not watching:
            return present
        if self._owner_changes != seen:   # a signal came meanwhile: it is as new or newer
            return bool(self._polkit)
        self._polkit = present
        return present

    async def check(self, sender: str, action: str, details: dict[str, str],
                    interactive: bool) -> None:
        """Return if ``sender`` may perform ``action``; raise a NotAuthorized* error if not."""
        if not await self.polkit_present():
            if await self.caller_uid(sender) == 0:
                return
            raise NotAuthorized(f"not authorized for {action}: polkit is not running, "
                                "so only root may do this")
        subject = ["system-bus-name", {"name": Variant("s", sender)}]
        flags = ALLOW_USER_INTERACTION if interactive else 0
        try:
            (result,) = await self._bus_call(
                "CheckAuthorization", "(sa{sv})sa{ss}us",
                [subject, action, details, flags, ""],
                destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
            )
        except DBusError as e:
            log.warning("polkit CheckAuthorization for %s failed: %s", action, e.text)
            raise NotAuthorized(f"not authorized for {action}: polkit failed: {e.text}") from None
        is_authorized, is_challenge, result_details = result
        if is_authorized:
            return
        if result_details.get("polkit.dismissed"):
            raise NotAuthorizedDismissed(f"authentication for {action} was dismissed")
        if is_challenge:
            raise NotAuthorizedCanObtain(
                f"not authorized for {action}; authentication could grant it")
        raise NotAuthorized(f"not authorized for {action}")
