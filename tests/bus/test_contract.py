"""The running service's Introspect output equals introspection/*.xml."""

import asyncio
import contextlib

from dbus_next.errors import DBusError

from tests.bus.helpers import POOL, VOLUME, dir_pool_xml, raw_volume_xml
from tests.contract.introspection import contract, parse_interfaces, structure

JOB = "org.example.Storage.Job"
STANDARD = {
    "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer",
    "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.ObjectManager",
}


async def test_introspection_matches_contract(svc):
    pool = await svc.running_dir_pool("c")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("v", "1", "MiB"), {})
    # a Job object exists while a long operation runs: a random wipe of a 1 GiB volume
    big = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("b", "1", "GiB"),
                         {})
    rec = await svc.recorder()
    wipe = asyncio.ensure_future(svc.call(big, VOLUME, "Wipe", "a{sv}",
                                          {"algorithm": svc.variant("s", "random")}))
    added = await rec.wait_for(lambda s: s.member == "InterfacesAdded"
                               and JOB in s.body[1])
    job = added.body[0]
    seen = {}
    devices = await svc.manager("ListDevices", "a{sv}", {})   # the host's block devices
    for path in ("/org/example/Storage", pool, vol, devices[0], job):
        xml = await svc.introspect(path)
        ifaces = parse_interfaces(xml)
        seen.update({k: v for k, v in ifaces.items() if k not in STANDARD})
    await svc.call(job, JOB, "Cancel", "a{sv}", {})
    with contextlib.suppress(DBusError):
        await wipe
    assert structure(seen) == structure(contract())
    # the manager's path also answers ObjectManager
    assert "org.freedesktop.DBus.ObjectManager" in await svc.introspect("/org/example/Storage")


async def test_pool_names_are_escaped_into_paths(svc):
    for name in ("a b", "über", "x.y-z", "_"):
        target = svc.workdir / f"d{len(name)}{ord(name[0])}"
        pool = await svc.manager("DefinePool", "sa{sv}", dir_pool_xml(name, target), {})
        assert pool.startswith("/org/example/Storage/pools/")
        assert await svc.manager("LookupPoolByName", "sa{sv}", name, {}) == pool
