"""The single choke point every exported method goes through.

Each D-Bus method of our interfaces is decorated with ``@authorized(ACTION)``,
``@authorized_unless_owner(ACTION)`` (the object's owner, such as the user who started
a job, needs no action) or ``@public``: the decorator finds the caller, reads the
options, asks polkit, runs the method and turns any error into an
``org.example.Storage.Error.*`` D-Bus error, so no Python traceback ever reaches a
caller. A test checks that every exported method carries a mark and that it matches
the introspection docs.
"""

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable

from ..errors import Failed, InvalidArgument, StorageError
from .bus import DBusError, Message, MessageType, Variant
from .paths import VOLUME_IFACE

log = logging.getLogger(__name__)

# The message being dispatched: set by a bus message handler right before the
# library calls the method (see CallerTracker); asyncio tasks copy it at creation.
current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "current_message", default=None)

AUTH_ATTRIBUTE = "__polkit_action__"
OWNER_EXEMPT_ATTRIBUTE = "__polkit_owner_exempt__"
PUBLIC = "none"


# The methods that take a Unix fd (an ``h``, on VOLUME_IFACE, with this signature); they
# close what their call carried (volume_iface.closes_fds). Every other message's fds are
# closed on arrival.
FD_METHODS = frozenset({"Upload", "Download"})
FD_SIGNATURE = "htta{sv}"


class CallerTracker:
    """Bus message handler: remember which call is being dispatched, and close the fds
    of a message no method of ours will take (the D-Bus library never closes them: a
    caller could otherwise fill the daemon's fd table). ``is_volume(path)`` tells
    whether a volume is exported at ``path``: an Upload to any other path, or with
    another signature, is refused by the library without our method ever running."""

    def __init__(self, is_volume: Callable[[str], bool]) -> None:
        self.is_volume = is_volume

    def __call__(self, msg: Message) -> None:
        if msg.message_type == MessageType.METHOD_CALL:
            current_message.set(msg)
        if msg.unix_fds and not self._taken_by_a_method(msg):
            for fd in set(msg.unix_fds):
                with contextlib.suppress(OSError):
                    os.close(fd)
        return None

    def _taken_by_a_method(self, msg: Message) -> bool:
        return (msg.message_type == MessageType.METHOD_CALL and msg.member in FD_METHODS
                and msg.interface in (None, VOLUME_IFACE) and msg.signature == FD_SIGNATURE
                and self.is_volume(msg.path))


def option(options: dict, key: str, signature: str, default=None):
    """Read one caller option, checking its D-Bus type."""
    value = options.get(key)
    if value is None:
        return default
    if not isinstance(value, Variant) or value.signature != signature:
        got = value.signature if isinstance(value, Variant) else type(value).__name__
        raise InvalidArgument(f"option '{key}' must be of type '{signature}', not '{got}'")
    return value.value


def to_dbus_error(error: BaseException) -> DBusError:
    if isinstance(error, DBusError):
        return error
    if isinstance(error, StorageError):
        return DBusError(error.dbus_name, error.message)
    log.error("unexpected error", exc_info=error)
    wrapped = Failed(f"internal error: {type(error).__name__}: {error}")
    return DBusError(wrapped.dbus_name, wrapped.message)


def _exported(action: str | None, option_actions: dict[str, str] | None = None,
              owner_exempt: bool = False) -> Callable:
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def call(self, *args):
            msg = current_message.get()
            try:
                options = args[-1] if args else {}
                if not isinstance(options, dict):
                    raise InvalidArgument("the last argument must be the options a{sv}")
                if action is not None:
                    if msg is None or not msg.sender:
                        raise Failed("cannot tell who is calling")
                    if owner_exempt and await self.service.authority.caller_uid(
                            msg.sender) == self.owner_uid():
                        return await fn(self, *args)
                    interactive = not option(options, "auth.no_user_interaction", "b", False)
                    needed = [action] + [
                        extra for key, extra in (option_actions or {}).items()
                        if option(options, key, "b", False)
                    ]
                    for each in needed:
                        await self.service.authority.check(
                            msg.sender, each, self.auth_details(), interactive)
                return await fn(self, *args)
            except Exception as error:  # noqa: BLE001 - the choke point maps everything
                raise to_dbus_error(error) from None

        setattr(call, AUTH_ATTRIBUTE, action or PUBLIC)
        setattr(call, AUTH_ATTRIBUTE + "options", dict(option_actions or {}))
        setattr(call, OWNER_EXEMPT_ATTRIBUTE, owner_exempt)
        return call

    return decorate


def authorized(action: str, when_option: dict[str, str] | None = None) -> Callable:
    """Mark a method as needing the polkit action ``action``.

    ``when_option`` maps a boolean option to a further action needed when the caller
    sets that option to true (CreatePool's "build" needs the build action too).
    """
    return _exported(action, when_option)


def authorized_unless_owner(action: str) -> Callable:
    """Mark a method as needing ``action`` unless the caller's uid is the object's
    owner (``self.owner_uid()``: the uid that started a job), who needs nothing."""
    return _exported(action, owner_exempt=True)


def public(fn: Callable) -> Callable:
    """Mark a method as a read anyone may call."""
    return _exported(None)(fn)
