"""The workloads, written once and run against either side (see sides.py).

Each figure lands in a ``Results`` dict under a fixed key; a workload that fails stores a
``Failure`` under its keys and the bench goes on with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    Client,
    bounded,
    cpu_ticks,
    latencies,
    median,
    percentile,
    stolen_share,
    timed,
)
from .fixtures import fill_data, same_data
from .sides import VIR_STORAGE_VOL_CREATE_REFLINK, LibvirtSide


@dataclass(frozen=True)
class Config:
    volumes: int = 500            # created and deleted through the API
    big: int = 10_000             # files in the big dir (listing, start-up)
    volume_size: int = 1 << 20
    clone_capacity: int = 1 << 30
    clone_data: int = 100 << 20
    image_size: int = 4 << 30     # each loop device (ext4, xfs)
    inflight: int = 16            # concurrent calls for create/delete/GetAll
    create_reps: int = 9          # create + delete rounds (the median is the figure)
    # a round during which the hypervisor took more than this share of the machine's CPU
    # (steal: the VM's neighbours) is run again, up to round_attempts times in all
    max_round_steal: float = 0.10
    round_attempts: int = 3
    latency_calls: int = 2000     # Get and Ping round trips each
    list_reps: int = 5
    big_list_reps: int = 3
    clone_reps: int = 5
    uevent_runs: int = 10
    startup_reps: int = 3


QUICK = Config(volumes=100, big=1000, create_reps=5, clone_capacity=128 << 20, clone_data=16 << 20,
               image_size=1 << 30, latency_calls=300, list_reps=3, big_list_reps=2,
               clone_reps=2, uevent_runs=3, startup_reps=1)


@dataclass(frozen=True)
class Failure:
    message: str

    def __str__(self) -> str:
        return f"failed: {self.message}"


Results = dict[str, Any]


async def _nothing() -> None:
    return None


@dataclass
class Hooks:
    """What the workloads need from the side's processes."""

    rss: Callable[[], int]                                  # the service's RSS, KiB
    revive: Callable[[], Awaitable[None]] = _nothing        # restart it if it died
    explain: Callable[[], str | None] = lambda: None        # why it died, if it did
    # a second connection, of the other client library: the big listing again with it
    other_client: Client | None = None
    # the side's turn to measure (bench/turns.py) for ``what``; none to wait for by default
    turn: Callable[[str], AbstractAsyncContextManager[None]] = \
        lambda what: contextlib.nullcontext()


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


async def guarded(results: Results, keys: tuple[str, ...], what: str,
                  fn: Callable[[], Awaitable[None]], hooks: Hooks | None = None) -> None:
    """Run one workload; on failure record it under ``keys`` and go on (restarting the
    service first if it died: ``hooks.revive``)."""
    log(what)
    try:
        if hooks is not None:
            await hooks.revive()
        await fn()
    except Exception as e:  # noqa: BLE001 - one failed figure must not stop the bench
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        why = hooks.explain() if hooks is not None else None
        if why:
            msg = f"{msg} [the service died: {why}]"
        log(f"{what}: {msg}")
        traceback.print_exc(file=sys.stderr)
        for key in keys:
            results.setdefault(key, Failure(msg))


async def run_rounds(side, cfg: Config, workdir: Path, mounts: dict[str, Path],
                     hooks: Hooks) -> Results:
    """The create/delete rounds against one side, each in its turn (``hooks.turn``); the
    listing of a few volumes and the Get/Ping latencies in the first round."""
    r: Results = {}
    is_libvirt = isinstance(side, LibvirtSide)
    workdir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}

    # on the bench's own ext4 (journaled, fresh), not on whatever holds the temp dir
    pool_dir = (mounts["ext4"] / side_dir(side) if "ext4" in mounts else workdir) / "bench"

    async def create_delete_get_list() -> None:
        creates, deletes, create_cpu, delete_cpu, steal = [], [], [], [], []
        reruns = 0
        state["pool"] = await side.create_pool("bench", pool_dir)
        for rep in range(cfg.create_reps):
            async with hooks.turn(f"round {rep}"):
                for attempt in range(cfg.round_attempts):
                    before = cpu_ticks()
                    sample = await one_round(rep)
                    share = stolen_share(before, cpu_ticks())
                    if share <= cfg.max_round_steal or attempt == cfg.round_attempts - 1:
                        break
                    reruns += 1
            for figures, value in zip((creates, deletes, create_cpu, delete_cpu, steal),
                                      (*sample, share), strict=True):
                figures.append(value)
        r["steal_create_delete"] = median(steal)
        r["steal_rounds"], r["rounds_rerun"] = steal, reruns
        r["create_rate"], r["delete_rate"] = median(creates), median(deletes)
        r["create_rates"], r["delete_rates"] = creates, deletes
        # the bench process's own CPU (the client) per call, seconds
        r["client_cpu_create"], r["client_cpu_delete"] = median(create_cpu), median(delete_cpu)
        await side.destroy_pool(state.pop("pool"))

    async def one_round(rep: int) -> tuple[float, float, float, float]:
        """Create the round's volumes, then delete them: (create rate, delete rate, client
        CPU per create, per delete)."""
        pool = state["pool"]
        names = [f"r{rep}v{i:05d}.img" for i in range(cfg.volumes)]
        await asyncio.to_thread(settle, pool_dir)
        cpu = time.process_time()
        secs, vols = await timed(bounded(
            names, lambda n: side.create_volume(pool, n, cfg.volume_size), cfg.inflight))
        create = (cfg.volumes / secs, (time.process_time() - cpu) / cfg.volumes)
        files = list(pool_dir.iterdir())
        if len(files) != cfg.volumes:
            raise AssertionError(f"{len(files)} files after creating {cfg.volumes} volumes")
        state["vols"] = vols
        if rep == 0 and "list_small" not in r:
            await list_and_get(pool, vols)
        await asyncio.to_thread(settle, pool_dir)
        cpu = time.process_time()
        secs, _ = await timed(bounded(vols, side.delete_volume, cfg.inflight))
        delete = (cfg.volumes / secs, (time.process_time() - cpu) / cfg.volumes)
        state["vols"] = []
        left = list(pool_dir.iterdir())
        if left:
            raise AssertionError(f"{len(left)} files left after deleting every volume")
        return create[0], delete[0], create[1], delete[1]

    async def list_and_get(pool: str, vols: list[str]) -> None:
        times = []
        for _ in range(cfg.list_reps):
            secs, count = await timed(side.list_all(pool, cfg.inflight))
            if count != cfg.volumes:
                raise AssertionError(f"listed {count} volumes, expected {cfg.volumes}")
            times.append(secs)
        r["list_small"] = median(times)
        if is_libvirt:
            times = []
            for _ in range(cfg.list_reps):
                secs, _count = await timed(side.list_all(pool, cfg.inflight, info=True))
                times.append(secs)
            r["list_small_info"] = median(times)

        vol = vols[len(vols) // 2]
        lat = await latencies([("get", lambda: side.get_name(vol)), ("ping", side.ping)],
                              cfg.latency_calls)
        r["get_median"], r["get_p99"] = median(lat["get"]), percentile(lat["get"], 99)
        r["ping_median"], r["ping_p99"] = median(lat["ping"]), percentile(lat["ping"], 99)

    await guarded(r, ("create_rate", "list_small", "get_median", "get_p99", "ping_median",
                      "ping_p99", "delete_rate", "client_cpu_create", "client_cpu_delete",
                      "steal_create_delete", "rounds_rerun")
                  + (("list_small_info",) if is_libvirt else ()),
                  f"{side.label}: create/list/get/delete {cfg.volumes} volumes",
                  create_delete_get_list, hooks)
    if "pool" in state:
        await _quietly(side.destroy_pool(state.pop("pool")))
    return r


async def run_rest(side, cfg: Config, shared_big: Path, mounts: dict[str, Path],
                   hooks: Hooks) -> Results:
    """The other API workloads against one side: the big listing, the clones."""
    r: Results = {}
    is_libvirt = isinstance(side, LibvirtSide)
    state: dict[str, Any] = {}

    async def big_listing() -> None:
        secs, pool = await timed(side.create_pool("many", shared_big))
        state["big"] = pool
        r["big_pool_start"] = secs
        secs, _ = await timed(side.refresh(pool))
        r["refresh_big"] = secs
        times = []
        for _ in range(cfg.big_list_reps):
            secs, count = await timed(side.list_all(pool, cfg.inflight))
            if count != cfg.big:
                raise AssertionError(f"listed {count} volumes, expected {cfg.big}")
            times.append(secs)
        r["list_big"] = median(times)
        if hooks.other_client is not None:
            other = type(side)(hooks.other_client)
            times = []
            for _ in range(cfg.big_list_reps):
                secs, count = await timed(other.list_all(pool, cfg.inflight))
                if count != cfg.big:
                    raise AssertionError(f"{hooks.other_client.lib.name} client: listed "
                                         f"{count} volumes, expected {cfg.big}")
                times.append(secs)
            r["list_big_other_client"] = median(times)
        if is_libvirt:
            secs, _count = await timed(side.list_all(pool, cfg.inflight, info=True))
            r["list_big_info"] = secs
        r["rss_big"] = hooks.rss()

    await guarded(r, ("big_pool_start", "refresh_big", "list_big", "rss_big")
                  + (("list_big_other_client",) if hooks.other_client else ())
                  + (("list_big_info",) if is_libvirt else ()),
                  f"{side.label}: list {cfg.big} volumes", big_listing, hooks)
    if "big" in state:
        await _quietly(side.destroy_pool(state.pop("big")))

    for fstype, mount in mounts.items():
        await guarded(r, (f"clone_{fstype}",), f"{side.label}: clone on {fstype}",
                      lambda f=fstype, m=mount: _clones(side, cfg, r, f, m / side_dir(side)),
                      hooks)
    return r


def settle(directory: Path) -> None:
    """Write back everything pending on ``directory``'s filesystem (``sync -f``: syncfs), so
    that a timed clone does not also pay for writeback an earlier workload (or the other
    service) left there."""
    subprocess.run(["sync", "-f", str(directory)], check=True, capture_output=True,
                   timeout=120)


def side_dir(side) -> str:
    return "libvirt" if isinstance(side, LibvirtSide) else "ours"


async def _clones(side, cfg: Config, r: Results, fstype: str, target: Path) -> None:
    pool = await side.create_pool(f"clone-{fstype}", target)
    try:
        source = await side.create_volume(pool, "source.img", cfg.clone_capacity)
        src_path = await side.volume_path(source)
        offsets = fill_data(src_path, cfg.clone_data, cfg.clone_capacity)
        variants = [("", 0)]
        if isinstance(side, LibvirtSide) and fstype == "xfs":
            variants.append(("_reflink", VIR_STORAGE_VOL_CREATE_REFLINK))
        for suffix, flags in variants:
            times = []
            for i in range(cfg.clone_reps):
                await asyncio.to_thread(settle, target)
                secs, clone = await timed(side.clone(pool, source, f"clone{i}.img",
                                                     cfg.clone_capacity, flags))
                clone_path = await side.volume_path(clone)
                ok = same_data(src_path, clone_path, offsets)
                size = clone_path.stat().st_size
                await side.delete_volume(clone)
                if not ok or size != cfg.clone_capacity:
                    raise AssertionError(f"the clone differs from its source (size {size})")
                times.append(secs)
            r[f"clone_{fstype}{suffix}"] = median(times)
        await side.delete_volume(source)
    finally:
        await _quietly(side.destroy_pool(pool))


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception as e:  # noqa: BLE001 - cleanup
        log(f"cleanup: {type(e).__name__}: {e}")


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Poll ``predicate`` until true; the seconds it took. TimeoutError after ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("condition not met in time")
        time.sleep(step)
    return time.monotonic() - t0
