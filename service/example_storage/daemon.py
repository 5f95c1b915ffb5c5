"""example-storaged: the org.example.Storage daemon.

Exports all objects first, requests the bus name last, tells systemd READY=1 when
NOTIFY_SOCKET is set, and shuts down cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from . import __version__
from .errors import StorageError

log = logging.getLogger("example_storage")

DEFAULT_CONFIG_DIR = "/etc/example-storage"
DEFAULT_RUN_DIR = "/run/example-storage"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="example-storaged", description=__doc__.splitlines()[0])
    parser.add_argument("--bus", default="system",
                        help="'system', 'session' or a D-Bus address (default: system)")
    parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, type=Path,
                        help=f"persistent pool configs (default: {DEFAULT_CONFIG_DIR})")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, type=Path,
                        help=f"runtime state of active pools (default: {DEFAULT_RUN_DIR})")
    parser.add_argument("--udev-source", default="auto",
                        choices=("auto", "udev", "kernel", "none"),
                        help="uevents to follow for host block devices: 'udev' (needs "
                             "udevd), 'kernel' (raw uevents; the service probes devices "
                             "itself), 'auto' (udev when udevd runs, else kernel) or "
                             "'none' (scan at start-up only) (default: auto)")
    parser.add_argument("--lvm-system-dir", type=Path, default=None,
                        help="LVM configuration dir (its lvm.conf) for every LVM command the "
                             "service runs; sets LVM_SYSTEM_DIR (default: LVM's, /etc/lvm)")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def sd_notify(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


async def run(args: argparse.Namespace) -> int:
    from .adapter.bus import LIBRARY, BusType, MessageBus
    from .adapter.service import StorageService
    from .core.manager import StorageManager

    # What is imported by now lives as long as the daemon: out of the cyclic collector's
    # way, its full collections do not walk it again and again while thousands of
    # volumes are loaded and exported.
    gc.freeze()
    if args.bus == "system":
        bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
    elif args.bus == "session":
        bus = MessageBus(bus_type=BusType.SESSION, negotiate_unix_fd=True)
    else:
        bus = MessageBus(bus_address=args.bus, negotiate_unix_fd=True)
    await bus.connect()
    log.info("connected to the bus with %s as %s", LIBRARY, bus.unique_name)

    manager = StorageManager(args.config_dir, args.run_dir)
    service = StorageService(bus, manager, udev_source=args.udev_source)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    await service.start()
    sd_notify("READY=1")
    log.info("ready (config %s, run %s)", args.config_dir, args.run_dir)

    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if disconnected in done:
        log.error("lost the bus connection")
        return 1
    sd_notify("STOPPING=1")
    log.info("stopping")
    bus.disconnect()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.lvm_system_dir is not None:
        if not (args.lvm_system_dir / "lvm.conf").is_file():
            sys.exit(f"example-storaged: {args.lvm_system_dir}/lvm.conf does not exist")
        # Before anything runs: every LVM command inherits it (lvm honours LVM_SYSTEM_DIR).
        os.environ["LVM_SYSTEM_DIR"] = str(args.lvm_system_dir.resolve())
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = asyncio.run(run(args))
    except StorageError as e:
        log.error("cannot run: %s", e)
        code = 1
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, for start-up errors
        log.error("cannot run: %s", e, exc_info=args.debug)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
