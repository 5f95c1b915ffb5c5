"""Test harness of org.example.Storage: a private system bus, polkit (mock or real), the
daemon under test, throw-away users, loop devices, busctl and dbus-next client helpers.

Every piece starts its own processes and stops exactly those, by PID.

- ``bus.PrivateBus``: dbus-daemon with the system policy + the project's bus conf.
- ``polkit.MockPolkit`` / ``polkit.RealPolkitd``: polkit on that bus.
- ``daemon.StorageDaemon``: ``python -m example_storage.daemon`` on that bus.
- ``users.TestUser``, ``loop.LoopDevice``: root-only fixtures of the host.
- ``busctl.busctl`` / ``busctl_json``; ``client``: async dbus-next helpers.
"""

from .bus import PrivateBus, allow_own_snippet, busconfig_snippet, wait_for_name
from .busctl import busctl, busctl_json
from .daemon import StorageDaemon
from .loop import LoopDevice
from .polkit import AuthResult, MockPolkit, PolkitGrant, RealPolkitd, mock_polkit_conf
from .users import TestUser

__all__ = [
    "AuthResult",
    "LoopDevice",
    "MockPolkit",
    "PolkitGrant",
    "PrivateBus",
    "RealPolkitd",
    "StorageDaemon",
    "TestUser",
    "allow_own_snippet",
    "busconfig_snippet",
    "busctl",
    "busctl_json",
    "mock_polkit_conf",
    "wait_for_name",
]
