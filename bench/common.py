"""What both sides of the bench share: the client (dbus-fast or dbus-next, one for both
services), bounded concurrency, timing, percentiles."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

CLIENT_LIBRARIES = ("dbus-fast", "dbus-next")

PROPERTIES = "org.freedesktop.DBus.Properties"
PEER = "org.freedesktop.DBus.Peer"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class ClientLibrary:
    """The bench's client side: dbus-fast (compiled) or dbus-next (pure Python); the two
    share an API (dbus-fast began as a fork of dbus-next)."""

    name: str
    message: Any          # the Message class
    message_type: Any     # the MessageType enum
    message_bus: Any      # the asyncio MessageBus class
    error: Any            # the DBusError class

    async def connect(self, address: str, destination: str) -> Client:
        bus = await asyncio.wait_for(self.message_bus(bus_address=address).connect(), 10)
        return Client(self, bus, destination)


def client_library(name: str) -> ClientLibrary:
    """``name`` is "dbus-fast" or "dbus-next"; ImportError when it is not installed."""
    if name not in CLIENT_LIBRARIES:
        raise ValueError(f"unknown client library {name!r}")
    package = name.replace("-", "_")
    top = importlib.import_module(package)
    return ClientLibrary(name, top.Message, top.MessageType,
                         importlib.import_module(f"{package}.aio").MessageBus,
                         importlib.import_module(f"{package}.errors").DBusError)


def default_client_library() -> str:
    """dbus-fast when it is installed (its message code is compiled: the client costs each
    call less than the services measured), else dbus-next."""
    return "dbus-fast" if importlib.util.find_spec("dbus_fast") else "dbus-next"


def other_client_library(name: str) -> str | None:
    """The other client library, when it is installed."""
    other = next(lib for lib in CLIENT_LIBRARIES if lib != name)
    return other if importlib.util.find_spec(other.replace("-", "_")) else None


class Client:
    """A connection calling one destination; replies are returned as the library gives
    them (Variants are not unwrapped: the same client-side work for both services)."""

    def __init__(self, lib: ClientLibrary, bus: Any, destination: str) -> None:
        self.lib = lib
        self.bus = bus
        self.destination = destination

    def disconnect(self) -> None:
        self.bus.disconnect()

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: Sequence[Any] = (), timeout: float = 120) -> list[Any]:
        msg = self.lib.message(destination=self.destination, path=path, interface=interface,
                               member=member, signature=signature, body=list(body))
        reply = await asyncio.wait_for(self.bus.call(msg), timeout)
        assert reply is not None
        if reply.message_type == self.lib.message_type.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise self.lib.error(reply.error_name, text, reply)
        return reply.body

    async def get(self, path: str, interface: str, name: str) -> Any:
        (value,) = await self.call(path, PROPERTIES, "Get", "ss", [interface, name])
        return value.value

    async def get_all(self, path: str, interface: str) -> dict[str, Any]:
        (values,) = await self.call(path, PROPERTIES, "GetAll", "s", [interface])
        return values

    async def ping(self) -> None:
        await self.call("/", PEER, "Ping")


def cpu_ticks() -> tuple[int, int]:
    """(ticks stolen by the hypervisor, all ticks) of every CPU so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def stolen_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time the hypervisor took between two ``cpu_ticks()``."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


async def bounded(items: Sequence[Any], fn: Callable[[Any], Awaitable[Any]],
                  inflight: int) -> list[Any]:
    """``fn(item)`` for every item, at most ``inflight`` calls at a time; results in order.
    The first failure is raised (after the calls in flight have ended)."""
    results: list[Any] = [None] * len(items)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(items):
            i = next_index
            next_index += 1
            results[i] = await fn(items[i])

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, min(inflight, len(items))))]
    done = await asyncio.gather(*workers, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return results


async def timed(coro: Awaitable[Any]) -> tuple[float, Any]:
    """(seconds, result) of awaiting ``coro``."""
    t0 = time.perf_counter()
    result = await coro
    return time.perf_counter() - t0, result


async def latencies(pairs: Sequence[tuple[str, Callable[[], Awaitable[Any]]]], n: int,
                    warmup: int = 50) -> dict[str, list[float]]:
    """Sequential round trips, interleaved (a, b, a, b ...) so that both see the same noise;
    seconds per call, ``warmup`` calls of each first (not counted)."""
    out: dict[str, list[float]] = {name: [] for name, _ in pairs}
    for i in range(warmup + n):
        for name, fn in pairs:
            t0 = time.perf_counter()
            await fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                out[name].append(dt)
    return out
