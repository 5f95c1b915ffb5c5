#!/usr/bin/env python3
"""Latency from a uevent to the D-Bus signal a client receives.

Attaches a loop device of its own (``losetup -f --show IMAGE``) N times and measures,
from just before losetup starts:

- the peer: a plain pyudev monitor (kernel source) in this process receiving the raw
  kernel "change" uevent of that loop device;
- the service: this process's D-Bus client receiving Manager.DeviceChanged (or
  DeviceAdded) for the device with its new Size;

and prints median and p95 of both and of their difference (the service's overhead:
reading sysfs, probing with blkid, computing usage, sending the signals). The daemon runs
on a private bus in a temporary directory; run as root from the repository:

    .venv/bin/python bench/uevent_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "service"))

import pyudev  # noqa: E402
from dbus_next import MessageType  # noqa: E402
from example_storage.adapter.paths import device_path  # noqa: E402

from tests.harness.bus import PrivateBus  # noqa: E402
from tests.harness.client import call, connect, unwrap  # noqa: E402
from tests.harness.daemon import StorageDaemon  # noqa: E402

SIZE = 64 << 20
# the service refreshes a device at most every 200 ms: wait longer between runs, so
# every attach is measured as a first event, not a coalesced one
PAUSE = 0.35


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Watch:
    """Timestamps raw uevents (pyudev) and the service's device signals (D-Bus)."""

    def __init__(self, client) -> None:
        self.raw: list[tuple[float, str, str]] = []          # (t, action, name)
        self.signals: list[tuple[float, str, dict]] = []     # (t, object path, props)
        self.changed = asyncio.Event()
        ctx = pyudev.Context()
        self.monitor = pyudev.Monitor.from_netlink(ctx, source="kernel")
        self.monitor.filter_by("block")
        self.monitor.start()
        asyncio.get_running_loop().add_reader(self.monitor.fileno(), self._uevent)
        client.add_message_handler(self._message)

    def close(self, client) -> None:
        """Stop watching (the monitor's reader and the message handler)."""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.monitor.fileno())
        client.remove_message_handler(self._message)

    def _uevent(self) -> None:
        now = time.monotonic()
        while (dev := self.monitor.poll(0)) is not None:
            self.raw.append((now, dev.action, dev.sys_name))
        self.changed.set()

    def _message(self, msg) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.member in ("DeviceChanged",
                                                                     "DeviceAdded"):
            self.signals.append((time.monotonic(), msg.body[0], unwrap(msg.body[1])))
            self.changed.set()

    async def first(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            for item in list(self.raw) + list(self.signals):
                if predicate(item):
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no such event")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


async def measure(client, image: Path, runs: int) -> tuple[list[float], list[float]]:
    """Attach ``image`` (a sparse file of SIZE bytes) ``runs`` times with ``client`` connected
    to a running service; returns (raw uevent ms, DeviceChanged ms) per run."""
    rule = "type='signal',interface='org.example.Storage.Manager'"
    await call(client, "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
               [rule], destination="org.freedesktop.DBus")
    watch = Watch(client)
    raw_ms: list[float] = []
    sig_ms: list[float] = []
    attached = ""
    try:
        for i in range(runs):
            await asyncio.sleep(PAUSE)
            start = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                "losetup", "-f", "--show", str(image), stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError("losetup failed")
            attached = out.decode().strip()
            name = os.path.basename(attached)
            obj = device_path(name)
            raw = await watch.first(lambda e, n=name, t=start: len(e) == 3 and e[0] >= t
                                    and e[2] == n and e[1] in ("change", "add"))
            sig = await watch.first(lambda e, o=obj, t=start: len(e) == 3 and e[0] >= t
                                    and e[1] == o and e[2].get("Size") == SIZE)
            raw_ms.append((raw[0] - start) * 1000)
            sig_ms.append((sig[0] - start) * 1000)
            await asyncio.sleep(PAUSE)
            detach_start = time.monotonic()
            subprocess.run(["losetup", "-d", attached], check=True)
            attached = ""
            await watch.first(lambda e, o=obj, t=detach_start: len(e) == 3 and e[0] >= t
                              and e[1] == o and e[2].get("Size") == 0)
            print(f"run {i + 1}/{runs}: {name}: uevent {raw_ms[-1]:.2f} ms, "
                  f"signal {sig_ms[-1]:.2f} ms", file=sys.stderr)
    finally:
        if attached:
            subprocess.run(["losetup", "-d", attached], check=False)
        watch.close(client)
    return raw_ms, sig_ms


def make_image(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


async def run_bench(runs: int, workdir: Path) -> int:
    image = make_image(workdir / "bench.img")
    bus = PrivateBus().start()
    daemon = StorageDaemon(bus, workdir / "daemon")
    daemon.start()
    client = await connect(bus.address)
    try:
        raw_ms, sig_ms = await measure(client, image, runs)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        client.disconnect()
        daemon.stop()
        bus.stop()
    overhead = [s - r for s, r in zip(sig_ms, raw_ms, strict=True)]
    print(f"uevent -> D-Bus signal latency, {runs} runs (losetup attach of a {SIZE >> 20} MiB "
          "loop device; times from just before losetup starts)")
    print(f"{'':34}{'median':>10}{'p95':>10}")
    for label, values in (
        ("raw kernel uevent (pyudev peer)", raw_ms),
        ("Manager.DeviceChanged received", sig_ms),
        ("service overhead (difference)", overhead),
    ):
        print(f"{label:34}{statistics.median(values):>8.2f}ms{percentile(values, 95):>8.2f}ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, the daemon)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="uevent-bench-") as tmp:
        return asyncio.run(run_bench(args.runs, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
