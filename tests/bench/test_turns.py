"""bench/turns.py: services driven by concurrent tasks measure one at a time, in order."""

from __future__ import annotations

import asyncio

import pytest

from bench.turns import Turns, bench_order


def test_the_order_starts_all_rotates_the_rounds_and_ends_with_each_rest():
    order = bench_order(["lv", "next", "fast"], 3)
    assert order[:3] == [("lv", "start"), ("next", "start"), ("fast", "start")]
    rounds = [order[3:6], order[6:9], order[9:12]]
    assert [[s for s, _ in r] for r in rounds] == [
        ["lv", "next", "fast"], ["next", "fast", "lv"], ["fast", "lv", "next"]]
    assert all(what == f"round {k}" for k, r in enumerate(rounds) for _, what in r)
    assert order[12:] == [("lv", "rest"), ("next", "rest"), ("fast", "rest")]
    assert bench_order(["only"], 2) == [("only", "start"), ("only", "round 0"),
                                        ("only", "round 1"), ("only", "rest")]


async def service(turns: Turns, name: str, log: list, rounds: int, fail_at: int | None = None):
    try:
        async with turns.turn(name, "start"):
            log.append((name, "start", "begin"))
            await asyncio.sleep(0.01)
            log.append((name, "start", "end"))
        for k in range(rounds):
            if k == fail_at:
                raise RuntimeError(f"{name} failed")
            async with turns.turn(name, f"round {k}"):
                log.append((name, f"round {k}", "begin"))
                await asyncio.sleep(0.001 * (3 - k))
                log.append((name, f"round {k}", "end"))
        async with turns.turn(name, "rest"):
            log.append((name, "rest", "begin"))
            await asyncio.sleep(0)
            log.append((name, "rest", "end"))
    finally:
        await turns.forfeit(name)


async def test_concurrent_services_take_their_turns_in_order_never_overlapping():
    names = ["lv", "next", "fast"]
    order = bench_order(names, 3)
    turns = Turns(order)
    log: list = []
    # started in another order than the turns', each task waits for its turns
    await asyncio.wait_for(asyncio.gather(*(service(turns, n, log, 3)
                                            for n in reversed(names))), 10)
    begins = [(s, what) for s, what, edge in log if edge == "begin"]
    assert begins == order
    # each turn ends before the next begins
    assert all(log[i][2] == "begin" and log[i + 1][2] == "end" and log[i][:2] == log[i + 1][:2]
               for i in range(0, len(log), 2))
    assert turns.left() == []


async def test_a_service_that_fails_forfeits_its_turns_and_nobody_waits_for_it():
    names = ["lv", "next", "fast"]
    turns = Turns(bench_order(names, 3))
    log: list = []
    results = await asyncio.wait_for(asyncio.gather(
        service(turns, "lv", log, 3), service(turns, "next", log, 3, fail_at=1),
        service(turns, "fast", log, 3), return_exceptions=True), 10)
    assert isinstance(results[1], RuntimeError)
    begins = [(s, what) for s, what, edge in log if edge == "begin"]
    assert ("next", "round 0") in begins and ("next", "round 1") not in begins
    assert ("fast", "rest") in begins and ("lv", "rest") in begins
    assert turns.left() == []


async def test_unknown_turns_are_refused():
    turns = Turns(bench_order(["a"], 1))
    with pytest.raises(KeyError):
        async with turns.turn("a", "round 7"):
            pass
    with pytest.raises(ValueError):
        Turns([("a", "x"), ("a", "x")])
