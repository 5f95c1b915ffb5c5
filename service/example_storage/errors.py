"""Errors every layer raises; the D-Bus adapter maps them to
``org.example.Storage.Error.<name>`` (see DESIGN.md).

Nothing here knows about D-Bus: ``StorageError.name`` is only the suffix.
"""

from __future__ import annotations

ERROR_PREFIX = "org.example.Storage.Error."


class StorageError(Exception):
    """Base of every error a caller may see. ``name`` becomes the D-Bus error name."""

    name = "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def dbus_name(self) -> str:
        return ERROR_PREFIX + self.name


class Failed(StorageError):
    name = "Failed"


class NotAuthorized(StorageError):
    name = "NotAuthorized"


class NotAuthorizedCanObtain(StorageError):
    name = "NotAuthorizedCanObtain"


class NotAuthorizedDismissed(StorageError):
    name = "NotAuthorizedDismissed"


class NotFound(StorageError):
    name = "NotFound"


class AlreadyExists(StorageError):
    name = "AlreadyExists"


class InvalidArgument(StorageError):
    name = "InvalidArgument"


class InvalidState(StorageError):
    name = "InvalidState"


class Busy(StorageError):
    name = "Busy"


class NotSupported(StorageError):
    name = "NotSupported"


class NoSpace(StorageError):
    name = "NoSpace"


class Cancelled(StorageError):
    name = "Cancelled"


class TimedOut(StorageError):
    name = "TimedOut"


class AuthFailed(Failed):
    """An iSCSI target refused the login for authentication (a wrong CHAP secret, or
    none where the target wants one). A Failed, with its own D-Bus name."""

    name = "ISCSI.AuthFailed"


class ToolMissing(NotSupported):
    """A required external program is not installed."""

    name = "NotSupported"


class CommandFailed(Failed):
    """An external command exited non-zero; its stderr is part of the message."""

    name = "Failed"

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tool = argv[0] if argv else "?"
        detail = stderr.strip() or f"exit status {returncode}"
        super().__init__(f"{tool} failed: {detail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
