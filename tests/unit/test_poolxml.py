"""Pool XML parsing/formatting against libvirt's own test data (model/poolxml.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from example_storage.errors import InvalidArgument
from example_storage.model.definitions import (
    FreeExtent,
    Permissions,
    PoolDefinition,
    PoolSource,
    PoolTarget,
    SourceDevice,
    SourceHost,
)
from example_storage.model.poolxml import (
    format_pool_sources_xml,
    format_pool_xml,
    parse_pool_xml,
    sanitize_path,
    validate_pool_definition,
)
from example_storage.model.xmlsafe import canonical, xml_equivalent

from tests.testdata import LIBVIRT_TESTDATA, needs_testdata

TESTDATA = LIBVIRT_TESTDATA
IN_DIR = TESTDATA / "storagepoolxml2xmlin"
OUT_DIR = TESTDATA / "storagepoolxml2xmlout"
NEEDS_DATA = needs_testdata("storagepoolxml2xmlin")
IN_FILES = sorted(p.name for p in IN_DIR.glob("*.xml")) if IN_DIR.is_dir() else []

UUID = "70a7eb15-6c34-ee9c-bf57-69e8e5ff3fb2"


def dir_pool(name: str = "p", extra: str = "", target: str = "/tmp/p", perms: str = "") -> str:
    if perms:
        perms = f"<permissions>{perms}</permissions>"
    return (f"<pool type='dir'><name>{name}</name>{extra}"
            f"<target><path>{target}</path>{perms}</target></pool>")


@NEEDS_DATA
def test_testdata_present():
    assert len(IN_FILES) >= 18


@NEEDS_DATA
@pytest.mark.parametrize("fname", IN_FILES)
def test_libvirt_xml2xml(fname):
    pool = parse_pool_xml((IN_DIR / fname).read_text())
    out_file = OUT_DIR / fname
    if not out_file.exists():
        return          # libvirt has no output for this input either: parsing is the test
    expected = out_file.read_text()
    formatted = format_pool_xml(pool)
    assert canonical(formatted) == canonical(expected)
    assert xml_equivalent(formatted, expected)


@NEEDS_DATA
@pytest.mark.parametrize("fname", IN_FILES)
def test_round_trip(fname):
    pool = parse_pool_xml((IN_DIR / fname).read_text())
    again = parse_pool_xml(format_pool_xml(pool))
    assert again == pool
    assert format_pool_xml(again) == format_pool_xml(pool)


@NEEDS_DATA
def test_dir_pool_values():
    pool = parse_pool_xml((IN_DIR / "pool-dir.xml").read_text())
    assert pool.type == "dir"
    assert pool.name == "virtimages"
    assert pool.uuid == UUID
    assert pool.target == PoolTarget(
        path="/var/lib/libvirt/images",
        permissions=Permissions(mode=0o700, owner=-1, group=-1, label="some_label_t"))
    assert pool.source == PoolSource()
    assert pool.capacity == pool.allocation == pool.available == 0


@NEEDS_DATA
def test_defaults_values():
    logical = parse_pool_xml((IN_DIR / "pool-logical-create.xml").read_text())
    assert logical.source.name == "HostVG"
    assert logical.source.format == "lvm2"
    assert [d.path for d in logical.source.devices] == ["/dev/sdb1", "/dev/sdb2", "/dev/sdb3"]
    gluster = parse_pool_xml((IN_DIR / "pool-gluster.xml").read_text())
    assert gluster.source.dir == "/"
    assert gluster.target is None
    zfs = parse_pool_xml((IN_DIR / "pool-zfs.xml").read_text())
    assert zfs.target.path == "/dev/zvol/testpool"
    rbd = parse_pool_xml((IN_DIR / "pool-rbd.xml").read_text())
    assert [(h.name, h.port) for h in rbd.source.hosts] == [("localhost", 6789),
                                                            ("localhost", 6790)]
    assert rbd.source.auth.type == "ceph"
    assert rbd.source.auth.username == "admin"
    assert rbd.source.auth.secret_uuid == "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"
    nfs = parse_pool_xml((IN_DIR / "pool-netfs-ns-mountopts.xml").read_text())
    assert nfs.mount_opts == ["sync", "lazytime"]
    assert nfs.source.protocol_ver == "3"
    fc = parse_pool_xml((IN_DIR / "pool-scsi-type-fc-host.xml").read_text())
    assert (fc.source.adapter.type, fc.source.adapter.parent) == ("fc_host", "scsi_host5")
    assert fc.source.adapter.wwnn == "20000000c9831b4b"
    direct = parse_pool_xml((IN_DIR / "pool-iscsi-direct.xml").read_text())
    assert direct.source.initiator_iqn == "iqn.2013-06.com.example:iscsi-initiator"


def test_path_sanitising():
    assert sanitize_path("///var/////lib/libvirt/images//") == "/var/lib/libvirt/images"
    assert sanitize_path("/") == "/"
    assert sanitize_path("////") == "/"
    assert sanitize_path("/mnt/") == "/mnt"
    assert sanitize_path("rel//dir/") == "rel/dir"


def test_fs_and_netfs_format_default_auto():
    fs = parse_pool_xml("<pool type='fs'><name>f</name><source><device path='/dev/sdb1'/>"
                        "</source><target><path>/mnt</path></target></pool>")
    assert fs.source.format == "auto"
    netfs = parse_pool_xml("<pool type='netfs'><name>n</name><source><host name='h'/>"
                           "<dir path='/e'/></source><target><path>/mnt</path></target></pool>")
    assert netfs.source.format == "auto"
    assert "<format type='auto'/>" in format_pool_xml(netfs)
    disk = parse_pool_xml("<pool type='disk'><name>d</name><source><device path='/dev/sdb'/>"
                          "</source><target><path>/dev</path></target></pool>")
    assert disk.source.format == "unknown"


def test_logical_target_follows_source_name():
    pool = parse_pool_xml("<pool type='logical'><name>vg</name><target><path>/etc</path>"
                          "</target></pool>")
    assert pool.source.name == "vg"
    assert pool.target.path == "/dev/vg"


def test_logical_name_from_source_name():
    pool = parse_pool_xml("<pool type='logical'><source><name>vg0</name></source></pool>")
    assert pool.name == "vg0"


def test_xml_declaration_accepted():
    pool = parse_pool_xml("<?xml version='1.0' encoding='UTF-8'?>\n" + dir_pool(name="ü"))
    assert pool.name == "ü"


def test_pool_without_uuid_keeps_none():
    pool = parse_pool_xml(dir_pool())
    assert pool.uuid is None
    assert "<uuid>" not in format_pool_xml(pool)


def test_uuid_is_canonicalised():
    pool = parse_pool_xml(dir_pool(extra=f"<uuid>{UUID.upper()}</uuid>"))
    assert pool.uuid == UUID


def test_permissions_parsing():
    pool = parse_pool_xml(dir_pool(perms="<mode>0755</mode><owner>0744</owner>"
                                         "<group>107</group>"))
    assert pool.target.permissions == Permissions(mode=0o755, owner=744, group=107)
    assert "<mode>0755</mode>" in format_pool_xml(pool)


def test_sources_parts_not_used_by_type_are_dropped():
    pool = parse_pool_xml(dir_pool(extra="<source><host name='h'/><device path='/dev/x'/>"
                                         "</source>"))
    assert pool.source == PoolSource()


def test_free_extents_and_part_separator_formatted():
    pool = PoolDefinition(
        type="disk", name="sda", uuid=UUID,
        source=PoolSource(devices=[SourceDevice("/dev/sda", "no",
                                                [FreeExtent(32256, 106928640)])],
                          format="dos"),
        target=PoolTarget(path="/dev"))
    out = format_pool_xml(pool)
    assert ("    <device path='/dev/sda' part_separator='no'>\n"
            "      <freeExtent start='32256' end='106928640'/>\n"
            "    </device>\n") in out
    again = parse_pool_xml(out)
    assert again.source.devices == [SourceDevice("/dev/sda", "no")]   # input ignores extents


def test_scsi_host_parentaddr():
    xml = ("<pool type='scsi'><name>s</name><source><adapter type='scsi_host'>"
           "<parentaddr unique_id='1'><address domain='0x0000' bus='0x00' slot='0x1f'"
           " function='0x2'/></parentaddr></adapter></source>"
           "<target><path>/dev/disk/by-path</path></target></pool>")
    pool = parse_pool_xml(xml)
    assert pool.source.adapter.parent_addr == {
        "unique_id": "1", "domain": "0x0000", "bus": "0x00", "slot": "0x1f", "function": "0x2"}
    assert ("    <adapter type='scsi_host'>\n"
            "      <parentaddr unique_id='1'>\n"
            "        <address domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>\n"
            "      </parentaddr>\n"
            "    </adapter>\n") in format_pool_xml(pool)
    assert parse_pool_xml(format_pool_xml(pool)) == pool


def test_format_pool_sources_xml():
    sources = [PoolSource(hosts=[SourceHost("nfs.example.com")], dir="/export/a", format="nfs"),
               PoolSource(hosts=[SourceHost("nfs.example.com")], dir="/export/b", format="nfs")]
    out = format_pool_sources_xml(sources, "netfs")
    assert out == (
        "<sources>\n"
        "  <source>\n"
        "    <host name='nfs.example.com'/>\n"
        "    <dir path='/export/a'/>\n"
        "    <format type='nfs'/>\n"
        "  </source>\n"
        "  <source>\n"
        "    <host name='nfs.example.com'/>\n"
        "    <dir path='/export/b'/>\n"
        "    <format type='nfs'/>\n"
        "  </source>\n"
        "</sources>\n")
    assert format_pool_sources_xml([], "logical") == "<sources>\n</sources>\n"
    lvm = format_pool_sources_xml(
        [PoolSource(devices=[SourceDevice("/dev/sdb1")], name="vg", format="lvm2")], "logical")
    assert xml_equivalent(lvm, "<sources><source><device path='/dev/sdb1'/><name>vg</name>"
                               "<format type='lvm2'/></source></sources>")
    with pytest.raises(InvalidArgument):
        format_pool_sources_xml([], "bogus")


def test_escaping_in_output():
    pool = parse_pool_xml(dir_pool(name="a&lt;b'c", target="/tmp/&amp;x"))
    assert pool.name == "a<b'c"
    out = format_pool_xml(pool)
    assert "<name>a&lt;b&apos;c</name>" in out
    assert parse_pool_xml(out) == pool


def test_validate_pool_definition_direct():
    good = PoolDefinition(type="dir", name="p", target=PoolTarget(path="/tmp/p"))
    validate_pool_definition(good)
    for bad in (
        dataclasses.replace(good, type="nope"),
        dataclasses.replace(good, name="a/b"),
        dataclasses.replace(good, uuid="xyz"),
        dataclasses.replace(good, target=None),
        dataclasses.replace(good, target=PoolTarget("/x", Permissions(mode=0o4755))),
        dataclasses.replace(good, target=PoolTarget("/x", Permissions(owner=-2))),
        dataclasses.replace(good, mount_opts=["sync"]),
    ):
        with pytest.raises(InvalidArgument):
            validate_pool_definition(bad)


BAD_POOLS = {
    "dotdot name": (dir_pool(name="../x"), "must not contain '/'"),
    "slash name": (dir_pool(name="/"), "must not contain '/'"),
    "long name": (dir_pool(name="x" * 10_000), 'longer than 255'),
    "empty name": (dir_pool(name=""), 'no <name>'),
    "missing name": ("<pool type='dir'><target><path>/tmp</path></target></pool>", 'no <name>'),
    "unknown type": ("<pool type='bogus'><name>p</name></pool>",
                     "unknown storage pool type 'bogus'"),
    "no type": ("<pool><name>p</name></pool>", 'no type attribute'),
    "wrong root": ("<volume type='dir'><name>p</name></volume>", 'expecting <pool>'),
    "namespaced root": ("<pool xmlns='urn:x' type='dir'><name>p</name></pool>", 'expecting <pool>'),
    "bad uuid": (dir_pool(extra="<uuid>not-a-uuid</uuid>"), 'not a valid UUID'),
    "missing target": ("<pool type='dir'><name>p</name></pool>", 'target path'),
    "non-integer port": ("<pool type='netfs'><name>n</name><source><host name='h' port='x'/>"
                        "<dir path='/e'/></source><target><path>/m</path></target></pool>", 'port'),
    "port too big": ("<pool type='netfs'><name>n</name><source><host name='h' port='70000'/>"
                    "<dir path='/e'/></source><target><path>/m</path></target></pool>", 'port'),
    "negative mode": (dir_pool(perms="<mode>-1</mode>"), 'octal mode'),
    "non-octal mode": (dir_pool(perms="<mode>0789</mode>"), 'octal mode'),
    "setuid mode": (dir_pool(perms="<mode>04755</mode>"), 'octal mode'),
    "negative owner": (dir_pool(perms="<owner>-5</owner>"), 'owner'),
    "text group": (dir_pool(perms="<group>wheel</group>"), 'group'),
    "netfs without host": ("<pool type='netfs'><name>n</name><source><dir path='/e'/></source>"
                          "<target><path>/m</path></target></pool>", 'source host'),
    "netfs without dir": ("<pool type='netfs'><name>n</name><source><host name='h'/></source>"
                         "<target><path>/m</path></target></pool>", 'dir path'),
    "iscsi without host": ("<pool type='iscsi'><name>i</name><source><device path='iqn.x'/>"
                          "</source><target><path>/dev/disk/by-path</path></target></pool>",
                           'source host'),
    "iscsi without device": ("<pool type='iscsi'><name>i</name><source><host name='h'/>"
                            "</source><target><path>/dev/disk/by-path</path></target></pool>",
                             'source device'),
    "fs without device": ("<pool type='fs'><name>f</name><target><path>/mnt</path></target>"
                         "</pool>", 'source device'),
    "disk without device": ("<pool type='disk'><name>d</name><target><path>/dev</path>"
                           "</target></pool>", 'source device'),
    "scsi without adapter": ("<pool type='scsi'><name>s</name><target><path>/dev</path>"
                            "</target></pool>", 'adapter'),
    "fc_host without wwpn": ("<pool type='scsi'><name>s</name><source><adapter type='fc_host'"
                            " wwnn='20000000c9831b4b'/></source><target><path>/dev</path>"
                            "</target></pool>", 'wwpn'),
    "rbd without name": ("<pool type='rbd'><name>r</name><source><host name='h'/></source>"
                        "</pool>", 'mandatory for RBD'),
    "iscsi-direct without iqn": ("<pool type='iscsi-direct'><name>i</name><source>"
                                "<host name='h'/><device path='iqn.x'/></source></pool>", 'IQN'),
    "unknown fs format": ("<pool type='fs'><name>f</name><source><device path='/dev/sdb1'/>"
                         "<format type='ext3,suid'/></source><target><path>/mnt</path>"
                         "</target></pool>", 'format type'),
    "protocol on cifs": ("<pool type='netfs'><name>n</name><source><host name='h'/>"
                        "<dir path='/e'/><format type='cifs'/><protocol ver='3'/></source>"
                        "<target><path>/m</path></target></pool>", 'protocol ver'),
    "auth without type": ("<pool type='iscsi'><name>i</name><source><host name='h'/>"
                         "<device path='iqn.x'/><auth username='u'><secret usage='s'/></auth>"
                         "</source><target><path>/dev</path></target></pool>", 'auth type'),
    "auth bad secret uuid": ("<pool type='iscsi'><name>i</name><source><host name='h'/>"
                            "<device path='iqn.x'/><auth type='chap' username='u'>"
                            "<secret uuid='zzz'/></auth></source><target><path>/dev</path>"
                            "</target></pool>", 'not a valid UUID'),
    "bad mount option": ("<pool type='netfs' xmlns:fs='http://libvirt.org/schemas/storagepool/"
                        "fs/1.0'><name>n</name><source><host name='h'/><dir path='/e'/>"
                        "</source><target><path>/m</path></target><fs:mount_opts>"
                        "<fs:option name='ro,suid'/></fs:mount_opts></pool>", 'mount option'),
    "garbage": ("this is not XML", 'not well-formed'),
    "truncated": ("<pool type='dir'><name>p</name>", 'not well-formed'),
}


@pytest.mark.parametrize(("xml", "message"), BAD_POOLS.values(), ids=BAD_POOLS.keys())
def test_bad_pools_rejected(xml, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse_pool_xml(xml)


def test_hostile_documents_rejected():
    laughs = ("<!DOCTYPE p [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]>"
              + dir_pool(name="&b;"))
    xxe = "<!DOCTYPE p [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + dir_pool(name="&x;")
    for doc in (laughs, xxe):
        with pytest.raises(InvalidArgument, match="DOCTYPE"):
            parse_pool_xml(doc)
    with pytest.raises(InvalidArgument, match="larger than"):
        parse_pool_xml(dir_pool(extra="<x>" + "a" * (2 * 1024 * 1024) + "</x>"))
    with pytest.raises(InvalidArgument, match="NUL"):
        parse_pool_xml(dir_pool(name="a\x00b"))
    with pytest.raises(InvalidArgument, match="string"):
        parse_pool_xml(dir_pool().encode())


def test_error_messages_are_specific():
    with pytest.raises(InvalidArgument, match="unknown storage pool type 'bogus'"):
        parse_pool_xml("<pool type='bogus'><name>p</name></pool>")
    with pytest.raises(InvalidArgument, match="expecting <pool>"):
        parse_pool_xml("<volume/>")
    with pytest.raises(InvalidArgument, match="pool name must not contain '/'"):
        parse_pool_xml(dir_pool(name="a/b"))
