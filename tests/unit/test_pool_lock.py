"""The pool lock (core/poollock.py) and the volume work that runs under its shared mode:
creates and deletes of a dir pool run side by side, keep their names apart, and anything
exclusive (Destroy, Refresh ...) waits for them all."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from example_storage.core.manager import StorageManager
from example_storage.core.poollock import PoolLock
from example_storage.errors import AlreadyExists, NotFound

MiB = 1 << 20


async def _spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_shared_holders_run_together_exclusive_waits():
    lock = PoolLock()
    order: list[str] = []
    inside = 0
    most = 0

    async def shared(tag: str) -> None:
        nonlocal inside, most
        async with lock.shared():
            inside += 1
            most = max(most, inside)
            order.append(f"{tag}+")
            await _spin()
            inside -= 1
            order.append(f"{tag}-")

    async def exclusive(tag: str) -> None:
        async with lock:
            assert inside == 0 and lock.shared_holders == 0
            order.append(f"{tag}+")
            await _spin()
            order.append(f"{tag}-")

    await asyncio.gather(shared("a"), shared("b"), exclusive("X"), shared("c"))
    assert most == 2                      # a and b together
    # X waits for a and b; c (queued after X) waits for X: arrival order, no starvation
    assert order.index("X+") > max(order.index("a-"), order.index("b-"))
    assert order.index("c+") > order.index("X-")
    assert not lock.locked()


async def test_exclusive_is_an_asyncio_lock():
    lock = PoolLock()
    async with lock:
        assert lock.locked()
        waiter = asyncio.ensure_future(lock.acquire())
        await _spin()
        assert not waiter.done()
    await waiter
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


async def test_cancelled_waiters_do_not_hold_the_lock():
    lock = PoolLock()
    await lock.acquire()
    w1 = asyncio.ensure_future(lock.acquire_shared())
    w2 = asyncio.ensure_future(lock.acquire())
    await _spin()
    w1.cancel()
    w2.cancel()
    await asyncio.gather(w1, w2, return_exceptions=True)
    lock.release()
    assert not lock.locked()
    async with lock.shared():            # nothing stuck in the queue
        assert lock.shared_holders == 1


# -- a dir pool's creates and deletes ---------------------------------------------------

def _vol_xml(name: str) -> str:
    return (f"<volume><name>{name}</name><capacity unit='bytes'>{MiB}</capacity>"
            "<target><format type='raw'/></target></volume>")


@pytest.fixture
async def dir_pool(tmp_path: Path):
    manager = StorageManager(tmp_path / "config", tmp_path / "run")
    manager.store.prepare()
    target = tmp_path / "pool"
    target.mkdir()
    pool = await manager.create_pool(
        f"<pool type='dir'><name>p</name><target><path>{target}</path></target></pool>")
    return manager, pool, target


async def test_concurrent_creates_and_deletes(dir_pool):
    manager, pool, target = dir_pool

    async def create(name: str) -> None:
        async with pool.volume_lock():
            await pool.create_volume(_vol_xml(name))

    async def delete(name: str) -> None:
        async with pool.volume_lock():
            await pool.delete_volume(name)

    names = [f"v{i:03d}" for i in range(40)]
    await asyncio.gather(*(create(n) for n in names))
    assert sorted(pool.volumes) == names == sorted(os.listdir(target))
    # the same name twice at once: one wins, the other is told it exists
    results = await asyncio.gather(create("twice"), create("twice"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "NoneType"]
    assert os.listdir(target).count("twice") == 1
    with pytest.raises(AlreadyExists):
        await create("v000")
    results = await asyncio.gather(delete("twice"), delete("twice"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) in (["Busy", "NoneType"],
                                                          ["NoneType", "NotFound"])
    await asyncio.gather(*(delete(n) for n in names))
    assert pool.volumes == {} and os.listdir(target) == []
    with pytest.raises(NotFound):
        await delete("v000")


async def test_destroy_waits_for_creates_in_flight(dir_pool):
    manager, pool, target = dir_pool

    async def create(name: str) -> None:
        async with pool.volume_lock():
            await pool.create_volume(_vol_xml(name))

    creates = [asyncio.ensure_future(create(f"c{i}")) for i in range(8)]
    await asyncio.sleep(0)
    await manager.destroy_pool(pool)           # exclusive: after every create ended
    await asyncio.gather(*creates)
    assert sorted(os.listdir(target)) == [f"c{i}" for i in range(8)]
    assert "p" not in manager.pools
