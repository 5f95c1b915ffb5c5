"""A stand-in for the storage daemon, for the harness self-tests only.

Same command line as ``example_storage.daemon`` (``--bus ADDRESS --config-dir DIR
--run-dir DIR --debug``); owns org.example.Storage; exports a tiny
``org.example.Storage.Manager`` at /org/example/Storage (Version, Ping, Fail, Emit ->
Pinged) and a pool at /org/example/Storage/pools/fake (GetManagedObjects is dbus-next's
built-in one); exits 0 on SIGTERM. ``--exit-early N`` exits with N before owning the name.
"""

import argparse
import asyncio
import signal
import sys

from dbus_next import BusType
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method
from dbus_next.service import signal as dbus_signal

PATH = "/org/example/Storage"


class Manager(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.example.Storage.Manager")

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":  # noqa: F821 - dbus-next signature annotations
        return "fake-1"

    @method()
    def Ping(self, text: "s") -> "s":  # noqa: F821 - dbus-next signature annotations
        return text

    @method()
    def Fail(self) -> None:
        raise DBusError("org.example.Storage.Error.Failed", "failed as asked")

    @method()
    def Emit(self, text: "s") -> None:  # noqa: F821 - dbus-next signature annotations
        self.Pinged(text)

    @dbus_signal()
    def Pinged(self, text) -> "s":  # noqa: F821 - dbus-next signature annotations
        return text


class Pool(ServiceInterface):
    """A pool object below the manager, so that (dbus-next's own) GetManagedObjects on
    /org/example/Storage has something to list."""

    def __init__(self) -> None:
        super().__init__("org.example.Storage.Pool")

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":  # noqa: F821 - dbus-next signature annotations
        return "fake"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", required=True)
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--exit-early", type=int)
    args = parser.parse_args()
    print(f"fake storaged starting on {args.bus}", file=sys.stderr, flush=True)
    if args.exit_early is not None:
        print("fake storaged: exiting early as asked", file=sys.stderr, flush=True)
        return args.exit_early
    bus = await MessageBus(bus_address=args.bus, bus_type=BusType.SYSTEM).connect()
    bus.export(PATH, Manager())
    bus.export(PATH + "/pools/fake", Pool())
    await bus.request_name("org.example.Storage")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    bus.disconnect()
    print("fake storaged: clean exit", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
