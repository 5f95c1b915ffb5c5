"""polkit decides every mutating call.

- mock lane (python-dbusmock's polkitd): allow/deny by action id, for root callers;
- real lane (Debian's polkitd): an unprivileged user is refused every mutating method
  listed in introspection/ and nothing changes; a JS rule granting the actions lets
  the same user through; reads need no authorization;
- no polkit on the bus: only uid 0 passes.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.bus.conftest import Service
from tests.bus.helpers import MANAGER, MANAGER_PATH, POOL, VOLUME, dir_pool_xml, raw_volume_xml
from tests.contract.introspection import contract, documented_action
from tests.harness.bus import PrivateBus
from tests.harness.busctl import busctl
from tests.harness.daemon import StorageDaemon
from tests.harness.polkit import MockPolkit, mock_polkit_conf
from tests.harness.users import TestUser

E = "org.example.Storage.Error."
DEFINE = "org.example.storage.pool.define"
BUILD = "org.example.storage.pool.build"

MUTATING = sorted(
    (iface, m.name, m.signature, documented_action(m))
    for iface, i in contract().items() for m in i.members.values()
    if m.kind == "method" and documented_action(m) not in (None, "none")
)


# -- fixtures ---------------------------------------------------------------------------
async def _service(tmp_path, bus) -> Service:
    daemon = StorageDaemon(bus, tmp_path)
    service = Service(bus, daemon, tmp_path)
    daemon.start()
    await service.connect()
    return service


@pytest.fixture
async def mock_lane(tmp_path):
    bus = PrivateBus(mock_polkit_conf()).start()
    polkit = MockPolkit(bus)
    service = None
    try:
        polkit.start()
        service = await _service(tmp_path, bus)
        yield service, polkit
    finally:
        if service is not None:
            await service.close()
            service.daemon.stop()
        polkit.stop()
        bus.stop()


# -- mock lane --------------------------------------------------------------------------
async def test_mock_polkit_denies_and_allows_by_action(mock_lane):
    svc, polkit = mock_lane
    xml = dir_pool_xml("m", svc.workdir / "m")
    err = await svc.manager_error("DefinePool", "sa{sv}", xml, {})
    assert err.type == E + "NotAuthorized" and DEFINE in err.text
    assert await svc.manager("ListPools", "a{sv}", {}) == []            # reads stay open
    assert "storagepoolCapabilities" in await svc.manager("GetCapabilities", "a{sv}", {})

    polkit.set_allowed([DEFINE])
    pool = await svc.manager("DefinePool", "sa{sv}", xml, {})
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {})
    assert err.type == E + "NotAuthorized" and BUILD in err.text
    assert not (svc.workdir / "m").exists()
    # CreatePool with "build" needs the build action as well
    (svc.workdir / "c").mkdir()
    err = await svc.manager_error("CreatePool", "sa{sv}", dir_pool_xml("c", svc.workdir / "c"),
                                  {"build": svc.variant("b", True)})
    assert err.type == E + "NotAuthorized" and BUILD in err.text
    assert await svc.manager("ListPools", "a{sv}", {}) == [pool]

    polkit.set_allowed([DEFINE, BUILD])
    await svc.call(pool, POOL, "Build", "a{sv}", {})
    assert (svc.workdir / "m").is_dir()


# -- real lane --------------------------------------------------------------------------
def _arg(sig: str, member: str, svc: Service, vol: str) -> list[str]:
    if sig == "a{sv}":
        return ["0"]
    if sig == "s":
        if member in ("DefinePool", "CreatePool"):
            return [dir_pool_xml("intruder", svc.workdir / "intruder")]
        if member == "Define":
            return [dir_pool_xml("p", svc.workdir / "elsewhere")]
        return [raw_volume_xml("intruder.img", "1", "MiB")]
    return {"b": ["true"], "t": [str(1 << 20)], "o": [vol], "as": ["1", "/dev/null"],
            "ay": ["1", "120"], "h": []}[sig]   # h: see _fd_call


def _busctl_call(svc, user, path, iface, member, signature, args):
    sig = "".join(t for direction, t, _ in signature if direction == "in")
    if "h" in sig:
        return _fd_call(svc, user, path, iface, member, sig)
    return busctl(svc.bus.address, "call", "org.example.Storage", path, iface, member, sig,
                  *args, user=user, check=False)


_FD_CALL = (
    "import asyncio, json, os, sys\n"
    "from dbus_next import BusType, Message, MessageType\n"
    "from dbus_next.aio import MessageBus\n"
    "async def main(address, path, iface, member, sig, body):\n"
    "    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM,\n"
    "                           negotiate_unix_fd=True).connect()\n"
    "    fd = os.open('/dev/null', os.O_RDWR)\n"
    "    r = await bus.call(Message(destination='org.example.Storage', path=path,\n"
    "        interface=iface, member=member, signature=sig, body=json.loads(body),\n"
    "        unix_fds=[fd]))\n"
    "    if r.message_type == MessageType.ERROR:\n"
    "        sys.exit(f'{r.error_name}: {r.body[0] if r.body else \"\"}')\n"
    "asyncio.run(main(*sys.argv[1:]))\n"
)


def _fd_call(svc, user, path, iface, member, sig):
    """busctl cannot pass Unix fds: a dbus-next client run as ``user`` calls the method
    (``h`` gets /dev/null, ``t`` 1 MiB, ``a{sv}`` nothing); busctl-like result."""
    import json
    import sys

    from dbus_next.signature import SignatureTree

    body = [{"h": 0, "t": 1 << 20, "a{sv}": {}}[t.signature] for t in SignatureTree(sig).types]
    res = subprocess.run(
        ["runuser", "-u", user, "--", sys.executable, "-c", _FD_CALL, svc.bus.address, path,
         iface, member, sig, json.dumps(body)],
        capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0 and "Permission denied" in res.stderr and "Error" not in res.stderr:
        pytest.skip(f"{user} cannot run {sys.executable}: {res.stderr.strip()[:200]}")
    return res


async def _pools_and_volumes(svc):
    """What a caller could change (host Device objects follow other work on the machine)."""
    return {p: v for p, v in (await svc.managed_objects()).items() if "/devices/" not in p}


def _disk_state(svc):
    return sorted(
        (str(p.relative_to(svc.workdir)), p.stat().st_size, oct(p.stat().st_mode))
        for p in svc.workdir.rglob("*") if p.name != "daemon.log"
    )


async def test_unprivileged_user_is_refused_every_mutating_method(real_lane):
    svc, polkitd, user = real_lane
    pool = await svc.running_dir_pool("p")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("v", "1", "MiB"), {})
    before_disk = _disk_state(svc)
    before_objects = await _pools_and_volumes(svc)
    targets = {MANAGER: MANAGER_PATH, POOL: pool, VOLUME: vol}
    assert len(MUTATING) >= 15

    for iface, member, signature, action in MUTATING:
        if iface not in targets:
            continue   # Job.Cancel needs a running job: tests/bus/test_jobs.py
        args = []
        for direction, t, _ in signature:
            if direction == "in":
                args += _arg(t, member, svc, vol)
        res = _busctl_call(svc, user.name, targets[iface], iface, member, signature, args)
        assert res.returncode != 0, f"{member} was allowed for {user.name}"
        assert "not authorized" in res.stderr.lower(), (member, res.stderr)
        assert action in res.stderr, (member, res.stderr)

    assert _disk_state(svc) == before_disk
    assert await _pools_and_volumes(svc) == before_objects

    # reads need no authorization
    res = busctl(svc.bus.address, "call", "org.example.Storage", pool, POOL, "GetXMLDesc",
                 "a{sv}", "0", user=user.name)
    assert "<pool type=" in res.stdout


async def test_error_names_for_unprivileged_user(real_lane):
    """busctl shows the message; a library client sees the D-Bus error name."""
    svc, polkitd, user = real_lane
    script = (
        "import asyncio,sys\n"
        "from dbus_next.aio import MessageBus\n"
        "from dbus_next import Message, BusType\n"
        "async def main():\n"
        "    bus = await MessageBus(bus_address=sys.argv[1]).connect()\n"
        "    r = await bus.call(Message(destination='org.example.Storage',"
        " path='/org/example/Storage', interface='org.example.Storage.Manager',"
        " member='DefinePool', signature='sa{sv}', body=[sys.argv[2], {}]))\n"
        "    print(r.error_name)\n"
        "asyncio.run(main())\n"
    )
    import sys

    python = sys.executable
    res = subprocess.run(
        ["runuser", "-u", user.name, "--", python, "-c", script, svc.bus.address,
         dir_pool_xml("x", svc.workdir / "x")],
        capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0 and "Permission denied" in res.stderr:
        pytest.skip(f"{user.name} cannot run {python}: {res.stderr.strip()[:200]}")
    # without logind the user is not "active": auth_admin applies, i.e. a challenge
    assert res.stdout.strip() == E + "NotAuthorizedCanObtain", res.stderr


async def test_rule_grants_the_unprivileged_user(real_lane):
    svc, polkitd, user = real_lane
    actions = sorted({a for *_, a in MUTATING})
    polkitd.grant(user.name, actions)
    target = svc.workdir / "granted"
    res = busctl(svc.bus.address, "call", "org.example.Storage", MANAGER_PATH, MANAGER,
                 "DefinePool", "sa{sv}", dir_pool_xml("granted", target), "0",
                 user=user.name, check=False)
    assert res.returncode == 0, res.stderr
    pool = res.stdout.split('"')[1]
    for member in ("Build", "Start"):
        res = busctl(svc.bus.address, "call", "org.example.Storage", pool, POOL, member,
                     "a{sv}", "0", user=user.name, check=False)
        assert res.returncode == 0, (member, res.stderr)
    res = busctl(svc.bus.address, "call", "org.example.Storage", pool, POOL, "CreateVolume",
                 "sa{sv}", raw_volume_xml("mine.img", "1", "MiB"), "0", user=user.name,
                 check=False)
    assert res.returncode == 0, res.stderr
    assert (target / "mine.img").stat().st_size == 1 << 20


async def test_no_polkit_only_root_passes(svc):
    with TestUser() as user:
        res = busctl(svc.bus.address, "call", "org.example.Storage", MANAGER_PATH, MANAGER,
                     "DefinePool", "sa{sv}", dir_pool_xml("x", svc.workdir / "x"), "0",
                     user=user.name, check=False)
        assert res.returncode != 0 and "only root" in res.stderr
        res = busctl(svc.bus.address, "call", "org.example.Storage", MANAGER_PATH, MANAGER,
                     "ListPools", "a{sv}", "0", user=user.name, check=False)
        assert res.returncode == 0, res.stderr
    assert await svc.manager("ListPools", "a{sv}", {}) == []


async def test_subject_details_and_interaction_flag(mock_lane):
    """What the service asks polkit: its caller as subject, pool/volume details, and
    user interaction unless the caller passed auth.no_user_interaction."""
    from tests.harness.client import call

    svc, polkit = mock_lane
    polkit.set_allowed(sorted({a for *_, a in MUTATING}))
    pool = await svc.running_dir_pool("d")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml("v", "1", "MiB"), {})
    await call(svc.client, "/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.DBus.Mock",
               "ClearCalls", destination="org.freedesktop.PolicyKit1")
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 2 << 20, {})
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 3 << 20,
                   {"auth.no_user_interaction": svc.variant("b", True)})
    (calls,) = await call(svc.client, "/org/freedesktop/PolicyKit1/Authority",
                          "org.freedesktop.DBus.Mock", "GetMethodCalls", "s",
                          ["CheckAuthorization"], destination="org.freedesktop.PolicyKit1")
    assert len(calls) == 2
    (_, first), (_, second) = calls
    subject, action, details, flags, _cancel = first
    assert subject[0] == "system-bus-name"
    assert subject[1]["name"] == svc.client.unique_name
    assert action == "org.example.storage.volume.manage"
    assert details == {"pool": "d", "volume": "v"}
    assert flags == 1                      # AllowUserInteraction
    assert second[3] == 0                  # auth.no_user_interaction honoured
