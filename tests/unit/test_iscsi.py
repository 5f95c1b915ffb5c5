"""libiscsi tool parsers (captured from libiscsi-bin 1.19 against tgt 1.0.85 on Debian 12,
tests/unit/data/iscsi/), URL building (no secret in argv), and the secret store."""

import asyncio
import json
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


# -- discovery with a target, transfers, errors (pure parts) ------------------------------
def test_source_list_with_luns_is_documented_extension():
    from example_storage.model.definitions import PoolSource, SourceDevice, SourceHost, SourceLun
    from example_storage.model.poolxml import format_pool_sources_xml, parse_source_xml

    src = PoolSource(hosts=[SourceHost("127.0.0.1", 3999)], devices=[SourceDevice(
        "iqn.2026-11.org.example:t1",
        luns=[SourceLun(1, 10485760, "6000000000000000000000000000d001", "SER<&'1"),
              SourceLun(2, 4096)])])
    xml = format_pool_sources_xml([src], "iscsi-direct")
    assert xml == (
        "<sources>\n"
        "  <source>\n"
        "    <host name='127.0.0.1' port='3999'/>\n"
        "    <device path='iqn.2026-11.org.example:t1'>\n"
        "      <lun number='1' size='10485760' wwn='6000000000000000000000000000d001'"
        " serial='SER&lt;&amp;&apos;1'/>\n"
        "      <lun number='2' size='4096'/>\n"
        "    </device>\n"
        "  </source>\n"
        "</sources>\n")
    # pasted back as a hint (or into a pool), the <lun> children are skipped
    hint = parse_source_xml(xml.split("<sources>")[1].split("</sources>")[0], "iscsi-direct")
    assert [d.path for d in hint.devices] == ["iqn.2026-11.org.example:t1"]
    assert hint.devices[0].luns == []


def test_printable_serial():
    assert iscsi.printable("  SER\x01001\x7f ") == "SER001"
    luns = iscsi.parse_probe_output(
        '{"luns": [{"lun": 1, "size": 512, "block_size": 512, "serial": "A\\u0000B\\n",'
        ' "designators": []}]}')
    assert luns[0].serial == "AB"


def test_auth_failed_has_its_own_dbus_name():
    from example_storage.errors import AuthFailed, Failed

    err = AuthFailed("refused")
    assert isinstance(err, Failed) and iscsi.AuthFailed is AuthFailed
    assert err.dbus_name == "org.example.Storage.Error.ISCSI.AuthFailed"


def test_io_check_range():
    from example_storage.system.iscsi_io import EXIT_RANGE, IoError, check_range

    assert check_range(4096, 0, 0) == 4096
    assert check_range(4096, 1000, 0) == 3096
    assert check_range(4096, 4096, 0) == 0
    assert check_range(4096, 1, 4095) == 4095
    for offset, length in ((4097, 0), (0, 4097), (4000, 97), (-1, 0), (0, -1)):
        with pytest.raises(IoError) as e:
            check_range(4096, offset, length)
        assert e.value.status == EXIT_RANGE


def test_zero_runs():
    from example_storage.system.iscsi_io import zero_runs

    buf = bytearray(10 * 8)
    buf[8:16] = b"x" * 8          # piece 1 data
    buf[70] = 1                   # piece 8 data
    assert zero_runs(buf, 0, 80, piece=8) == [
        (0, 8, True), (8, 16, False), (16, 64, True), (64, 72, False), (72, 80, True)]
    assert zero_runs(buf, 60, 75, piece=8) == [(60, 68, True), (68, 75, False)]
    assert zero_runs(bytearray(5), 0, 5, piece=8) == [(0, 5, True)]
    assert zero_runs(buf, 5, 5) == []


def test_sparse_sink_skips_and_punches(tmp_path):
    import os

    from example_storage.system.iscsi_io import PIECE, SparseSink

    path = tmp_path / "out.img"
    path.write_bytes(b"\xff" * (4 * PIECE))        # old content, 4 pieces
    fd = os.open(path, os.O_WRONLY)
    try:
        os.lseek(fd, PIECE, os.SEEK_SET)            # the copy starts at the fd's offset
        sink = SparseSink(fd)
        data = bytearray(8 * PIECE)
        data[0:PIECE] = b"a" * PIECE                # piece 0 data, 1..6 zero, 7 data
        data[7 * PIECE:] = b"b" * PIECE
        sink.write(data, 0, 4 * PIECE)
        sink.write(data, 4 * PIECE, 8 * PIECE)
        sink.finish()
        assert os.lseek(fd, 0, os.SEEK_CUR) == 9 * PIECE
    finally:
        os.close(fd)
    got = path.read_bytes()
    assert got == b"\xff" * PIECE + b"a" * PIECE + bytes(6 * PIECE) + b"b" * PIECE
    # the old 0xff pieces under zeroes were punched, the new zero pieces never written
    assert path.stat().st_blocks * 512 <= 3 * PIECE


def test_sparse_sink_trailing_hole_sets_the_size(tmp_path):
    import os

    from example_storage.system.iscsi_io import SparseSink

    path = tmp_path / "out.img"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        sink = SparseSink(fd)
        sink.write(bytearray(1 << 20), 0, 1 << 20)
        sink.finish()
    finally:
        os.close(fd)
    assert path.stat().st_size == 1 << 20 and path.stat().st_blocks == 0


def test_transfer_argv_never_carries_the_secret():
    from example_storage.system.iscsi_transfer import LunAddress, io_argv

    where = LunAddress("127.0.0.1:3260", "iqn.2026-11.x:t", 2,
                       iscsi.Credentials("alice", b"Pa55-w0rd-1234"))
    argv = io_argv("read", where, fd=7, offset=512, length=1024)
    assert argv[2:] == ["example_storage.system.iscsi_io", "read", "127.0.0.1:3260",
                        "iqn.2026-11.x:t", iscsi.DEFAULT_INITIATOR, "2", "512", "1024", "7",
                        "alice"]
    assert not any("Pa55" in a for a in argv)
    assert io_argv("wipe", LunAddress("h:1", "iqn.2026-11.x:t", 0))[-1] == "-"
    with pytest.raises(InvalidArgument):
        io_argv("wipe", LunAddress("h:1", "iqn.2026-11.x:t/../x", 0))


def test_transfer_failure_mapping():
    from example_storage.errors import AuthFailed
    from example_storage.system.iscsi_transfer import failure, parse_message

    assert parse_message(b'{"progress": [1, 2]}\n') == {"progress": [1, 2]}
    assert parse_message(b"iscsi: some library chatter\n") is None
    assert parse_message(b"[1, 2]\n") is None
    err = failure(2, {"error": "Authentication failure(513)"}, "", "LUN 1 of t")
    assert isinstance(err, AuthFailed) and "CHAP" in err.message
    err = failure(5, {"error": "8 bytes at offset 4096 do not fit"}, "", "LUN 1 of t")
    assert isinstance(err, InvalidArgument) and "do not fit" in err.message
    err = failure(3, {}, "Traceback ...\nSomething: broke\n", "LUN 1 of t")
    assert type(err) is Failed and "broke" in err.message
    assert "exit status -9" in failure(-9, {}, "", "x").message


def test_backend_lun_numbers_and_ranges():
    from example_storage.backends.iscsi_direct import check_transfer_range, lun_number

    assert lun_number("unit:0:0:12") == 12
    for bad in ("unit:0:0:", "unit:0:1:2", "x", "unit:0:0:1/../2"):
        with pytest.raises(InvalidArgument):
            lun_number(bad)
    assert check_transfer_range(8192, 0, 0) == 8192
    assert check_transfer_range(8192, 8192, 0) == 0
    assert check_transfer_range(8192, 100, 8092) == 8092
    with pytest.raises(InvalidArgument) as e:
        check_transfer_range(8192, 4096, 4097)
    assert "8192 bytes" in e.value.message and "nothing was written" in e.value.message
    with pytest.raises(InvalidArgument):
        check_transfer_range(8192, 8193, 0)


def test_runtime_options_kept_beside_the_state(tmp_path):
    from example_storage.core.config_store import PoolConfigStore

    store = PoolConfigStore(tmp_path / "etc", tmp_path / "run")
    store.prepare()
    assert store.load_runtime("p") == {}
    store.save_runtime("p", {"lun-poll-interval": 0.25})
    assert store.load_runtime("p") == {"lun-poll-interval": 0.25}
    assert store.load_states() == []                 # not mistaken for a pool file
    (tmp_path / "run" / "pools" / "q.runtime.json").write_text("{not json")
    assert store.load_runtime("q") == {}
    store.remove_state("p")
    assert store.load_runtime("p") == {}
    assert not (tmp_path / "run" / "pools" / "p.runtime.json").exists()


class _FakeLun:
    """The Lun interface iscsi_io.wipe uses, over a bytearray; ``refuse`` lists the WRITE
    SAME kinds ('unmap', 'plain') the 'target' answers with ILLEGAL REQUEST."""

    def __init__(self, size: int, zeroes_when_unmapped: bool, refuse: set[str]) -> None:
        from types import SimpleNamespace

        from example_storage.system.iscsi_io import LunGeometry

        self.data = bytearray(b"\xee" * size)
        self.geometry = LunGeometry(size, 512, zeroes_when_unmapped, 16, 0)
        self.refuse = refuse
        self.calls: list[str] = []
        self.lib = SimpleNamespace(iscsi_synchronizecache16_sync=None)
        self.lun, self.ctx = 1, None

    def write_same(self, lba, blocks, unmap, zero_block):
        kind = "unmap" if unmap else "plain"
        self.calls.append(kind)
        if kind in self.refuse:
            return 2, 5                       # CHECK CONDITION, ILLEGAL REQUEST
        self.data[lba * 512:(lba + blocks) * 512] = bytes(blocks * 512)
        return 0, 0

    def write_blocks(self, lba, buf, nbytes):
        self.calls.append("write16")
        self.data[lba * 512:lba * 512 + nbytes] = buf[:nbytes]

    def run(self, what, fn, *args):
        return 0, 0


@pytest.mark.parametrize("zeroes,refuse,method,first", [
    (True, set(), "write-same-unmap", "unmap"),
    (False, set(), "write-same", "plain"),
    (True, {"unmap"}, "write-same", "unmap"),
    (True, {"unmap", "plain"}, "write16", "unmap"),
    (False, {"plain"}, "write16", "plain"),
])
def test_wipe_falls_back_from_unmap_to_write_same_to_write16(zeroes, refuse, method, first,
                                                             capsys):
    from example_storage.system import iscsi_io

    lun = _FakeLun(40 * 1024, zeroes, refuse)
    result = iscsi_io.wipe(lun)
    assert result == {"ok": True, "bytes": 40 * 1024, "method": method}
    assert lun.data == bytes(40 * 1024) and lun.calls[0] == first
    if method == "write16":
        assert lun.calls.count("write16") == 5      # 16-block chunks over 80 blocks
    progress = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert progress[-1] == {"progress": [40 * 1024, 40 * 1024]}
