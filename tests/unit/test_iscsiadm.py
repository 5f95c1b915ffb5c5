"""The kernel initiator's pieces that need no kernel (system/iscsiadm.py, backends/iscsi.py):
node records as iscsiadm 2.1.8 writes them (captured in the VM lane's guest), the CHAP
password written into a record file only, sessions read from a captured sysfs tree, and
the iscsi pool's volumes and errors on that tree. Logging in is the VM lane's
(tests/vm_guest/test_kernel_iscsi.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import pytest
from example_storage.backends.iscsi import IscsiBackend
from example_storage.backends.iscsi_direct import IscsiDirectBackend
from example_storage.errors import InvalidArgument, InvalidState
from example_storage.model.definitions import SourceAuth
from example_storage.model.poolxml import parse_pool_xml
from example_storage.system import iscsiadm
from example_storage.system.scsi_host import ScsiSysfs

from tests.unit import sysfs_capture

DATA = Path(__file__).parent / "data" / "scsi"
TARGET = "iqn.2026-11.org.example:capture"
MiB = 1 << 20


def test_node_record_parsed():
    rec = iscsiadm.parse_node_record((DATA / "node-record.txt").read_text())
    assert rec["node.name"] == "iqn.2026-01.org.example:t1"
    assert rec["node.conn[0].address"] == "10.0.2.2" and rec["node.conn[0].port"] == "57281"
    assert rec["iface.iscsi_ifacename"] == "default"
    assert rec["node.session.auth.authmethod"] == "None"
    chap = iscsiadm.parse_node_record((DATA / "node-record-chap.txt").read_text())
    assert chap["node.session.auth.authmethod"] == "CHAP"
    assert chap["node.session.auth.username"] == "user1"
    assert "node.session.auth.password" not in chap


def test_password_goes_into_the_record_before_its_end():
    text = (DATA / "node-record-chap.txt").read_text()
    once = iscsiadm.with_password(text, "Secret-One-1234")
    lines = once.splitlines()
    assert lines[-2] == "node.session.auth.password = Secret-One-1234"
    assert lines[-1] == "# END RECORD"
    twice = iscsiadm.with_password(once + "node.session.auth.password_in = keep\n", "Two-2")
    assert "Secret-One-1234" not in twice
    assert twice.count("node.session.auth.password = ") == 1
    assert "node.session.auth.password_in = keep" in twice
    assert iscsiadm.parse_node_record(twice)["node.session.auth.password"] == "Two-2"


def _db(tmp_path: Path) -> Path:
    """A node db as iscsiadm leaves it: one old-style record, one new-style (with a
    portal group tag, one file per iface)."""
    db = tmp_path / "iscsi"
    old = db / "nodes" / "iqn.2026-01.org.example:t1" / "10.0.2.2,57281"
    old.parent.mkdir(parents=True)
    old.write_text((DATA / "node-record.txt").read_text())
    old.chmod(0o600)
    new = db / "nodes" / TARGET / "10.0.2.2,53603,1" / "estorage-abc"
    new.parent.mkdir(parents=True)
    new.write_text((DATA / "node-record-chap.txt").read_text().replace(
        "iface.iscsi_ifacename = default", "iface.iscsi_ifacename = estorage-abc"))
    new.chmod(0o600)
    return db


def test_records_found_in_either_style(tmp_path):
    db = _db(tmp_path)
    found = iscsiadm.find_record(db, "iqn.2026-01.org.example:t1", 57281, "default")
    assert found == db / "nodes" / "iqn.2026-01.org.example:t1" / "10.0.2.2,57281"
    found = iscsiadm.find_record(db, TARGET, 53603, "estorage-abc")
    assert found == db / "nodes" / TARGET / "10.0.2.2,53603,1" / "estorage-abc"
    assert iscsiadm.find_record(db, TARGET, 53603, "default") is None
    assert iscsiadm.find_record(db, TARGET, 3260, "estorage-abc") is None
    assert iscsiadm.find_record(db, "iqn.2026-01.org.example:none", 3260, "default") is None


def test_password_written_into_the_file_0600(tmp_path):
    db = _db(tmp_path)
    record = iscsiadm.find_record(db, TARGET, 53603, "estorage-abc")
    record.chmod(0o644)      # whatever it was: the rewritten file is 0600
    iscsiadm.set_record_password(record, "Kernel-Chap-5e2b")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    rec = iscsiadm.parse_node_record(record.read_text())
    assert rec["node.session.auth.password"] == "Kernel-Chap-5e2b"
    assert rec["node.session.auth.username"] == "user1"
    assert [p.name for p in record.parent.iterdir()] == ["estorage-abc"]   # no temp left


@pytest.mark.parametrize("secret, ok", [
    (b"Kernel-Chap-5e2b", True), (b"with inner space ok", True), ("sécret-ünïcode".encode(), True),
    (b"", False), (b" leading", False), (b"trailing ", False), (b"two\nlines", False),
    (b"\xff\xfe", False), (b"x" * 256, False), (b"tab\there", False),
])
def test_chap_secret_must_fit_a_record_line(secret, ok):
    if ok:
        assert iscsiadm.chap_secret_text(secret) == secret.decode()
    else:
        with pytest.raises(InvalidArgument):
            iscsiadm.chap_secret_text(secret)


def test_sessions_from_sysfs(tmp_path):
    root = sysfs_capture.load(DATA / "iscsi-session.json", tmp_path / "root")
    (s,) = iscsiadm.read_sessions(root)
    assert (s.sid, s.target, s.address, s.port) == (1, TARGET, "10.0.2.2", 53603)
    assert (s.iface, s.state, s.host) == ("default", "LOGGED_IN", 1)
    assert s.initiator.startswith("iqn.1993-08.org.debian:")
    assert iscsiadm.read_sessions(tmp_path / "nothing") == []
    assert iscsiadm.session_matches(s, TARGET, "10.0.2.2", 53603, None)
    assert iscsiadm.session_matches(s, TARGET, "storage.example", 53603, None)   # a name
    assert not iscsiadm.session_matches(s, TARGET, "10.0.2.3", 53603, None)
    assert not iscsiadm.session_matches(s, TARGET, "10.0.2.2", 3260, None)
    assert not iscsiadm.session_matches(s, TARGET, "10.0.2.2", 53603, "estorage-abc")
    assert not iscsiadm.session_matches(s, TARGET + "x", "10.0.2.2", 53603, None)
    assert iscsiadm.same_address("[::1]", "0:0::1") and not iscsiadm.same_address("a", "b")
    # a pool without its own initiator name does not take another pool's iface session
    ours = dataclasses.replace(s, iface="estorage-abc")
    assert iscsiadm.session_matches(ours, TARGET, "10.0.2.2", 53603, "estorage-abc")
    assert not iscsiadm.session_matches(ours, TARGET, "10.0.2.2", 53603, None)


def test_iface_names():
    name = iscsiadm.iface_name_for("iqn.2026-11.org.example:client")
    assert name.startswith("estorage-") and iscsiadm.validate_iface(name) == name
    assert name != iscsiadm.iface_name_for("iqn.2026-11.org.example:other")
    with pytest.raises(InvalidArgument):
        iscsiadm.validate_iface("../etc")


def _pool(port: int = 53603, auth: str = "", initiator: str = "") -> object:
    return parse_pool_xml(
        f"<pool type='iscsi'><name>k</name><source><host name='10.0.2.2' port='{port}'/>"
        f"<device path='{TARGET}'/>{initiator}{auth}</source>"
        "<target><path>/dev/disk/by-path</path></target></pool>")


def test_iscsi_pool_volumes_are_the_sessions_luns(tmp_path):
    root = sysfs_capture.load(DATA / "iscsi-session.json", tmp_path / "root")
    backend = IscsiBackend(IscsiDirectBackend(), ScsiSysfs(root), root=str(root))
    pool = _pool()
    assert backend.lun_host(pool) == 1
    assert asyncio.run(backend.is_active(pool)) is True
    result = asyncio.run(backend.relist(pool))
    assert [v.name for v in result.volumes] == ["unit:0:0:1", "unit:0:0:2"]
    assert [v.capacity for v in result.volumes] == [8 * MiB, 12 * MiB + 4096]
    assert result.volumes[0].key == "60000000000000000e00000000010001"
    # another port, or another initiator (iface): not this pool's session
    other = _pool(port=3260)
    assert backend.lun_host(other) is None
    assert asyncio.run(backend.is_active(other)) is False
    with pytest.raises(InvalidState):
        asyncio.run(backend.relist(other))
    own = _pool(initiator="<initiator><iqn name='iqn.2026-11.org.example:client'/></initiator>")
    assert backend.lun_host(own) is None


def test_iscsi_pool_start_errors_before_touching_anything(tmp_path):
    backend = IscsiBackend(IscsiDirectBackend(), ScsiSysfs(tmp_path), root=str(tmp_path),
                           db_root=str(tmp_path / "db"))
    # a CHAP secret that cannot be a record line: refused before any iscsiadm run
    backend.secret_lookup = lambda auth: b"bad\nsecret"
    auth = "<auth type='chap' username='bob'><secret usage='s'/></auth>"
    with pytest.raises(InvalidArgument, match="CHAP secret"):
        asyncio.run(backend.start(_pool(auth=auth)))
    backend.secret_lookup = None
    with pytest.raises(InvalidArgument, match="secret store"):
        asyncio.run(backend.start(_pool(auth=auth)))
    with pytest.raises(InvalidArgument, match="CHAP"):
        backend._credentials(SourceAuth(type="ceph", username="bob", secret_usage="s"))
    # no iscsid here: Start says so (when one runs, this part is not checked)
    if not iscsiadm.iscsid_running():
        with pytest.raises(iscsiadm.IscsidNotRunning, match="iscsid is not running"):
            asyncio.run(backend.start(_pool()))
    assert not (tmp_path / "db").exists()
