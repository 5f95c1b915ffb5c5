"""Turns: the services of one bench run are all up at once, each driven by its own task, and
measure one at a time in an order fixed up front.

The create/delete rounds are the figures most moved by the machine's load changing (a
shared machine): measured as one block per service, a busier minute for one block moved
the ratio between services by 20-30 %. In turns, round k of every service comes before
round k+1 of any (the order rotated per round, so that no service always goes first), and
the medians compare like with like.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

Turn = tuple[str, str]          # (service, what it does in that turn)


def bench_order(services: Sequence[str], rounds: int) -> list[Turn]:
    """Every service starts (one after the other), then round 0 of every service, round 1
    of every service with the order rotated by one, ..., then the rest of each service's
    workloads, service after service."""
    order: list[Turn] = [(s, "start") for s in services]
    for k in range(rounds):
        shift = k % len(services) if services else 0
        rotated = [*services[shift:], *services[:shift]]
        order += [(s, f"round {k}") for s in rotated]
    order += [(s, "rest") for s in services]
    return order


class Turns:
    """Grants the turns of ``order`` one at a time (``async with turns.turn(service,
    what)``): a turn is waited for until every turn before it has ended or been
    forfeited. A service whose task ends early forfeits its turns left (``forfeit``), so
    that nobody waits for it."""

    def __init__(self, order: Sequence[Turn]) -> None:
        if len(set(order)) != len(order):
            raise ValueError("a turn appears twice in the order")
        self._left: list[Turn] = list(order)
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def turn(self, service: str, what: str) -> AsyncIterator[None]:
        key = (service, what)
        async with self._changed:
            if key not in self._left:
                raise KeyError(f"{service} has no turn {what!r} (left: {self._left})")
            await self._changed.wait_for(lambda: self._left[0] == key)
        try:
            yield
        finally:
            async with self._changed:
                self._left.remove(key)
                self._changed.notify_all()

    async def forfeit(self, service: str) -> None:
        """Drop every turn ``service`` has not taken yet."""
        async with self._changed:
            self._left = [t for t in self._left if t[0] != service]
            self._changed.notify_all()

    def left(self) -> list[Turn]:
        return list(self._left)
