"""The bench: the same workloads against org.example.Storage and libvirt-dbus, one run.

    scripts/bench [--quick] [--no-libvirt] [--libraries dbus-next,dbus-fast]
                  [--client dbus-fast|dbus-next] [--json FILE]

Needs root (loop devices, mounts, the daemons). See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "service")):
    if p not in sys.path:
        sys.path.insert(0, p)

from dbus_next import Message  # noqa: E402
from dbus_next.aio import MessageBus  # noqa: E402

from tests.harness.bus import PrivateBus  # noqa: E402

from . import libvirt_peer as lp  # noqa: E402
from . import uevent_latency  # noqa: E402
from .common import (  # noqa: E402
    CLIENT_LIBRARIES,
    Client,
    ClientLibrary,
    client_library,
    default_client_library,
    median,
    other_client_library,
)
from .fixtures import Filesystems, sparse_files  # noqa: E402
from .ours import NAME, BenchDaemon, timed_start  # noqa: E402
from .report import render  # noqa: E402
from .sides import LibvirtSide, OurSide, dir_pool_xml  # noqa: E402
from .turns import Turns, bench_order  # noqa: E402
from .workloads import (  # noqa: E402
    QUICK,
    Config,
    Failure,
    Hooks,
    Results,
    guarded,
    log,
    run_rest,
    run_rounds,
    wait_until,
)

LIBRARIES = ("dbus-next", "dbus-fast")


class Clients:
    """The workloads' client connections to one service: the chosen library's, and one of
    the other library (when installed) for the big listing again."""

    def __init__(self, libs: tuple[ClientLibrary, ClientLibrary | None]) -> None:
        self.libs = libs
        self.main: Client | None = None
        self.other: Client | None = None

    async def connect(self, address: str, destination: str) -> Client:
        main_lib, other_lib = self.libs
        self.main = await main_lib.connect(address, destination)
        if other_lib is not None:
            self.other = await other_lib.connect(address, destination)
        return self.main

    def close(self) -> None:
        for c in (self.main, self.other):
            if c is not None:
                c.disconnect()
        self.main = self.other = None


# -- libvirt-dbus --------------------------------------------------------------------------

LIBVIRT = "libvirt-dbus"        # libvirt's name in the turns (ours: the D-Bus library)


async def libvirt_run(install: lp.Install, bus: PrivateBus, cfg: Config, tmp: Path,
                      fs: Filesystems, big_dir: Path, clients: Clients, turns: Turns
                      ) -> Results:
    daemon = lp.Libvirtd(install, tmp / "libvirt-state", bus.env())
    dbus = lp.LibvirtDbus(daemon)
    r: Results = {}

    def turn(what: str):
        return turns.turn(LIBVIRT, what)

    try:
        async with turn("start"):
            log("libvirt: starting libvirtd (storage + qemu drivers) and libvirt-dbus")
            daemon.start()
            dbus.start()
            side = LibvirtSide(await clients.connect(bus.address, lp.DBUS_NAME))

        def rss() -> int:
            a = lp.rss_kib(daemon.pid).get("VmRSS", 0)
            b = lp.rss_kib(dbus.pid).get("VmRSS", 0)
            r["rss_big_detail"] = f"libvirtd {a >> 10} MiB + libvirt-dbus {b >> 10} MiB"
            return a + b

        hooks = Hooks(rss, other_client=clients.other, turn=turn)
        r.update(await run_rounds(side, cfg, tmp / "libvirt", dict(fs.mounts), hooks))
        async with turn("rest"):
            r.update(await run_rest(side, cfg, big_dir, dict(fs.mounts), hooks))
            clients.close()
            dbus.stop()
            daemon.stop()
            await guarded(r, ("startup_empty", "startup_big", "rss_startup_big"),
                          "libvirt: libvirtd start-up (storage driver only)",
                          lambda: asyncio.to_thread(libvirt_startup, install, bus, cfg, tmp,
                                                    big_dir, r))
    finally:
        await turns.forfeit(LIBVIRT)
        clients.close()
        dbus.stop()
        daemon.stop()
    return r


def libvirt_startup(install: lp.Install, bus: PrivateBus, cfg: Config, tmp: Path,
                    big_dir: Path, r: Results) -> None:
    """libvirtd with the storage driver only: start-up with no pools, then with an autostart
    dir pool over the big dir; ready when a client's NumOfVolumes says all are there."""
    daemon = lp.Libvirtd(install, tmp / "libvirt-startup", bus.env(), drivers=("storage",))
    try:
        r["startup_empty"] = daemon.start()
        conn = lp.VirConnect(daemon.uri)
        conn.define_autostart_pool(dir_pool_xml("many", big_dir))
        conn.close()
        daemon.stop()
        times, rss = [], 0
        for _ in range(cfg.startup_reps):
            t0 = time.monotonic()
            daemon.start()
            conn = lp.VirConnect(daemon.uri)
            try:
                wait_until(lambda c=conn: c.volume_count("many") == cfg.big, 120, 0.002)
            finally:
                conn.close()
            times.append(time.monotonic() - t0)
            rss = lp.rss_kib(daemon.pid).get("VmRSS", 0)
            daemon.stop()
        r["startup_big"] = median(times)
        r["rss_startup_big"] = rss
    finally:
        daemon.stop()


# -- ours --------------------------------------------------------------------------------------

async def name_owned(client: MessageBus) -> bool:
    reply = await asyncio.wait_for(client.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="NameHasOwner", signature="s", body=[NAME])),
        10)
    return bool(reply.body and reply.body[0] is True)


def _last_run_log(daemon: BenchDaemon) -> list[str]:
    """The daemon's log lines since its last start."""
    try:
        text = daemon.log_path.read_text(errors="replace")
    except OSError:
        return []
    return text.rsplit("=== harness: start", 1)[-1].splitlines()


def lost_bus(daemon: BenchDaemon) -> bool:
    return any(" ERROR: lost the bus connection" in ln for ln in _last_run_log(daemon))


def crash_reason(daemon: BenchDaemon) -> str:
    """The last error the daemon logged (the exception of its last traceback)."""
    lines = _last_run_log(daemon)
    last_error = next((ln for ln in lines if " ERROR: lost the bus connection" in ln),
                      next((ln for ln in reversed(lines) if " ERROR: " in ln), ""))
    exc = next((ln for ln in reversed(lines)
                if ln and not ln.startswith((" ", "\t", "Traceback", "During"))
                and ("Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0])), "")
    text = "; ".join(x.split(" ERROR: ")[-1] for x in (last_error, exc) if x)
    rc = daemon.proc.poll() if daemon.proc else daemon.returncode
    return f"exit code {rc}: {text}" if text else f"exit code {rc}"


async def ours_run(library: str, bus: PrivateBus, cfg: Config, tmp: Path, fs: Filesystems,
                   big_dir: Path, clients: Clients, turns: Turns) -> Results:
    daemon = BenchDaemon(bus, tmp / f"ours-{library}", library)
    control: Client | None = None
    r: Results = {}

    def turn(what: str):
        return turns.turn(library, what)

    try:
        async with turn("start"):
            log(f"ours/{library}: starting the daemon")
            await asyncio.to_thread(daemon.start, 60)
            # the bench's own connection (dbus-next): name watching, uevent signals, set-up
            control = await client_library("dbus-next").connect(bus.address, NAME)
            side = OurSide(await clients.connect(bus.address, NAME))
        client = control.bus
        notes: list[str] = []

        async def revive() -> None:
            if daemon.running and await name_owned(client):
                return
            notes.append(f"the daemon died ({crash_reason(daemon)}); restarted")
            await asyncio.to_thread(daemon.stop)   # what is left of it, by PID
            # a fresh start: forget the transient pools it had
            shutil.rmtree(daemon.run_dir, ignore_errors=True)
            await asyncio.to_thread(daemon.start, 120)

        def explain() -> str | None:
            return crash_reason(daemon) if not daemon.running or lost_bus(daemon) else None

        hooks = Hooks(daemon.rss, revive, explain, clients.other, turn)
        mounts = {k: v / library for k, v in fs.mounts.items()}
        r.update(await run_rounds(side, cfg, tmp / f"ours-{library}-pools", mounts, hooks))
        async with turn("rest"):
            r.update(await run_rest(side, cfg, big_dir, mounts, hooks))
            await ours_rest(library, daemon, control, client, cfg, tmp, big_dir, hooks, r)
        if notes:
            r["notes"] = notes
    finally:
        await turns.forfeit(library)
        if control is not None:
            control.disconnect()
        clients.close()
        daemon.stop()
    return r


async def ours_rest(library: str, daemon: BenchDaemon, control: Client, client: MessageBus,
                    cfg: Config, tmp: Path, big_dir: Path, hooks: Hooks, r: Results) -> None:
    """What only our side measures (uevent latency), then its start-up (the main daemon
    stopped: a second one on the same bus could not own the name)."""
    bus = daemon.bus

    async def uevent() -> None:
        image = uevent_latency.make_image(tmp / f"uevent-{library}.img")
        raw, sig = await uevent_latency.measure(client, image, cfg.uevent_runs)
        image.unlink()
        r["uevent_median"] = median(sig) / 1e3
        r["uevent_p95"] = uevent_latency.percentile(sig, 95) / 1e3
        r["uevent_raw_median"] = median(raw) / 1e3

    await guarded(r, ("uevent_median", "uevent_p95"), f"ours/{library}: uevent latency",
                  uevent, hooks)
    daemon.stop()

    async def startup() -> None:
        d = BenchDaemon(bus, tmp / f"ours-{library}-startup", library)
        try:
            r["startup_empty"] = await timed_start(d, client)
            pool = await OurSide(control).define_autostart_pool("many", big_dir)
            d.stop()
            times, rss = [], 0
            for _ in range(cfg.startup_reps):
                times.append(await timed_start(d, client))
                count = await OurSide(control).volume_count(pool)
                if count != cfg.big:
                    raise AssertionError(f"{count} volumes after start-up, not {cfg.big}")
                rss = d.rss()
                d.stop()
            r["startup_big"] = median(times)
            r["rss_startup_big"] = rss
        finally:
            d.stop()

    await guarded(r, ("startup_empty", "startup_big", "rss_startup_big"),
                  f"ours/{library}: start-up", startup)


# -- main --------------------------------------------------------------------------------------

def versions(install: lp.Install | None) -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in ("dbus-next", "dbus-fast"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    if install is not None:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libvirt-daemon"],
                             capture_output=True, text=True)
        parts.append(f"libvirt {res.stdout.strip()}")
        parts.append(f"libvirt-dbus {install.libvirt_dbus}")
    return ", ".join(parts)


def header(cfg: Config, args: argparse.Namespace, install: lp.Install | None) -> str:
    mode = "quick" if args.quick else "full"
    lines = [
        f"org.example.Storage vs libvirt-dbus, {mode} run, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
        f"kernel {platform.release()}",
        f"  {versions(install)}",
        f"  a private dbus-daemon per service, all services up at once; client: {args.client} "
        "in this process, the same code for both services;",
        f"  create/delete: median of {cfg.create_reps} rounds, in a dir pool on the ext4 below, "
        "the services' rounds interleaved (round k of each before round k+1 of any, the "
        "order rotated each round; everything else one service after the other); "
        f"create/delete/GetAll: {cfg.inflight} calls in flight; Get/Ping: sequential round "
        f"trips, interleaved, {cfg.latency_calls} each (after 50 warm-up);",
        "  clones: sequential, median of "
        f"{cfg.clone_reps}; listing: median of {cfg.list_reps} ({cfg.big_list_reps} for the "
        "big pool); start-up: median of "
        f"{cfg.startup_reps}",
        "  ours: no polkit on the bus (root callers pass after a GetConnectionUnixUser); "
        "no --debug; the daemon's D-Bus library via EXAMPLE_STORAGE_DBUS",
        f"  the {cfg.big} volumes are sparse files made directly in one dir, which both "
        "services then load as a dir pool (pool start + Refresh), not created through the API",
        f"  listing, ours: {OurSide.listing_method}",
        f"  listing, libvirt-dbus: {LibvirtSide.listing_method}, {cfg.inflight} in flight",
        "  (\"the same listing, <library> client\": the big listing again with the other "
        "client library: how much of the listing is the client's)",
        "  libvirt: libvirtd (storage + qemu drivers: libvirt-dbus opens qemu:///system) in a "
        "private mount namespace, auth none on its socket; start-up and its RSS with the "
        "storage driver only",
        "  clones: dir pools on a fresh ext4 and xfs (reflink=1) on loop devices (direct I/O); "
        "CreateVolumeFrom vs StorageVolCreateXMLFrom (flags 0, as virsh vol-clone)",
        "  'x lv': how many times better ours is than libvirt-dbus (above 1: ours is better); "
        "targets are printed, not asserted",
    ]
    if install is not None:
        lines.extend(f"  {n}" for n in install.notes)
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    cfg = QUICK if args.quick else Config()
    try:
        main_lib = client_library(args.client)
    except (ValueError, ImportError) as e:
        print(f"client library {args.client!r}: {e}", file=sys.stderr)
        return 2
    other_name = other_client_library(args.client)
    libs = (main_lib, client_library(other_name) if other_name else None)
    libraries = [lib.strip() for lib in args.libraries.split(",") if lib.strip()]
    for lib in libraries:
        if lib not in LIBRARIES:
            print(f"unknown library {lib!r} (choose from {', '.join(LIBRARIES)})",
                  file=sys.stderr)
            return 2
    install = None
    if not args.no_libvirt:
        try:
            install = lp.ensure_installed()
        except lp.PeerUnavailable as e:
            print(f"libvirt side unavailable: {e}", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=args.tmpdir))
    services = ([LIBVIRT] if install is not None else []) + libraries
    # a private bus per service (the same config): all are up at once, and our two daemons
    # could not both own org.example.Storage on one bus
    buses = {name: PrivateBus({"org.libvirt.conf": lp.BUS_CONF} if name == LIBVIRT else None)
             for name in services}
    fs = None
    ours: dict[str, Results] = {}
    theirs: Results | None = None
    try:
        for name, bus in buses.items():
            bus.start()
            log(f"bus of {name}: {bus.address}")
        log(f"temp dir {tmp}")
        fs = Filesystems(tmp / "fs", cfg.image_size)
        for point in fs.mounts.values():
            for sub in ("libvirt", *libraries):
                (point / sub).mkdir()
        big_dir = tmp / "many"
        log(f"making {cfg.big} sparse files in {big_dir}")
        sparse_files(big_dir, cfg.big, cfg.volume_size)
        turns = Turns(bench_order(services, cfg.create_reps))
        runs = [ours_run(lib, buses[lib], cfg, tmp, fs, big_dir, Clients(libs), turns)
                for lib in libraries]
        if install is not None:
            runs.insert(0, libvirt_run(install, buses[LIBVIRT], cfg, tmp, fs, big_dir,
                                       Clients(libs), turns))
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        if install is not None:
            theirs = outcomes.pop(0)
            if isinstance(theirs, lp.PeerUnavailable):   # report it; ours were measured
                log(f"libvirt side failed: {theirs}")
                theirs = {"startup_empty": Failure(f"libvirt did not run: {theirs}"[:300])}
        for lib, outcome in zip(libraries, outcomes, strict=True):
            ours[lib] = outcome
        for outcome in [theirs, *outcomes]:
            if isinstance(outcome, BaseException):
                raise outcome
    finally:
        if fs is not None:
            fs.close()
        for bus in buses.values():
            bus.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(header(cfg, args, install))
    print()
    print(render(cfg, ours, libraries, theirs, other_name or ""))
    if theirs and isinstance(theirs.get("rss_big_detail"), str):
        print(f"\n(libvirt RSS after listing: {theirs['rss_big_detail']})")
    for lib, res in ours.items():
        for note in res.get("notes", []):
            print(f"note, ours/{lib}: {note}")
    if args.json:
        def plain(res: Results) -> dict:
            return {k: (str(v) if isinstance(v, Failure) else v) for k, v in res.items()}
        doc = {"config": cfg.__dict__, "ours": {k: plain(v) for k, v in ours.items()},
               "libvirt": plain(theirs) if theirs else None}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    failed = any(isinstance(v, Failure) for res in [*ours.values(), theirs or {}]
                 for v in res.values())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer volumes (100 / 1000), a 128 MiB clone, fewer repetitions")
    parser.add_argument("--no-libvirt", action="store_true",
                        help="only our service (no libvirt install, no libvirtd)")
    parser.add_argument("--libraries", default=",".join(LIBRARIES),
                        help="our daemon's D-Bus libraries, comma separated "
                        "(default: %(default)s)")
    parser.add_argument("--client", choices=CLIENT_LIBRARIES, default=default_client_library(),
                        help="the bench's client library, the same for every service "
                        "(default: %(default)s); the big listing is also timed with the other")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--tmpdir", default="/tmp", help="where the temp dir goes")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the bench needs root (loop devices, mounts, the daemons)", file=sys.stderr)
        return 2
    return asyncio.run(main_async(args))
