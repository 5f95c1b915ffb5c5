"""Asks polkit whether a D-Bus caller may perform an action.

Subject ``system-bus-name`` (the caller's unique name), the call's details (pool,
volume) for rules to match on, user interaction unless the caller's options say
``auth.no_user_interaction``. Without polkit on the bus only uid 0 passes.
"""

import logging

from ..errors import NotAuthorized, NotAuthorizedCanObtain, NotAuthorizedDismissed
from .bus import DBusError, Message, MessageBus, MessageType, Variant

log = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1
CALL_TIMEOUT = 120.0   # an authentication dialog may take a while


class PolkitAuthority:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

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
        (uid,) = await self._bus_call("GetConnectionUnixUser", "s", [sender])
        return uid

    async def polkit_present(self) -> bool:
        (present,) = await self._bus_call("NameHasOwner", "s", [POLKIT_NAME])
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
