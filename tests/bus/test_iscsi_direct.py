"""iscsi-direct pools against a real tgtd on 127.0.0.1 (tests/harness/tgtd.py): discovery,
LUNs as volumes with exact sizes and WWN keys, LUNs added/removed on the target announced
by Pool.LunsChanged with no Refresh call, and CHAP (right, wrong, missing secret) with the
secret never showing up in anything a client or another local user can read."""

import asyncio
import stat

import pytest

from tests.bus.helpers import POOL, VOLUME
from tests.harness.procs import ArgvSampler
from tests.harness.tgtd import Tgtd, tgt_missing

E = "org.example.Storage.Error."
IQN1 = "iqn.2026-11.org.example:disks"
IQN2 = "iqn.2026-11.org.example:other"
INITIATOR = "iqn.2026-11.org.example:client"
MiB = 1 << 20


@pytest.fixture
def tgtd(tmp_path):
    reason = tgt_missing()
    if reason:
        pytest.skip(reason)
    target = Tgtd(tmp_path / "tgt").start()
    try:
        yield target
    finally:
        target.stop()


def set_lun_ids(tgtd: Tgtd, iqn: str, lun: int, scsi_id: str) -> None:
    """tgtd derives the LU's NAA 6 designator (VPD 0x83) from scsi_id: a 32-hex-digit id
    that starts with 6 is the WWN itself."""
    tgtd.adm("--op", "update", "--mode", "logicalunit", "--tid", str(tgtd.tids[iqn]),
             "--lun", str(lun), "--params", f"scsi_id={scsi_id}")


def pool_xml(name: str, tgtd: Tgtd, iqn: str, auth: str = "") -> str:
    return f"""<pool type='iscsi-direct'><name>{name}</name>
  <source><host name='127.0.0.1' port='{tgtd.port}'/><device path='{iqn}'/>
    <initiator><iqn name='{INITIATOR}'/></initiator>{auth}</source></pool>"""


async def volumes_by_name(svc, pool: str) -> dict[str, dict]:
    paths = await svc.call(pool, POOL, "ListVolumes", "a{sv}", {})
    out = {}
    for path in paths:
        props = await svc.props(path, VOLUME)
        out[props["Name"]] = {**props, "path": path}
    return out


async def test_discovery_lists_the_portals_targets(svc, tgtd):
    tgtd.add_target(IQN1)
    tgtd.add_target(IQN2)
    hint = f"<source><host name='127.0.0.1' port='{tgtd.port}'/></source>"
    xml = await svc.manager("FindPoolSources", "ssa{sv}", "iscsi-direct", hint, {})
    assert f"<device path='{IQN1}'/>" in xml and f"<device path='{IQN2}'/>" in xml
    assert f"<host name='127.0.0.1' port='{tgtd.port}'/>" in xml
    # the kernel 'iscsi' type discovers the same way
    xml = await svc.manager("FindPoolSources", "ssa{sv}", "iscsi", hint, {})
    assert f"<device path='{IQN1}'/>" in xml and f"<device path='{IQN2}'/>" in xml

    # no hint: a clear error; a portal nobody listens on: Failed, no traceback
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", "", {})
    assert err.type == E + "InvalidArgument" and "host" in err.text
    dead = "<source><host name='127.0.0.1' port='1'/></source>"
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", dead, {})
    assert err.type == E + "Failed" and "Traceback" not in err.text


async def test_discovery_of_one_targets_luns_with_size_wwn_serial(svc, tgtd, tmp_path):
    from lxml import etree

    tgtd.add_target(IQN1)
    tgtd.add_target(IQN2)
    wwn1, wwn2 = "6001405aa00000000000000000000001", "6001405bb0000000000000000000cafe"
    tgtd.add_lun(IQN1, 1, tmp_path / "lun1.img", 8 * MiB, serial="SN-ONE-001")
    set_lun_ids(tgtd, IQN1, 1, wwn1)
    tgtd.add_lun(IQN1, 3, tmp_path / "lun3.img", 12 * MiB + 4096, serial="SN-THREE")
    set_lun_ids(tgtd, IQN1, 3, wwn2)
    tgtd.add_lun(IQN2, 1, tmp_path / "other.img", 4 * MiB)
    hint = (f"<source><host name='127.0.0.1' port='{tgtd.port}'/><device path='{IQN1}'/>"
            f"<initiator><iqn name='{INITIATOR}'/></initiator></source>")
    for pool_type in ("iscsi-direct", "iscsi"):
        xml = await svc.manager("FindPoolSources", "ssa{sv}", pool_type, hint, {})
        root = etree.fromstring(xml.encode())
        (source,) = root.findall("source")               # that target alone
        assert source.find("host").attrib == {"name": "127.0.0.1", "port": str(tgtd.port)}
        (device,) = source.findall("device")
        assert device.get("path") == IQN1
        luns = [dict(lun.attrib) for lun in device.findall("lun")]
        assert luns == [                                 # no controller LUN 0
            {"number": "1", "size": str(8 * MiB), "wwn": wwn1, "serial": "SN-ONE-001"},
            {"number": "3", "size": str(12 * MiB + 4096), "wwn": wwn2, "serial": "SN-THREE"},
        ], pool_type

    # the answer pastes into a pool: its LUNs are its volumes, Key = WWN, Serial shown
    pool_src = xml.split("<sources>")[1].split("</sources>")[0].replace(
        "</source>", f"<initiator><iqn name='{INITIATOR}'/></initiator></source>")
    pool = await svc.manager("CreatePool", "sa{sv}",
                             f"<pool type='iscsi-direct'><name>pasted</name>{pool_src}</pool>",
                             {})
    vols = await volumes_by_name(svc, pool)
    assert {n: (v["Key"], v["Serial"], v["Capacity"]) for n, v in vols.items()} == {
        "unit:0:0:1": (wwn1, "SN-ONE-001", 8 * MiB),
        "unit:0:0:3": (wwn2, "SN-THREE", 12 * MiB + 4096)}
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})

    # a target the portal does not have: Failed naming it; two targets: InvalidArgument
    bad = hint.replace(IQN1, "iqn.2026-11.org.example:nope")
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", bad, {})
    assert err.type == E + "Failed" and "iqn.2026-11.org.example:nope" in err.text
    two = hint.replace("<initiator>", f"<device path='{IQN2}'/><initiator>")
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", two, {})
    assert err.type == E + "InvalidArgument"


async def test_discovery_of_a_chap_target(svc, tgtd, tmp_path):
    secret = "Disc-Secret-4242"
    tgtd.add_target(IQN1)
    tgtd.add_lun(IQN1, 1, tmp_path / "lun1.img", 8 * MiB, serial="CHAPLUN")
    tgtd.add_chap(IQN1, "bob", secret)
    auth = "<auth type='chap' username='bob'><secret usage='disc'/></auth>"
    hint = (f"<source><host name='127.0.0.1' port='{tgtd.port}'/><device path='{IQN1}'/>"
            f"<initiator><iqn name='{INITIATOR}'/></initiator>{auth}</source>")
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", hint, {})
    assert err.type == E + "NotFound" and "disc" in err.text
    await svc.manager("SetSecret", "saya{sv}", "disc", b"Wrong-Secret-999", {})
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", hint, {})
    assert err.type == E + "ISCSI.AuthFailed" and "CHAP" in err.text
    no_auth = hint.replace(auth, "")
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "iscsi-direct", no_auth, {})
    assert err.type == E + "ISCSI.AuthFailed" and "no CHAP credentials" in err.text
    await svc.manager("SetSecret", "saya{sv}", "disc", secret.encode(), {})
    xml = await svc.manager("FindPoolSources", "ssa{sv}", "iscsi-direct", hint, {})
    assert f"<lun number='1' size='{8 * MiB}'" in xml and "serial='CHAPLUN'" in xml
    assert secret not in xml and secret not in svc.daemon.log()


async def test_luns_as_volumes_and_changes_signalled(svc, tgtd, tmp_path):
    tgtd.add_target(IQN1)
    tgtd.add_lun(IQN1, 1, tmp_path / "lun1.img", 8 * MiB, serial="SERIAL1")
    tgtd.add_lun(IQN1, 2, tmp_path / "lun2.img", 12 * MiB + 4096)
    pool = await svc.manager("DefinePool", "sa{sv}", pool_xml("ip", tgtd, IQN1), {})
    await svc.call(pool, POOL, "Start", "a{sv}",
                   {"lun-poll-interval": svc.variant("d", 0.3)})

    vols = await volumes_by_name(svc, pool)
    assert sorted(vols) == ["unit:0:0:1", "unit:0:0:2"]    # the controller LUN 0 is not a disk
    assert vols["unit:0:0:1"]["Capacity"] == 8 * MiB
    assert vols["unit:0:0:2"]["Capacity"] == 12 * MiB + 4096      # exact, not rounded
    assert vols["unit:0:0:2"]["Type"] == "network"
    assert vols["unit:0:0:2"]["Path"] == f"iscsi://127.0.0.1:{tgtd.port}/{IQN1}/2"
    keys = {v["Key"] for v in vols.values()}
    assert len(keys) == 2 and all(len(k) == 32 and k.startswith("6") for k in keys)  # NAA 6
    found = await svc.manager("LookupVolumeByKey", "sa{sv}", vols["unit:0:0:1"]["Key"], {})
    assert found == vols["unit:0:0:1"]["path"]
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Capacity"] == 20 * MiB + 4096

    assert vols["unit:0:0:1"]["Serial"] == "SERIAL1" and vols["unit:0:0:2"]["Serial"] != ""
    # LUNs belong to the target's administrator (Wipe: tests/bus/test_iscsi_direct_data.py)
    for member, sig, args in (("Delete", "a{sv}", [{}]),
                              ("Resize", "ta{sv}", [16 * MiB, {}])):
        err = await svc.call_error(vols["unit:0:0:1"]["path"], VOLUME, member, sig, *args)
        assert err.type == E + "NotSupported", (member, err.text)
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               "<volume><name>x</name><capacity>1</capacity></volume>", {})
    assert err.type == E + "NotSupported"
    assert (tmp_path / "lun1.img").stat().st_size == 8 * MiB

    rec = await svc.recorder()
    tgtd.add_lun(IQN1, 3, tmp_path / "lun3.img", 4 * MiB)
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=5)
    assert sig.path == pool
    added, removed = sig.body
    assert removed == [] and len(added) == 1 and added[0].endswith("/unit_3a0_3a0_3a3")
    assert (await svc.props(added[0], VOLUME))["Capacity"] == 4 * MiB

    n = len(rec.signals)
    tgtd.remove_lun(IQN1, 1)
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=5, start=n)
    assert sig.body == [[], [vols["unit:0:0:1"]["path"]]]
    assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:2", "unit:0:0:3"]
    # the volume objects went away / came with the ObjectManager's signals too
    assert rec.matching(lambda s: s.member == "InterfacesRemoved"
                        and s.body[0] == vols["unit:0:0:1"]["path"])
    assert rec.matching(lambda s: s.member == "InterfacesAdded" and s.body[0] == added[0])
    assert "Refresh" not in svc.daemon.log()

    # Destroy stops the check: a LUN added afterwards is not announced
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    n = len(rec.signals)
    tgtd.add_lun(IQN1, 4, tmp_path / "lun4.img", 4 * MiB)
    await asyncio.sleep(1.0)
    assert not rec.matching(lambda s: s.member == "LunsChanged" and rec.signals.index(s) >= n)

    err = await svc.call_error(pool, POOL, "Start", "a{sv}",
                               {"lun-poll-interval": svc.variant("d", -1.0)})
    assert err.type == E + "InvalidArgument"


async def test_chap_right_wrong_missing_and_never_leaked(svc, tgtd, tmp_path):
    secret = "Chap-Secret-7f3a91"     # tgtd wants 12..16 characters
    tgtd.add_target(IQN1)
    tgtd.add_lun(IQN1, 1, tmp_path / "lun1.img", 8 * MiB)
    tgtd.add_chap(IQN1, "alice", secret)
    auth = "<auth type='chap' username='alice'><secret usage='tgt-disks'/></auth>"
    pool = await svc.manager("DefinePool", "sa{sv}", pool_xml("chap", tgtd, IQN1, auth), {})

    with ArgvSampler(secret.encode(), watched=lambda raw: b"iscsi_probe" in raw) as sampler:
        # missing: the pool names a secret nobody set
        err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
        assert err.type == E + "NotFound" and "tgt-disks" in err.text and "SetSecret" in err.text

        # wrong: the target refuses the login, with a clear message
        await svc.manager("SetSecret", "saya{sv}", "tgt-disks", b"Wrong-Secret-0000", {})
        err = await svc.call_error(pool, POOL, "Start", "a{sv}", {})
        assert err.type == E + "ISCSI.AuthFailed" and "Authentication failure" in err.text
        assert "CHAP" in err.text
        assert (await svc.props(pool, POOL))["State"] == "inactive"

        # right: the pool starts and lists the LUN
        await svc.manager("SetSecret", "saya{sv}", "tgt-disks", secret.encode(), {})
        await svc.call(pool, POOL, "Start", "a{sv}",
                       {"lun-poll-interval": svc.variant("d", 0.2)})
        assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:1"]
        await asyncio.sleep(0.6)          # a few periodic checks log in again

        # the secret is in no reply
        replies = [
            await svc.call(pool, POOL, "GetXMLDesc", "a{sv}", {}),
            await svc.props(pool, POOL),
            await svc.managed_objects(),
            await svc.manager("FindPoolSources", "ssa{sv}", "iscsi-direct",
                              f"<source><host name='127.0.0.1' port='{tgtd.port}'/></source>",
                              {}),
        ]
        await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert sampler.samples > 0 and sampler.seen > 0   # it caught the libiscsi probe running
    assert sampler.hits == [], "the CHAP secret showed up in a process's command line"
    for reply in replies:
        assert secret not in repr(reply)
    assert "secret usage='tgt-disks'" in replies[0]            # the reference, not the value
    assert secret not in svc.daemon.log()
    assert "Wrong-Secret-0000" not in svc.daemon.log()

    # stored 0600 (dir 0700) in the config dir, holding exactly the bytes
    files = list((svc.config_dir / "secrets").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == secret.encode()
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((svc.config_dir / "secrets").stat().st_mode) == 0o700

    # bad input: refused, nothing stored
    err = await svc.manager_error("SetSecret", "saya{sv}", "", b"x", {})
    assert err.type == E + "InvalidArgument"
    err = await svc.manager_error("SetSecret", "saya{sv}", "u", b"x",
                                  {"uuid": svc.variant("s", "not-a-uuid")})
    assert err.type == E + "InvalidArgument"
    assert len(list((svc.config_dir / "secrets").iterdir())) == 1


async def test_running_pool_survives_a_daemon_restart_and_keeps_watching(svc, tgtd, tmp_path):
    tgtd.add_target(IQN1)
    tgtd.add_lun(IQN1, 1, tmp_path / "lun1.img", 8 * MiB)
    pool = await svc.manager("DefinePool", "sa{sv}", pool_xml("ip", tgtd, IQN1), {})
    await svc.call(pool, POOL, "Start", "a{sv}", {"lun-poll-interval": svc.variant("d", 0.3)})
    runtime = svc.run_dir / "pools" / "ip.runtime.json"
    assert '"lun-poll-interval": 0.3' in runtime.read_text()
    await svc.restart()
    assert (await svc.props(pool, POOL))["State"] == "running"
    assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:1"]
    # the restarted daemon checks at the run's 0.3 s, not the default 5 s
    rec = await svc.recorder()
    tgtd.add_lun(IQN1, 2, tmp_path / "lun2.img", 4 * MiB)
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=2.5)
    assert sig.path == pool and len(sig.body[0]) == 1 and sig.body[1] == []
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert not runtime.exists()

    # a Start without the option goes back to the default, and that is what is kept
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert '"lun-poll-interval": 5.0' in runtime.read_text()
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
