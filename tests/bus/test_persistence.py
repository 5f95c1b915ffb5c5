"""After a restart, even after kill -9, the same pools in the same states and volumes."""

import asyncio

import pytest
from dbus_next import MessageType

from tests.bus.helpers import POOL, dir_pool_xml, raw_volume_xml
from tests.harness.client import call, connect

OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


async def _view(svc):
    """What a client sees of pools and volumes: every object's properties (host Device
    objects follow other work on the machine, not the daemon's state)."""
    return {p: v for p, v in (await svc.managed_objects()).items() if "/devices/" not in p}


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
async def test_restart_keeps_pools_states_volumes(svc, how):
    running = await svc.running_dir_pool("running")
    for i in range(3):
        await svc.call(running, POOL, "CreateVolume", "sa{sv}",
                       raw_volume_xml(f"v{i}", str(i + 1), "MiB"), {})
    inactive = await svc.manager("DefinePool", "sa{sv}",
                                 dir_pool_xml("inactive", svc.workdir / "inactive"), {})
    auto = await svc.manager("DefinePool", "sa{sv}",
                             dir_pool_xml("auto", svc.workdir / "auto"), {})
    await svc.call(auto, POOL, "Build", "a{sv}", {})
    await svc.call(auto, POOL, "SetAutostart", "ba{sv}", True, {})
    (svc.workdir / "t").mkdir()
    transient = await svc.manager("CreatePool", "sa{sv}", dir_pool_xml("t", svc.workdir / "t"), {})
    await svc.call(transient, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("tv", "1", "MiB"), {})

    before = await _view(svc)
    if how == "kill9":
        svc.daemon.kill9()
    else:
        svc.daemon.stop()
        assert svc.daemon.returncode == 0, svc.daemon.log()[-2000:]
    await svc.restart()
    after = await _view(svc)

    # the autostart pool was inactive before and is running now; all else is equal
    assert before[auto][POOL]["State"] == "inactive"
    assert after[auto][POOL]["State"] == "running"
    for view in (before, after):
        view[auto][POOL].update(State="x", Active=None, Capacity=0, Allocation=0, Available=0)
        for path in view:
            if POOL in view[path]:
                for figure in ("Allocation", "Available"):
                    view[path][POOL][figure] = 0   # other work on the disk moves these
    assert after == before
    assert after[inactive][POOL]["State"] == "inactive"
    assert after[transient][POOL]["Persistent"] is False
    assert after[running][POOL]["State"] == "running"


async def test_transient_pool_whose_storage_vanished_is_gone_after_restart(svc):
    (svc.workdir / "t").mkdir()
    await svc.manager("CreatePool", "sa{sv}", dir_pool_xml("t", svc.workdir / "t"), {})
    svc.daemon.kill9()
    (svc.workdir / "t").rmdir()
    await svc.restart()
    assert await svc.manager("ListPools", "a{sv}", {}) == []
    assert not (svc.run_dir / "pools" / "t.xml").exists()


async def test_persistent_pool_whose_storage_vanished_is_inactive_after_restart(svc):
    pool = await svc.running_dir_pool("p")
    svc.daemon.kill9()
    (svc.workdir / "p").rmdir()
    await svc.restart()
    props = await svc.props(pool, POOL)
    assert props["State"] == "inactive"
    assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == []


async def test_corrupt_config_file_does_not_stop_the_daemon(svc):
    await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("good", svc.workdir / "good"), {})
    svc.daemon.stop()
    (svc.config_dir / "pools" / "bad.xml").write_text("<pool type='dir'><name>bad")
    (svc.config_dir / "pools" / "liar.xml").write_text(
        "<pool type='dir'><name>other</name></pool>")
    await svc.restart()
    pools = await svc.manager("ListPools", "a{sv}", {})
    assert pools == ["/org/example/Storage/pools/good"]
    assert "bad.xml" in svc.daemon.log()


async def test_restored_objects_are_listed_not_announced_before_the_name(svc):
    """A client that watches every ObjectManager signal on the bus (no sender filter)
    across a restart: the restored volumes come in GetManagedObjects once the service owns
    its name, not as a burst of InterfacesAdded from a name nobody knows yet; a volume
    made after the start is announced."""
    pool = await svc.running_dir_pool("p")
    vols = [await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                           raw_volume_xml(f"v{i}", "1", "MiB"), {}) for i in range(5)]
    watcher = await connect(svc.bus.address)
    seen: list[tuple[str, str]] = []

    def on_message(msg) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.interface == OBJECT_MANAGER:
            seen.append((msg.member, msg.body[0]))

    try:
        await call(watcher, "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                   [f"type='signal',interface='{OBJECT_MANAGER}'"],
                   destination="org.freedesktop.DBus")
        watcher.add_message_handler(on_message)
        svc.daemon.stop()
        await svc.restart()
        listed = await svc.managed_objects()
        assert all(POOL in listed[pool] and v in listed for v in vols)
        assert not [s for s in seen if s[0] == "InterfacesAdded"], seen
        new = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                             raw_volume_xml("after", "1", "MiB"), {})
        for _ in range(100):
            if ("InterfacesAdded", new) in seen:
                break
            await asyncio.sleep(0.05)
        assert ("InterfacesAdded", new) in seen, seen
    finally:
        watcher.disconnect()
