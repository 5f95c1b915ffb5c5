"""Tests of the test harness itself (no storage daemon needed: a small fake stands in).

Run: ``.venv/bin/pytest -q tests/harness_selftest``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
from dbus_next.errors import DBusError

from tests.harness.bus import REPO, PrivateBus
from tests.harness.busctl import busctl, busctl_json
from tests.harness.client import (
    MANAGER_IFACE,
    MANAGER_PATH,
    POOL_IFACE,
    SignalRecorder,
    call,
    get_all,
    get_property,
    managed_objects,
)
from tests.harness.loop import mounts_of
from tests.harness.polkit import (
    AUTHORITY_IFACE,
    AUTHORITY_PATH,
    INSTALLED_POLICY,
    POLKIT_NAME,
    PROJECT_POLICY,
    MockPolkit,
    RealPolkitd,
    mock_polkit_conf,
)
from tests.harness.procs import pid_alive
from tests.harness.users import TestUser

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="needs root")

POOL_DEFINE = "org.example.storage.pool.define"
POOL_BUILD = "org.example.storage.pool.build"
FAKE = {"module": "tests.harness_selftest.fake_storaged", "env": {"PYTHONPATH": str(REPO)}}


async def check_authorization(bus, subject_name: str, action: str, timeout: float = 10):
    """CheckAuthorization for a system-bus-name subject, via dbus-next."""
    from dbus_next import Variant

    subject = ["system-bus-name", {"name": Variant("s", subject_name)}]
    (result,) = await call(
        bus, AUTHORITY_PATH, AUTHORITY_IFACE, "CheckAuthorization", "(sa{sv})sa{ss}us",
        [subject, action, {}, 0, ""], timeout, destination=POLKIT_NAME,
    )
    return result


def gone(pid: int) -> bool:
    """The process is neither running nor left as a zombie."""
    return not pid_alive(pid) and not Path(f"/proc/{pid}").exists()


# -- the private bus -----------------------------------------------------------------------
def test_private_bus_answers(private_bus: PrivateBus) -> None:
    out = busctl(private_bus.address, "list").stdout
    assert "org.freedesktop.DBus" in out
    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == private_bus.address
    env = private_bus.env()
    assert env["DBUS_SYSTEM_BUS_ADDRESS"] == private_bus.address
    assert "DBUS_SESSION_BUS_ADDRESS" not in env
    assert private_bus.dir is not None
    assert stat.S_IMODE(private_bus.dir.stat().st_mode) == 0o755
    assert private_bus.socket_path.is_socket()
    assert (private_bus.dir / "system.d" / "org.example.Storage.conf").is_file()
    names = busctl_json(private_bus.address, "call", "org.freedesktop.DBus",
                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames")
    assert "org.freedesktop.DBus" in names["data"][0]


def test_private_bus_config(private_bus: PrivateBus) -> None:
    assert private_bus.config_file is not None
    conf = private_bus.config_file.read_text()
    assert f"<listen>unix:path={private_bus.dir}/system_bus_socket</listen>" in conf
    for absent in ("<pidfile>", "standard_system_servicedirs", "<syslog", "servicehelper",
                   "/etc/dbus-1"):
        assert absent not in conf
    assert "<includedir>/usr/share/dbus-1/system.d</includedir>" in conf
    assert f"<includedir>{private_bus.dir}/system.d</includedir>" in conf


def test_private_bus_activates_nothing(private_bus: PrivateBus) -> None:
    res = busctl_json(private_bus.address, "call", "org.freedesktop.DBus",
                      "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListActivatableNames")
    assert res["data"][0] == ["org.freedesktop.DBus"]


@root_only
def test_bus_policy_only_root_owns_storage_name(
    private_bus: PrivateBus, test_user: TestUser
) -> None:
    args = ("call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
            "RequestName", "su", "org.example.Storage", "0")
    denied = busctl(private_bus.address, *args, user=test_user.name, check=False)
    assert denied.returncode != 0 and "denied" in denied.stderr.lower(), denied
    assert busctl(private_bus.address, *args).stdout.strip() == "u 1"


def test_bus_stop_leaves_nothing() -> None:
    bus = PrivateBus().start()
    pid, sockdir = bus.pid, bus.dir
    assert pid is not None and sockdir is not None and pid_alive(pid)
    bus.stop()
    bus.stop()  # idempotent
    assert gone(pid)
    assert not sockdir.exists()


# -- mock polkit ---------------------------------------------------------------------------
async def test_mock_polkit_allows_per_set_allowed(mock_polkit: MockPolkit, dbus_client) -> None:
    client = await dbus_client(mock_polkit.bus)
    me = client.unique_name
    assert (await check_authorization(client, me, POOL_DEFINE))[0] is False
    mock_polkit.set_allowed([POOL_DEFINE])
    allowed, challenge, _details = await check_authorization(client, me, POOL_DEFINE)
    assert (allowed, challenge) == (True, False)
    assert (await check_authorization(client, me, POOL_BUILD))[0] is False
    mock_polkit.set_allowed([])
    assert (await check_authorization(client, me, POOL_DEFINE))[0] is False
    mock_polkit.allow_unknown(True)
    assert (await check_authorization(client, me, POOL_BUILD))[0] is True


async def test_call_timeout_with_hanging_polkit(mock_polkit: MockPolkit, dbus_client) -> None:
    client = await dbus_client(mock_polkit.bus.address)
    mock_polkit.simulate_hang(True)
    with pytest.raises(TimeoutError):
        await check_authorization(client, client.unique_name, POOL_DEFINE, timeout=0.5)
    mock_polkit.release_hanging_calls()


def test_mock_polkit_stop_leaves_nothing() -> None:
    with PrivateBus(mock_polkit_conf()) as bus, MockPolkit(bus) as mock:
        pids = [bus.pid, mock.pid]
        log = mock.log_path
    assert all(pid is not None and gone(pid) for pid in pids)
    assert not log.exists()


# -- real polkitd --------------------------------------------------------------------------
async def test_real_polkit_authorizes_root(real_polkit: RealPolkitd, dbus_client) -> None:
    assert INSTALLED_POLICY.read_bytes() == PROJECT_POLICY.read_bytes()
    client = await dbus_client(real_polkit.bus)
    allowed, _challenge, _details = await check_authorization(
        client, client.unique_name, POOL_DEFINE
    )
    assert allowed is True


def test_real_polkit_user_refused_until_granted(
    real_polkit: RealPolkitd, test_user: TestUser
) -> None:
    refused = real_polkit.check_as(test_user.name, POOL_DEFINE)
    # no logind: a non-root caller is inactive/remote, allow_any = auth_admin applies
    assert refused.is_authorized is False and refused.is_challenge is True
    with real_polkit.grant(test_user.name, [POOL_DEFINE]) as grant:
        assert grant.path.is_file()
        assert real_polkit.check_as(test_user.name, POOL_DEFINE).is_authorized is True
        assert real_polkit.check_as(test_user.name, POOL_BUILD).is_authorized is False
    assert not grant.path.exists()
    assert real_polkit.check_as(test_user.name, POOL_DEFINE).is_authorized is False


def test_real_polkit_user_check_via_plain_busctl(
    real_polkit: RealPolkitd, test_user: TestUser
) -> None:
    """The documented way: runuser + busctl, subject = the busctl process itself."""
    script = (
        f'exec busctl --address="$1" call {POLKIT_NAME} {AUTHORITY_PATH} {AUTHORITY_IFACE} '
        "CheckAuthorization '(sa{sv})sa{ss}us' unix-process 3 pid u $$ start-time t 0 "
        f'uid i {test_user.uid} {POOL_DEFINE} 0 0 ""'
    )
    argv = ["runuser", "-u", test_user.name, "--", "/bin/sh", "-c", script, "sh",
            real_polkit.bus.address]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.startswith("(bba{ss}) false true"), out
    with real_polkit.grant(test_user.name, [POOL_DEFINE]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert out.startswith("(bba{ss}) true false"), out


def _installed_policy_when_unheld() -> bytes | None:
    """The installed .policy, read under the harness's lock; skip if another test run on
    this machine holds it right now (then it is the project's, not the host's)."""
    from tests.harness.polkit import _PolicyInstall

    with _PolicyInstall()._locked() as holders:
        if any(holders.iterdir()):
            pytest.skip("another test run on this machine holds the installed .policy")
        return INSTALLED_POLICY.read_bytes() if INSTALLED_POLICY.exists() else None


@root_only
def test_real_polkit_stop_leaves_nothing_and_restores_policy() -> None:
    before = _installed_policy_when_unheld()
    with TestUser() as user, PrivateBus() as bus, RealPolkitd(bus) as polkitd:
        pids = [bus.pid, polkitd.pid]
        grant = polkitd.grant(user.name, [POOL_DEFINE])  # left for stop() to remove
        rule = grant.path
        assert INSTALLED_POLICY.read_bytes() == PROJECT_POLICY.read_bytes()
    assert all(pid is not None and gone(pid) for pid in pids)
    assert not rule.exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(user.name)
    assert _installed_policy_when_unheld() == before


# -- loop devices --------------------------------------------------------------------------
def losetup_list() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout


def test_loop_device_attach_mount_detach(loop_device, tmp_path: Path) -> None:
    dev = loop_device(32 << 20)
    assert dev.path.startswith("/dev/loop")
    assert f"{dev.path}:" in losetup_list() and str(dev.image) in losetup_list()
    assert dev.image.stat().st_size == 32 << 20
    assert dev.image.stat().st_blocks == 0  # sparse
    subprocess.run(["mkfs.ext4", "-q", dev.path], check=True, capture_output=True)
    mnt = tmp_path / "mnt dir"  # a space: mountinfo escapes it
    mnt.mkdir()
    subprocess.run(["mount", dev.path, str(mnt)], check=True)
    assert str(mnt) in mounts_of(dev.devnums())
    dev.detach()  # unmounts first
    assert not os.path.ismount(mnt)
    assert str(dev.image) not in losetup_list()
    assert not dev.image.exists()
    dev.detach()  # idempotent


@root_only
def test_loop_device_with_direct_io(tmp_path: Path) -> None:
    from tests.harness.loop import LoopDevice

    with LoopDevice(tmp_path / "dio.img", 16 << 20, direct_io=True) as dev:
        dio = Path("/sys/block") / dev.name / "loop" / "dio"
        assert dio.read_text().strip() == "1"
    with LoopDevice(tmp_path / "buffered.img", 16 << 20) as dev:
        assert (Path("/sys/block") / dev.name / "loop" / "dio").read_text().strip() == "0"


# -- users ---------------------------------------------------------------------------------
@root_only
def test_test_user_created_and_removed() -> None:
    with TestUser() as user:
        entry = pwd.getpwnam(user.name)
        assert user.name.startswith("estest") and len(user.name) == 12
        assert entry.pw_uid == user.uid and entry.pw_shell == "/usr/sbin/nologin"
        assert not Path(entry.pw_dir).exists() or entry.pw_dir in ("/", "/nonexistent")
    with pytest.raises(KeyError):
        pwd.getpwnam(user.name)


# -- daemon harness and client helpers, on a fake daemon -----------------------------------
async def test_daemon_harness_and_client_helpers(
    private_bus: PrivateBus, storaged, dbus_client
) -> None:
    daemon = storaged(private_bus, **FAKE)
    assert daemon.running and daemon.pid is not None
    assert daemon.config_dir.is_dir() and daemon.run_dir.is_dir()
    client = await dbus_client(private_bus)

    assert await call(client, MANAGER_PATH, MANAGER_IFACE, "Ping", "s", ["hi"]) == ["hi"]
    assert await get_property(client, MANAGER_PATH, MANAGER_IFACE, "Version") == "fake-1"
    assert await get_all(client, MANAGER_PATH, MANAGER_IFACE) == {"Version": "fake-1"}
    objects = await managed_objects(client)
    assert objects == {f"{MANAGER_PATH}/pools/fake": {POOL_IFACE: {"Name": "fake"}}}
    with pytest.raises(DBusError) as err:
        await call(client, MANAGER_PATH, MANAGER_IFACE, "Fail")
    assert err.value.type == "org.example.Storage.Error.Failed"
    assert err.value.text == "failed as asked"

    async with SignalRecorder(client) as rec:
        await call(client, MANAGER_PATH, MANAGER_IFACE, "Emit", "s", ["one"])
        sig = await rec.wait_for(lambda s: s.member == "Pinged", timeout=5)
        assert (sig.path, sig.interface, sig.body) == (MANAGER_PATH, MANAGER_IFACE, ["one"])

        first_pid = daemon.pid
        await asyncio.to_thread(daemon.restart)  # blocking: keep the client's loop running
        assert daemon.returncode == 0 and daemon.pid != first_pid
        await call(client, MANAGER_PATH, MANAGER_IFACE, "Emit", "s", ["two"])
        sig = await rec.wait_for(lambda s: s.body == ["two"], timeout=5)
        assert sig.sender != rec.signals[0].sender  # the new owner is followed
        with pytest.raises(TimeoutError):
            await rec.wait_for(lambda s: s.body == ["never"], timeout=0.2)

    pid = daemon.pid
    assert daemon.kill9() == -9
    assert pid is not None and gone(pid)
    log = daemon.log()
    assert log.count("=== harness: start") == 2 and "fake storaged: clean exit" in log


def test_daemon_start_failure_reports_log(private_bus: PrivateBus, storaged) -> None:
    with pytest.raises(RuntimeError, match="exited with 3(.|\n)*exiting early as asked"):
        storaged(private_bus, extra_args=["--exit-early", "3"], **FAKE)


def test_policy_install_is_shared_and_restored(tmp_path: Path, monkeypatch) -> None:
    """Concurrent runs share the installed .policy; the last one restores the host's file,
    also after a run that was killed (its holder's PID is dead)."""
    from tests.harness import polkit

    installed = tmp_path / "actions" / "org.example.storage.policy"
    installed.parent.mkdir()
    monkeypatch.setattr(polkit, "INSTALLED_POLICY", installed)
    monkeypatch.setattr(polkit, "STATE_DIR", tmp_path / "state")
    installed.write_text("<host's own/>")
    a, b = polkit._PolicyInstall(), polkit._PolicyInstall()
    a.install()
    b.install()
    a.uninstall()
    assert installed.read_bytes() == PROJECT_POLICY.read_bytes()
    b.uninstall()
    assert installed.read_text() == "<host's own/>"

    killed = polkit._PolicyInstall()
    killed.install()
    assert killed.holder is not None
    killed.holder.rename(killed.holder.with_name("999999999-killed"))  # no such PID
    c = polkit._PolicyInstall()
    c.install()
    c.uninstall()
    assert installed.read_text() == "<host's own/>"

    installed.unlink()
    d = polkit._PolicyInstall()
    d.install()
    assert installed.exists()
    d.uninstall()
    assert not installed.exists()
