"""GetManagedObjects, GetAll and Get of our objects, answered by adapter/direct_replies.py.

The library still answers GetManagedObjects on any other path, ``/`` included, by its own
handler: that answer (minus the manager's own object, which ``/`` includes) is the
reference ours must equal, Variant for Variant, before and after objects change (our
answer reuses each object's marshalled entry while its properties are unchanged). The
daemon follows no uevents here (``--udev-source none``): host block devices, which other
work on this machine changes at any time, stay as the start-up scan found them, so the two
answers are taken from the same state.
"""

from __future__ import annotations

import pytest
from dbus_next import Message, MessageType
from dbus_next.errors import DBusError

from tests.bus.conftest import running_service
from tests.bus.helpers import MANAGER, MANAGER_PATH, POOL, VOLUME, dir_pool_xml, raw_volume_xml
from tests.harness.bus import PrivateBus
from tests.harness.client import call

OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"


def _dbus_fast_installed() -> bool:
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
async def quiet(tmp_path, request):
    """The service (library from the parameter) with no uevents followed."""
    bus = PrivateBus().start()
    try:
        async with running_service(tmp_path, bus, getattr(request, "param", "dbus-next"),
                                   ("--udev-source", "none")) as service:
            yield service
    finally:
        bus.stop()


def _libraries(fixture: str):
    """Run with each D-Bus library in the daemon (``fixture`` is indirectly parametrized)."""
    return pytest.mark.parametrize(fixture, [
        "dbus-next",
        pytest.param("dbus-fast", marks=pytest.mark.skipif(
            not _dbus_fast_installed(), reason="dbus-fast is not installed (pip install .[fast])")),
    ], indirect=True)


async def _raw_objects(svc, path: str) -> dict:
    """GetManagedObjects on ``path``, Variants kept; checks the reply's signature."""
    reply = await svc.client.call(Message(
        destination="org.example.Storage", path=path, interface=OBJECT_MANAGER,
        member="GetManagedObjects"))
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    assert reply.signature == "a{oa{sa{sv}}}"
    return reply.body[0]


async def _ours_and_library(svc) -> tuple[dict, dict]:
    ours = await _raw_objects(svc, MANAGER_PATH)
    library = await _raw_objects(svc, "/")
    manager = library.pop(MANAGER_PATH)
    assert set(manager) == {MANAGER}           # "/" was the library's answer
    return ours, library


def _sparse(path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@_libraries("quiet")
async def test_same_answer_as_the_library(quiet):
    svc = quiet
    pool = await svc.running_dir_pool("small")
    target = svc.workdir / "small"
    await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("disk1.img", "1", "MiB"),
                   {})
    for name in ("a b.img", "v1", "v10", "ünï.raw"):
        _sparse(target / name, 3 << 20)
    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("idle", svc.workdir / "idle"), {})

    ours, library = await _ours_and_library(svc)
    assert ours == library
    volumes = {p: o[VOLUME] for p, o in ours.items() if p.startswith(pool + "/volumes/")}
    assert {v["Name"].value for v in volumes.values()} == {
        "disk1.img", "a b.img", "v1", "v10", "ünï.raw"}
    # each object lists its own interface only, as the library does
    assert all(len(interfaces) == 1 for interfaces in ours.values())

    # GetAll and Get of each object equal the listing; the manager's equal the library's
    for path, interfaces in [*ours.items(), (MANAGER_PATH, {MANAGER: None})]:
        (iface,) = interfaces
        (values,) = await call(svc.client, path, PROPERTIES, "GetAll", "s", [iface], raw=True)
        if path != MANAGER_PATH:
            assert values == interfaces[iface]
        for name, value in values.items():
            (got,) = await call(svc.client, path, PROPERTIES, "Get", "ss", [iface, name],
                                raw=True)
            assert got == value
    manager_values = await svc.props(MANAGER_PATH, MANAGER)
    assert set(manager_values) == {"Version", "SupportedPoolTypes", "Jobs"}


@_libraries("svc")
async def test_errors_stay_the_librarys(svc):
    pool = await svc.running_dir_pool("e")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("v", "1", "MiB"), {})

    async def error(path, member, signature, body) -> str:
        with pytest.raises(DBusError) as e:
            await call(svc.client, path, PROPERTIES, member, signature, body)
        return e.value.type

    assert await error(vol, "Get", "ss", [VOLUME, "Nope"]) == (
        "org.freedesktop.DBus.Error.UnknownProperty")
    assert await error(vol, "GetAll", "s", ["org.example.Nope"]) == (
        "org.freedesktop.DBus.Error.UnknownInterface")
    assert await error(vol, "Set", "ssv", [VOLUME, "Name", svc.variant("s", "x")]) == (
        "org.freedesktop.DBus.Error.PropertyReadOnly")
    assert await error(pool + "/nothing", "GetAll", "s", [VOLUME]) in (
        "org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod")
    # a standard interface has no properties
    assert await call(svc.client, vol, PROPERTIES, "GetAll", "s", [
        "org.freedesktop.DBus.Peer"]) == [{}]
    # another object's interface name at this path is not this object's
    assert await error(vol, "GetAll", "s", [POOL]) == (
        "org.freedesktop.DBus.Error.UnknownInterface")
    # GetManagedObjects on a sub-path is still the library's: the objects below it
    below = await _raw_objects(svc, pool)
    assert set(below) == {vol}


@_libraries("quiet")
async def test_two_thousand_volumes(quiet):
    svc = quiet
    target = svc.workdir / "many"
    target.mkdir()
    sizes = {f"v{i:04d}.img": (1 << 20) + i * 4096 for i in range(2000)}
    for name, size in sizes.items():
        _sparse(target / name, size)
    pool = await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("many", target), {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})

    objects = await svc.managed_objects()
    volumes = {o[VOLUME]["Name"]: (p, o[VOLUME]) for p, o in objects.items()
               if p.startswith(pool + "/volumes/")}
    assert set(volumes) == set(sizes)
    for name, (_path, props) in volumes.items():
        assert props["Capacity"] == sizes[name], name
        assert props["Path"] == str(target / name)
        assert props["Pool"] == pool and props["Format"] == "raw" and props["Type"] == "file"
    assert objects[pool][POOL]["Name"] == "many"

    # change some: each change shows in the next listing (no stale entries), which equals
    # the library's again
    v7, _ = volumes["v0007.img"]
    await svc.call(v7, VOLUME, "Resize", "ta{sv}", 8 << 20, {})
    await svc.call(volumes["v0008.img"][0], VOLUME, "Delete", "a{sv}", {})
    new = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("new.img", "2", "MiB"), {})
    with open(target / "v0009.img", "r+b") as f:
        f.write(b"\1" * (256 << 10))
    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    ours, library = await _ours_and_library(svc)
    assert ours == library
    assert ours[v7][VOLUME]["Capacity"].value == 8 << 20
    assert volumes["v0008.img"][0] not in ours
    assert ours[new][VOLUME]["Capacity"].value == 2 << 20
    assert ours[volumes["v0009.img"][0]][VOLUME]["Allocation"].value >= 256 << 10
    assert len([p for p in ours if p.startswith(pool + "/volumes/")]) == 2000


@_libraries("quiet")
async def test_introspect_of_a_volume_lists_no_children(quiet):
    """A volume's Introspect is the library's XML for it, with no child nodes: dbus-next's
    own handler would list a node "0" below volume v1 when a volume v10 exists."""
    import xml.etree.ElementTree as ET

    svc = quiet
    pool = await svc.running_dir_pool("intro")
    for name in ("v1", "v10"):
        _sparse(svc.workdir / "intro" / name, 1 << 20)
    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    v1, v10 = pool + "/volumes/v1", pool + "/volumes/v10"
    for path in (v1, v10):
        xml = await svc.introspect(path)
        assert xml.startswith('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object')
        root = ET.fromstring(xml.split("\n", 2)[2])
        assert root.tag == "node" and root.get("name") == path
        assert root.findall("node") == []
        assert [i.get("name") for i in root.findall("interface")] == [
            "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer",
            "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.ObjectManager", VOLUME]
        volume = root.find(f"interface[@name='{VOLUME}']")
        assert {p.get("name") for p in volume.findall("property")} >= {"Name", "Capacity"}
    # the pool (still the library's answer) lists its volumes container
    root = ET.fromstring((await svc.introspect(pool)).split("\n", 2)[2])
    assert [n.get("name") for n in root.findall("node")] == ["volumes"]
