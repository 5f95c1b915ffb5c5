"""Kernel iSCSI pools (open-iscsi) against the host's tgtd (runs in the VM lane's guest).

tests/vm/test_vm_iscsi.py starts tgtd on the host's 127.0.0.1 and boots the guest with
user-mode networking: the guest reaches it at 10.0.2.2 on ``VM_ISCSI_PORT``. The guest
changes the target through the host (tests/vm/host_agent.py: add/remove LUNs, CHAP
accounts) while its daemon watches. iscsid is started by the test (the guest has no init
system); the daemon only checks that it runs.

Covered: Start without iscsid says so; Start logs in, the LUNs are volumes (exact sizes,
WWN keys, /dev/sdX paths: no udevd here, so no /dev/disk/by-path) and Device objects of
the pool; a LUN added on the target comes as Pool.LunsChanged with no Refresh call, one
whose device goes away too; a 'scsi' pool on the session's SCSI host lists the same LUNs;
a daemon restart keeps the session and the pool running; Destroy refuses while a LUN is
mounted (Busy), else logs out and deletes the node record. CHAP, through the pool's own
initiator name (an open-iscsi iface): a missing, wrong and right secret, and the secret in
no process's argv, no reply and no log line; while logged in it is in the 0600 node record
and in the kernel's session attribute, which only root can read.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from example_storage.system.iscsiadm import iscsid_running, read_sessions
from example_storage.system.scsi_host import ScsiSysfs

from tests.bus.helpers import POOL, VOLUME
from tests.harness.procs import ArgvSampler, stop_child
from tests.vm.guest import run
from tests.vm.host_agent import ask_host

pytestmark = pytest.mark.vm
E = "org.example.Storage.Error."
SERVER = "10.0.2.2"
MiB = 1 << 20
NODES = Path("/etc/iscsi/nodes")


def iscsi_pool_xml(name: str, port: str, iqn: str, auth: str = "", initiator: str = ""
                   ) -> str:
    own = f"<initiator><iqn name='{initiator}'/></initiator>" if initiator else ""
    return (f"<pool type='iscsi'><name>{name}</name><source><host name='{SERVER}' "
            f"port='{port}'/><device path='{iqn}'/>{own}{auth}</source>"
            "<target><path>/dev/disk/by-path</path></target></pool>")


def scsi_pool_xml(name: str, host: str) -> str:
    return (f"<pool type='scsi'><name>{name}</name><source><adapter type='scsi_host' "
            f"name='{host}'/></source><target><path>/dev/disk/by-path</path></target></pool>")


def sessions(iqn: str):
    return [s for s in read_sessions() if s.target == iqn]


def lun_blocks(host: int) -> dict[str, str]:
    """'unit:0:0:N' -> the kernel name of its block device, from sysfs."""
    return {lun.volume_name: lun.block for lun in ScsiSysfs().luns(host) if lun.block}


async def volumes_by_name(svc, pool: str) -> dict[str, dict]:
    out = {}
    for path in await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}):
        props = await svc.props(path, VOLUME)
        out[props["Name"]] = {**props, "path": path}
    return out


class Iscsid:
    """iscsid in the foreground, started and stopped by PID (the guest has no init)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["iscsid", "-f", "-n"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while not iscsid_running():
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "iscsid did not come up"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10)
            self.proc = None


@pytest.fixture
def port() -> str:
    value = os.environ.get("VM_ISCSI_PORT")
    if not value:
        pytest.skip("VM_ISCSI_PORT is not set: tests/vm/test_vm_iscsi.py boots the guest "
                    "with a tgtd on the host")
    for tool in ("iscsiadm", "iscsid"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed (open-iscsi; run scripts/bootstrap)")
    # no udevd in the guest: nothing loads the drivers by modalias
    run(["modprobe", "-a", "iscsi_tcp", "sd_mod"])
    return value


@pytest.fixture
def iscsid(tmp_path):
    """Not started: each test starts it when it wants. After the test (its daemon is
    still running, it is stopped later) every session is logged out, every node record
    deleted, iscsid stopped."""
    daemon = Iscsid(tmp_path / "iscsid.log")
    yield daemon
    if daemon.proc is not None:
        subprocess.run(["iscsiadm", "-m", "session", "-u"], capture_output=True, timeout=60)
        subprocess.run(["iscsiadm", "-m", "node", "-o", "delete"], capture_output=True,
                       timeout=60)
    daemon.stop()


def is_iscsiadm(raw: bytes) -> bool:
    """``raw`` (a /proc cmdline) is an iscsiadm run."""
    return raw.startswith(b"iscsiadm\0") or b"/iscsiadm\0" in raw


async def _device_of(svc, node: str, timeout: float = 60) -> str:
    """The Device object of ``node`` (it appears once the daemon has probed it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await svc.manager("LookupDevice", "sa{sv}", node, {})
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.3)


async def test_kernel_iscsi_pool_logs_in_follows_luns_and_logs_out(guest_svc, port, iscsid):
    svc = guest_svc
    iqn = "iqn.2026-11.org.example:vm-kernel"
    ask_host("add_target", iqn=iqn)
    ask_host("add_lun", iqn=iqn, lun=1, size=8 * MiB, serial="VMSER1")
    ask_host("add_lun", iqn=iqn, lun=2, size=12 * MiB + 4096)
    pool = await svc.manager("DefinePool", "sa{sv}", iscsi_pool_xml("ki", port, iqn), {})

    # iscsid does not run: a clear error, nothing logged in
    err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
    assert err.type == E + "Failed" and "iscsid" in err.text, err.text
    assert sessions(iqn) == []

    iscsid.start()
    rec = await svc.recorder()
    await svc.call(pool, POOL, "Start", "a{sv}", {"lun-poll-interval": svc.variant("d", 1.0)})
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Capacity"] == 20 * MiB + 4096
    (session,) = sessions(iqn)
    assert session.state == "LOGGED_IN" and session.address == SERVER
    assert session.port == int(port) and session.host is not None
    blocks = lun_blocks(session.host)

    vols = await volumes_by_name(svc, pool)
    assert sorted(vols) == ["unit:0:0:1", "unit:0:0:2"]     # tgtd's controller LUN 0 is not
    assert vols["unit:0:0:1"]["Capacity"] == 8 * MiB
    assert vols["unit:0:0:2"]["Capacity"] == 12 * MiB + 4096
    assert vols["unit:0:0:1"]["Serial"] == "VMSER1"
    for name, vol in vols.items():
        # no udevd, so no /dev/disk/by-path: the kernel's node
        assert vol["Path"] == f"/dev/{blocks[name]}" and vol["Type"] == "block"
        wwid = Path(f"/sys/block/{blocks[name]}/device/wwid").read_text().strip()
        assert wwid == f"naa.{vol['Key']}" and vol["Key"].startswith("6")
        # ... and a Device object of the pool
        dev = await _device_of(svc, vol["Path"])
        dprops = await svc.props(dev, "org.example.Storage.Device")
        assert dprops["Type"] == "lun" and dprops["WWN"] == "0x" + vol["Key"]
        assert dprops["ScsiAddress"] == f"{session.host}:0:0:{name[-1]}"
        assert dprops["Size"] == vol["Capacity"]
    lun1_device = await _device_of(svc, vols["unit:0:0:1"]["Path"])
    deadline = time.monotonic() + 30
    while (await svc.props(lun1_device, "org.example.Storage.Device"))["Pool"] != pool:
        assert time.monotonic() < deadline, "the LUN's Device never named its pool"
        await asyncio.sleep(0.3)

    # a LUN added on the target: the pool's periodic rescan finds it; no Refresh call
    n = len(rec.signals)
    ask_host("add_lun", iqn=iqn, lun=3, size=4 * MiB)
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=60, start=n)
    assert sig.path == pool
    added, removed = sig.body
    assert removed == [] and len(added) == 1 and added[0].endswith("/unit_3a0_3a0_3a3")
    assert (await svc.props(added[0], VOLUME))["Capacity"] == 4 * MiB
    assert rec.matching(lambda s: s.member == "InterfacesAdded" and s.body[0] == added[0]
                        and rec.signals.index(s) < rec.signals.index(sig))
    lun3 = lun_blocks(session.host)["unit:0:0:3"]
    assert (await svc.props(added[0], VOLUME))["Path"] == f"/dev/{lun3}"

    # the LUN goes away on the target and its kernel device with it (as an admin's
    # 'rescan-scsi-bus.sh -r' removes it): the device's uevent makes the pool re-list
    ask_host("remove_lun", iqn=iqn, lun=3)
    n = len(rec.signals)
    Path(f"/sys/block/{lun3}/device/delete").write_text("1")
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=60, start=n)
    assert sig.body == [[], [added[0]]]
    assert rec.matching(lambda s: s.member == "InterfacesRemoved" and s.body[0] == added[0])
    assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:1", "unit:0:0:2"]
    assert "Refresh" not in svc.daemon.log()

    # a 'scsi' pool on the session's SCSI host: the same LUNs, the same keys
    spool = await svc.manager("DefinePool", "sa{sv}",
                              scsi_pool_xml("ks", f"host{session.host}"), {})
    await svc.call(spool, POOL, "Start", "a{sv}", {})
    svols = await volumes_by_name(svc, spool)
    assert {k: v["Key"] for k, v in svols.items()} == {k: v["Key"] for k, v in vols.items()}
    assert {k: v["Path"] for k, v in svols.items()} == {k: v["Path"] for k, v in vols.items()}
    await svc.call(spool, POOL, "Destroy", "a{sv}", {})
    assert len(sessions(iqn)) == 1, "destroying the scsi pool must not touch the session"

    # a daemon restart: still logged in, so still running, with the same volumes
    svc.daemon.stop()
    svc.daemon.start(timeout=120)
    await svc.close()
    await svc.connect()
    assert (await svc.props(pool, POOL))["State"] == "running"
    assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:1", "unit:0:0:2"]

    # Refresh rescans the session
    rec = await svc.recorder()
    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    await rec.wait_for(lambda s: s.member == "Refreshed" and s.path == pool, timeout=30)

    # a mounted LUN: Destroy refuses (logging out would pull the disk from under it)
    mnt = Path(f"/var/tmp/estest-kiscsi-{os.getpid()}")
    mnt.mkdir(exist_ok=True)
    run(["mkfs.ext4", "-q", "-F", vols["unit:0:0:1"]["Path"]])
    run(["mount", vols["unit:0:0:1"]["Path"], str(mnt)])
    try:
        err = await svc.call_error(pool, POOL, "Destroy", "a{sv}", {})
        assert err.type == E + "Busy" and "unit:0:0:1" in err.text, err.text
        assert str(mnt) in err.text and "force" in err.text
        assert len(sessions(iqn)) == 1
    finally:
        run(["umount", str(mnt)])
        mnt.rmdir()

    # Destroy logs out: no session, the LUNs' devices and volumes gone, no node record
    devices = [await _device_of(svc, v["Path"]) for v in vols.values()]
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert sessions(iqn) == []
    assert (await svc.props(pool, POOL))["State"] == "inactive"
    for name in vols:
        assert not Path(f"/sys/block/{blocks[name]}").exists()
    for dev in devices:
        await rec.wait_for(lambda s, d=dev: s.member == "DeviceRemoved" and s.body[0] == d,
                           timeout=60)
    assert not (NODES / iqn).exists() or not any((NODES / iqn).iterdir())


async def test_kernel_iscsi_chap_right_wrong_missing_never_leaked(guest_svc, port, iscsid):
    svc = guest_svc
    secret = "Kernel-Chap-5e2b"          # tgtd wants 12..16 characters
    wrong = "Wrong-Chap-0000"
    iqn = "iqn.2026-11.org.example:vm-chap"
    ask_host("add_target", iqn=iqn)
    ask_host("add_lun", iqn=iqn, lun=1, size=8 * MiB)
    ask_host("add_chap", iqn=iqn, user="bob", password=secret)
    iscsid.start()
    auth = "<auth type='chap' username='bob'><secret usage='vm-chap'/></auth>"
    initiator = "iqn.2026-11.org.example:vm-guest"    # logs in through its own iface
    pool = await svc.manager("DefinePool", "sa{sv}",
                             iscsi_pool_xml("kc", port, iqn, auth, initiator), {})

    with ArgvSampler(secret.encode(), wrong.encode(), watched=is_iscsiadm) as watch:
        # missing: the pool names a secret nobody set
        err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
        assert err.type == E + "NotFound" and "vm-chap" in err.text, err.text

        # wrong: the target refuses the login; no session, no record left with the secret
        await svc.manager("SetSecret", "saya{sv}", "vm-chap", wrong.encode(), {})
        err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
        assert err.type == E + "ISCSI.AuthFailed", (err.type, err.text)
        assert "authorization failure" in err.text and "CHAP" in err.text
        assert (await svc.props(pool, POOL))["State"] == "inactive"
        assert sessions(iqn) == []
        assert not (NODES / iqn).exists() or not any((NODES / iqn).iterdir())

        # right: logged in; the secret sits in the node record only, mode 0600
        await svc.manager("SetSecret", "saya{sv}", "vm-chap", secret.encode(), {})
        await svc.call(pool, POOL, "Start", "a{sv}", {})
        assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:1"]
        (session,) = sessions(iqn)
        assert session.initiator == initiator and session.iface.startswith("estorage-")
        (record,) = [p for p in (NODES / iqn).rglob("*") if p.is_file()]
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        text = record.read_text()
        assert f"node.session.auth.password = {secret}\n" in text
        assert "node.session.auth.username = bob\n" in text
        # the kernel keeps the session's password too, readable by root only
        peek = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
             f"/sys/class/iscsi_session/session{session.sid}/password"],
            capture_output=True, text=True, timeout=30)
        assert peek.returncode != 0 and secret not in peek.stdout, peek
        replies = [
            await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {}),
            await svc.props(pool, POOL),
            await svc.managed_objects(),
        ]
        await svc.call(pool, POOL, "Destroy", "a{sv}", {})
        assert sessions(iqn) == []
        assert not (NODES / iqn).exists() or not any((NODES / iqn).iterdir())
    assert watch.seen > 0, "the watch never saw the daemon's iscsiadm runs"
    assert watch.hits == [], "a CHAP secret showed up in a process's command line"
    for reply in replies:
        assert secret not in repr(reply)
    assert "secret usage='vm-chap'" in replies[0]
    log = svc.daemon.log()
    assert secret not in log and wrong not in log
