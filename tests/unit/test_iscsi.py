"""libiscsi tool parsers (captured from libiscsi-bin 1.19 against tgt 1.0.85 on Debian 12,
tests/unit/data/iscsi/), URL building (no secret in argv), and the secret store."""

import asyncio
import stat
from pathlib import Path

import pytest
from example_storage.core.secrets import SecretStore
from example_storage.errors import Failed, InvalidArgument, NotFound
from example_storage.model.definitions import SourceAuth
from example_storage.system import iscsi

DATA = Path(__file__).parent / "data" / "iscsi"


def data(name: str) -> str:
    return (DATA / name).read_text()


def test_parse_iscsi_ls():
    # iscsi-ls -i IQN iscsi://127.0.0.1:3999/
    targets = iscsi.parse_iscsi_ls(data("iscsi-ls.txt"))
    assert [t.iqn for t in targets] == ["iqn.2026-11.org.example:t2", "iqn.2026-11.org.example:t1"]
    assert targets[0].portal == "127.0.0.1:3999" and targets[0].tpgt == 1
    assert iscsi.parse_iscsi_ls("") == []
    assert iscsi.parse_iscsi_ls("list_luns: iscsi_connect failed.\n") == []


def test_parse_readcapacity16_exact_size():
    # iscsi-readcapacity16 on a 20 MiB + 1 byte backing file: tgt exposes whole blocks
    assert iscsi.parse_readcapacity16(data("readcapacity16.txt")) == (20971520, 512)
    with pytest.raises(Failed):
        iscsi.parse_readcapacity16("failed to send readcapacity command\n")


def test_parse_unit_serial():
    # iscsi-inq -e 1 -c 128 (tgt pads scsi_sn with spaces)
    assert iscsi.parse_unit_serial(data("inq-vpd80.txt")) == "SER001"
    assert iscsi.parse_unit_serial("garbage") == ""


def test_parse_probe_output_luns_wwn_serial():
    luns = iscsi.parse_probe_output(data("probe-t1.json"))
    assert [lun.number for lun in luns] == [1, 2]        # LUN 0 (controller) has no capacity
    one, two = luns
    assert (one.size, one.block_size, one.serial) == (10485760, 512, "SER001")
    assert one.wwn == "6000000000000000000000000000d001"   # NAA 6, clean hex
    assert two.wwn == "60000000000000000e00000000010002"
    assert [d.text for d in one.designators if d.type == 1] == ["ID001"]   # T10, NULs gone
    with pytest.raises(Failed):
        iscsi.parse_probe_output(data("probe-authfail.json"))
    with pytest.raises(Failed):
        iscsi.parse_probe_output("not json")


def test_pick_wwn_prefers_naa_then_eui():
    d = iscsi.Designator
    assert iscsi.pick_wwn([d(2, 1, 0, "0011223344556677"), d(3, 1, 0, "3000000100000001"),
                           d(3, 1, 0, "6000000000000000000000000000d001")]) == \
        "6000000000000000000000000000d001"
    assert iscsi.pick_wwn([d(2, 1, 0, "0011223344556677")]) == "0011223344556677"
    assert iscsi.pick_wwn([d(1, 2, 0, "4944")]) == ""
    assert iscsi.pick_wwn([d(3, 1, 1, "6000")]) == ""       # the port's, not the LU's


def test_urls_never_carry_a_password():
    assert iscsi.iscsi_url("127.0.0.1:3260") == "iscsi://127.0.0.1:3260/"
    assert iscsi.iscsi_url("h:1", "iqn.2026-11.x:t", 3, "alice") == \
        "iscsi://alice@h:1/iqn.2026-11.x:t/3"
    assert iscsi.portal_of("::1", None) == "[::1]:3260"
    for bad in ("a b", "x/y", "", "h;rm"):
        with pytest.raises(InvalidArgument):
            iscsi.portal_of(bad, 1)
    with pytest.raises(InvalidArgument):
        iscsi.iscsi_url("h:1", "iqn.x/../y")
    with pytest.raises(InvalidArgument):
        iscsi.iscsi_url("h:1", username="al%ice")      # '%' would start a password
    creds = iscsi.Credentials("alice", b"s3cret")
    assert "s3cret" not in repr(creds)


def test_probe_error_is_clear_without_a_target():
    # nothing listens on port 1: Failed naming the target, not a traceback
    with pytest.raises(Failed) as e:
        asyncio.run(iscsi.target_luns("127.0.0.1:1", "iqn.2026-11.x:t"))
    assert "iqn.2026-11.x:t" in e.value.message and not isinstance(e.value, iscsi.AuthFailed)


def test_secret_store(tmp_path):
    store = SecretStore(tmp_path)
    with pytest.raises(NotFound):
        store.get(usage="u1")
    store.set("u1", b"pw-1", uuid="6a9c1a5e-0f1e-4a0b-9d6f-2f0f3c0b1a11")
    auth = SourceAuth("chap", "alice", secret_usage="u1")
    assert store.for_auth(auth) == b"pw-1"
    by_uuid = SourceAuth("chap", "alice", secret_uuid="6a9c1a5e-0f1e-4a0b-9d6f-2f0f3c0b1a11")
    assert store.for_auth(by_uuid) == b"pw-1"
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    for f in (tmp_path / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    store.set("u1", b"")                                   # empty: removed
    with pytest.raises(NotFound):
        store.get(usage="u1")
    for bad in ("", "x" * 300, "a\nb"):
        with pytest.raises(InvalidArgument):
            store.set(bad, b"v")
    with pytest.raises(InvalidArgument):
        store.set("u", b"v" * 5000)
    # a usage with '/' or '..' cannot escape the secrets dir
    store.set("../../etc/x", b"v")
    assert all(p.parent == tmp_path / "secrets" for p in tmp_path.rglob("*") if p.is_file())
    assert store.get(usage="../../etc/x") == b"v"
