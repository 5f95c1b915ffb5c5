"""Bad input gets a clear org.example.Storage.Error.* and changes nothing."""

import pytest

from tests.bus.helpers import POOL, VOLUME, dir_pool_xml, raw_volume_xml

E = "org.example.Storage.Error."

BAD_POOL_XML = {
    "not xml": ("<pool type='dir'><name>x</name>", "InvalidArgument"),
    # (a NUL cannot travel in a D-Bus string at all: the bus drops such a message)
    "garbage": ("\x01\x02 hello", "InvalidArgument"),
    "control chars in name": ("<pool type='dir'><name>a\x1bb</name></pool>", "InvalidArgument"),
    "wrong root": ("<volume><name>x</name></volume>", "InvalidArgument"),
    "unknown type": ("<pool type='floppy'><name>x</name></pool>", "InvalidArgument"),
    "no name": ("<pool type='dir'><target><path>/tmp/x</path></target></pool>",
                "InvalidArgument"),
    "dotdot name": ("<pool type='dir'><name>..</name><target><path>/tmp/x</path></target></pool>",
                    "InvalidArgument"),
    "traversal name": ("<pool type='dir'><name>../x</name><target><path>/tmp/x</path>"
                       "</target></pool>", "InvalidArgument"),
    "slash name": ("<pool type='dir'><name>/</name></pool>", "InvalidArgument"),
    "huge name": (f"<pool type='dir'><name>{'a' * 10240}</name></pool>", "InvalidArgument"),
    "bad uuid": ("<pool type='dir'><name>x</name><uuid>nope</uuid></pool>", "InvalidArgument"),
    "entity": ("<!DOCTYPE pool [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
               "<pool type='dir'><name>&e;</name></pool>", "InvalidArgument"),
    "billion laughs": ("<!DOCTYPE l [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;'>]>"
                       "<pool type='dir'><name>&b;</name></pool>", "InvalidArgument"),
    "2 MiB": ("<pool type='dir'><name>x</name><!--" + "x" * (2 << 20) + "--></pool>",
              "InvalidArgument"),
}


def _snapshot(svc):
    return sorted(str(p.relative_to(svc.workdir)) for p in svc.workdir.rglob("*")
                  if "daemon.log" not in p.name)


@pytest.mark.parametrize("case", sorted(BAD_POOL_XML))
async def test_define_pool_rejects(svc, case):
    xml, name = BAD_POOL_XML[case]
    before = _snapshot(svc)
    for member in ("DefinePool", "CreatePool"):
        err = await svc.manager_error(member, "sa{sv}", xml, {})
        assert err.type == E + name, (member, err.text)
        assert "Traceback" not in err.text and err.text
    assert _snapshot(svc) == before
    assert await svc.manager("ListPools", "a{sv}", {}) == []


async def test_duplicate_name_and_uuid(svc):
    xml = dir_pool_xml("dup", svc.workdir / "dup",
                       uuid="5e0a61c2-6a1f-4c41-8a37-4a8d2a4c1a11")
    await svc.manager("DefinePool", "sa{sv}", xml, {})
    err = await svc.manager_error("DefinePool", "sa{sv}", xml, {})
    assert err.type == E + "AlreadyExists"
    other = xml.replace("<name>dup</name>", "<name>dup2</name>")
    err = await svc.manager_error("DefinePool", "sa{sv}", other, {})
    assert err.type == E + "AlreadyExists" and "UUID" in err.text


async def test_wrong_option_type(svc):
    pool = await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("o", svc.workdir / "o"), {})
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {"overwrite": svc.variant("s", "y")})
    assert err.type == E + "InvalidArgument" and "overwrite" in err.text
    assert not (svc.workdir / "o").exists()


async def test_wrong_state(svc):
    pool = await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("s", svc.workdir / "s"), {})
    err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})       # not built
    assert err.type == E + "InvalidState"
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               raw_volume_xml("v", "1", "MiB"), {})
    assert err.type == E + "InvalidState"
    for member in ("Destroy", "Refresh"):
        err = await svc.call_error(pool, POOL, member, "a{sv}", {})
        assert err.type == E + "InvalidState", member
    await svc.call(pool, POOL, "Build", "a{sv}", {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    for member in ("Build", "Start", "Delete"):
        err = await svc.call_error(pool, POOL, member, "a{sv}", {})
        assert err.type == E + "InvalidState", member
    assert (await svc.props(pool, POOL))["State"] == "running"


BAD_VOLUME_XML = {
    "no capacity": ("<volume><name>v</name></volume>", "InvalidArgument"),
    "zero capacity": ("<volume><name>v</name><capacity>0</capacity></volume>",
                      "InvalidArgument"),
    "negative": ("<volume><name>v</name><capacity>-5</capacity></volume>", "InvalidArgument"),
    "bad unit": ("<volume><name>v</name><capacity unit='parsec'>5</capacity></volume>",
                 "InvalidArgument"),
    "overflow": ("<volume><name>v</name><capacity unit='EiB'>99999</capacity></volume>",
                 "InvalidArgument"),
    "traversal": ("<volume><name>../../etc/x</name><capacity>5</capacity></volume>",
                  "InvalidArgument"),
    "dot": ("<volume><name>.</name><capacity>5</capacity></volume>", "InvalidArgument"),
    "unknown format": ("<volume><name>v</name><capacity>5</capacity>"
                       "<target><format type='floppy'/></target></volume>", "InvalidArgument"),
    "too big allocation": ("<volume><name>v</name><capacity unit='PiB'>1</capacity>"
                           "<allocation unit='PiB'>1</allocation></volume>", "NoSpace"),
    "not xml": ("<volume>", "InvalidArgument"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOLUME_XML))
async def test_create_volume_rejects(svc, case):
    pool = await svc.running_dir_pool("bv")
    xml, name = BAD_VOLUME_XML[case]
    before = sorted(p.name for p in (svc.workdir / "bv").iterdir())
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}", xml, {})
    assert err.type == E + name, err.text
    assert "Traceback" not in err.text
    assert sorted(p.name for p in (svc.workdir / "bv").iterdir()) == before
    assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == []


async def test_path_in_volume_xml_is_ignored(svc):
    """A caller cannot make the service write outside the pool through <target><path>."""
    pool = await svc.running_dir_pool("pp")
    outside = svc.workdir / "outside.img"
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         f"<volume><name>in.img</name><capacity>4096</capacity>"
                         f"<target><path>{outside}</path></target></volume>", {})
    assert not outside.exists()
    assert (await svc.props(vol, VOLUME))["Path"] == str(svc.workdir / "pp" / "in.img")


async def test_existing_volume_and_missing_source(svc):
    pool = await svc.running_dir_pool("ev")
    await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("v", "1", "MiB"), {})
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               raw_volume_xml("v", "2", "MiB"), {})
    assert err.type == E + "AlreadyExists"
    assert (svc.workdir / "ev" / "v").stat().st_size == 1 << 20
    err = await svc.call_error(pool, POOL, "CreateVolumeFrom", "soa{sv}",
                               raw_volume_xml("w", "1", "MiB"),
                               "/org/example/Storage/pools/ev/volumes/nope", {})
    assert err.type == E + "NotFound"


async def test_lookups_not_found(svc):
    for member, arg, name in (
        ("LookupPoolByName", "nope", "NotFound"),
        ("LookupPoolByUUID", "5e0a61c2-6a1f-4c41-8a37-4a8d2a4c1a11", "NotFound"),
        ("LookupPoolByUUID", "not-a-uuid", "InvalidArgument"),
        ("LookupVolumeByPath", "/etc/passwd", "NotFound"),
        ("LookupVolumeByKey", "x" * 10000, "NotFound"),
    ):
        err = await svc.manager_error(member, "sa{sv}", arg, {})
        assert err.type == E + name, member


async def test_delete_refuses_non_empty_dir(svc):
    pool = await svc.running_dir_pool("ne")
    await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("keep", "1", "MiB"), {})
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    err = await svc.call_error(pool, POOL, "Delete", "a{sv}", {})
    assert err.type == E + "Busy"
    assert (svc.workdir / "ne" / "keep").exists()


async def test_device_and_snapshot_methods_on_a_dir_pool(svc):
    pool = await svc.running_dir_pool("nd")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("v", "1", "MiB"), {})
    err = await svc.call_error(pool, POOL, "AddDevices", "asa{sv}", ["/dev/null"], {})
    assert err.type == E + "NotSupported", err.text
    err = await svc.call_error(pool, POOL, "AddDevices", "asa{sv}", [], {})
    assert err.type == E + "InvalidArgument", err.text
    err = await svc.call_error(pool, POOL, "RemoveDevice", "sa{sv}", "/dev/null", {})
    assert err.type == E + "NotFound", err.text
    err = await svc.call_error(vol, VOLUME, "Snapshot", "sta{sv}", "snap", 1 << 20, {})
    assert err.type == E + "NotSupported", err.text
    err = await svc.call_error(vol, VOLUME, "Snapshot", "sta{sv}", "../x", 1 << 20, {})
    assert err.type == E + "InvalidArgument", err.text
    assert (await svc.props(pool, POOL))["Devices"] == []
    assert sorted(p.name for p in (svc.workdir / "nd").iterdir()) == ["v"]


@pytest.mark.parametrize(("pool_type", "hint", "name"), [
    ("dir", "", "NotSupported"),
    ("floppy", "", "InvalidArgument"),
    ("logical", "<pool type='dir'/>", "InvalidArgument"),
    ("logical", "<source>", "InvalidArgument"),
    ("logical", "<!DOCTYPE s [<!ENTITY e SYSTEM 'file:///etc/shadow'>]><source>&e;</source>",
     "InvalidArgument"),
])
async def test_find_pool_sources_rejects(svc, pool_type, hint, name):
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", pool_type, hint, {})
    assert err.type == E + name, err.text
    assert "root:" not in err.text          # no file content ever reaches the caller


async def test_error_replies_leave_no_traceback_in_the_log(svc):
    """A refused call is an answer, not a crash: the daemon's log stays free of
    tracebacks (dbus-next 0.2.3 logged one for every error reply of an async method)."""
    for _ in range(3):
        err = await svc.manager_error("DefinePool", "sa{sv}", "<pool", {})
        assert err.type == E + "InvalidArgument"
        err = await svc.manager_error("LookupPoolByName", "sa{sv}", "no-such-pool", {})
        assert err.type == E + "NotFound"
    await svc.manager("ListPools", "a{sv}", {})    # the log is written up to here
    log = svc.daemon.log()
    assert "Traceback" not in log and "Exception in callback" not in log, log[-2000:]


@pytest.mark.parametrize("svc", ["dbus-next", "dbus-fast"], indirect=True)
async def test_calls_that_match_no_method_are_unknown_methods(svc):
    """A member the interface does not have, a known member with another signature, or an
    interface the object does not have: UnknownMethod, and nothing happens."""
    pool = await svc.running_dir_pool("p")
    unknown = "org.freedesktop.DBus.Error.UnknownMethod"
    for args in [(pool, POOL, "NoSuchMethod", "a{sv}", {}),
                 (pool, POOL, "CreateVolume", "s", raw_volume_xml("v.img", "1", "MiB")),
                 (pool, VOLUME, "Delete", "a{sv}", {})]:
        err = await svc.call_error(*args)
        assert err.type == unknown, (args[2], err.type, err.text)
    assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == []
