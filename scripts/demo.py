"""Show org.example.Storage working, with busctl, the way a user would drive it.

Starts a private system bus and the daemon (state in a temp dir, no polkit on the bus: only
uid 0 is authorized, and this runs as root), then: DefinePool (a dir pool in the temp dir),
Build, Start, CreateVolume (1 GiB raw sparse demo.img), Resize (2 GiB), GetManagedObjects.
Each busctl command line is printed before its output; it can be replayed as is after
``export DBUS_SYSTEM_BUS_ADDRESS=...`` (printed at the end). Then it waits for Ctrl-C or
SIGTERM (or exits at once with ``--no-wait``) and stops the daemon and the bus by PID.

Run it as ``scripts/demo [--no-wait] [--keep]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.bus import PrivateBus  # noqa: E402 - needs the repo on sys.path
from tests.harness.daemon import StorageDaemon  # noqa: E402

NAME = "org.example.Storage"
MANAGER_PATH = "/org/example/Storage"
MANAGER = "org.example.Storage.Manager"
POOL = "org.example.Storage.Pool"
VOLUME = "org.example.Storage.Volume"
GiB = 1 << 30


class Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the wait and clean up."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


class DemoError(Exception):
    pass


def run_busctl(bus: PrivateBus, *args: str) -> str:
    """Print ``busctl ARGS`` as typed by a user, run it on the demo bus, print its output."""
    argv = ["busctl", *args]
    print(f"$ {shlex.join(argv)}", flush=True)
    res = subprocess.run(argv, env=bus.env(), capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    if res.stdout:
        print(res.stdout.rstrip(), flush=True)
    if res.returncode != 0:
        print(res.stderr.rstrip(), file=sys.stderr, flush=True)
        raise DemoError(f"busctl exited with {res.returncode}")
    print(flush=True)
    return res.stdout


def object_path(busctl_output: str) -> str:
    """The path out of busctl's ``o "/org/..."`` reply."""
    kind, _, value = busctl_output.strip().partition(" ")
    if kind != "o":
        raise DemoError(f"expected an object path, got {busctl_output!r}")
    return value.strip('"')


def scenario(bus: PrivateBus, state: Path) -> None:
    target = state / "pool-demo"
    pool_xml = (
        '<pool type="dir"><name>demo</name>'
        f"<target><path>{target}</path></target></pool>"
    )
    volume_xml = (
        '<volume><name>demo.img</name><capacity unit="GiB">1</capacity>'
        '<allocation>0</allocation><target><format type="raw"/></target></volume>'
    )
    pool = object_path(
        run_busctl(bus, "call", NAME, MANAGER_PATH, MANAGER, "DefinePool", "sa{sv}", pool_xml, "0")
    )
    run_busctl(bus, "call", NAME, pool, POOL, "Build", "a{sv}", "0")
    run_busctl(bus, "call", NAME, pool, POOL, "Start", "a{sv}", "0")
    volume = object_path(
        run_busctl(bus, "call", NAME, pool, POOL, "CreateVolume", "sa{sv}", volume_xml, "0")
    )
    run_busctl(bus, "call", NAME, volume, VOLUME, "Resize", "ta{sv}", str(2 * GiB), "0")
    run_busctl(bus, "--json=pretty", "call", NAME, MANAGER_PATH,
               "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
    image = target / "demo.img"
    if image.exists():
        st = image.stat()
        print(f"# {image}: size {st.st_size} bytes, {st.st_blocks * 512} bytes allocated\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-wait", action="store_true",
                        help="stop everything right after the scenario")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp state dir (pool configs, volumes) at exit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root (only root may own org.example.Storage on the bus)",
              file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    state = Path(tempfile.mkdtemp(prefix="example-storage-demo-"))
    bus = PrivateBus()
    daemon: StorageDaemon | None = None
    rc = 0
    try:
        bus.start()
        daemon = StorageDaemon(bus, state)
        print(f"# bus: {bus.address} (dbus-daemon pid {bus.pid})")
        daemon.start()
        print(f"# daemon: pid {daemon.pid}, state in {state}, log {daemon.log_path}")
        print("# no polkit on this bus: the daemon lets only uid 0 through (we are root)\n")
        scenario(bus, state)
        print(f"# bus address: {bus.address}")
        print(f"export DBUS_SYSTEM_BUS_ADDRESS={shlex.quote(bus.address)}")
        if args.no_wait:
            print("# --no-wait: stopping now", flush=True)
            return 0
        print(f"# The service keeps running on this private bus. In another shell, run the\n"
              f"# export line above, then any busctl command, e.g.: busctl tree {NAME}\n"
              "# Press Ctrl-C (or send SIGTERM) to stop the daemon and the bus.", flush=True)
        while True:
            signal.pause()
    except Stop as stop:
        print(f"\n# {stop}: stopping")
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        if daemon is not None:
            print(f"--- daemon log ({daemon.log_path}) ---\n{daemon.log_tail(60)}",
                  file=sys.stderr)
        rc = 1
    except RuntimeError as e:  # the daemon or the bus did not start
        print(f"demo: {e}", file=sys.stderr)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if daemon is not None:
            code = daemon.stop()
            print(f"# daemon stopped (exit code {code})")
        bus.stop()
        print("# bus stopped")
        if args.keep:
            print(f"# state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
