"""Volume XML parsing/formatting against libvirt's own test data (model/volxml.py)."""

from __future__ import annotations

import re

import pytest
from example_storage.errors import InvalidArgument
from example_storage.model.definitions import BackingStore, Permissions, VolumeDefinition
from example_storage.model.volxml import format_volume_xml, parse_size, parse_volume_xml
from example_storage.model.xmlsafe import canonical, xml_equivalent

from tests.testdata import LIBVIRT_TESTDATA, needs_testdata

TESTDATA = LIBVIRT_TESTDATA
IN_DIR = TESTDATA / "storagevolxml2xmlin"
OUT_DIR = TESTDATA / "storagevolxml2xmlout"
NEEDS_DATA = needs_testdata("storagevolxml2xmlin")
IN_FILES = sorted(p.name for p in IN_DIR.glob("*.xml")) if IN_DIR.is_dir() else []

GiB = 1024**3


def pool_type_for(fname: str) -> str:
    if fname.startswith("vol-logical"):
        return "logical"
    return "disk" if fname.startswith("vol-partition") else "dir"


def load(fname: str) -> VolumeDefinition:
    return parse_volume_xml((IN_DIR / fname).read_text(), pool_type_for(fname))


def vol(extra: str = "", name: str = "v", root: str = "<volume>") -> str:
    return f"{root}<name>{name}</name><capacity>1</capacity>{extra}</volume>"


# --- sizes --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("5", "G", 5 * GiB), ("5", "GiB", 5 * GiB), ("5", "g", 5 * GiB), ("5", "gib", 5 * GiB),
    ("5", "GB", 5_000_000_000), ("5", "gb", 5_000_000_000),
    ("10", "GB", 10_000_000_000), ("1", "TiB", 1024**4), ("1", "T", 1024**4),
    ("1", "TB", 10**12), ("1", "KB", 1000), ("1", "k", 1024), ("1", "K", 1024),
    ("1", "KiB", 1024), ("3", "MB", 3_000_000), ("3", "M", 3 * 1024**2),
    ("3", "MiB", 3 * 1024**2), ("2", "PB", 2 * 10**15), ("2", "P", 2 * 1024**5),
    ("2", "PiB", 2 * 1024**5), ("7", "EB", 7 * 10**18), ("7", "E", 7 * 1024**6),
    ("7", "EiB", 7 * 1024**6), ("42", None, 42), ("42", "", 42), ("42", "b", 42),
    ("42", "bytes", 42), ("42", "Byte", 42), ("0", "MiB", 0), (" 12 ", None, 12),
    ("9223372036854775807", None, 2**63 - 1), ("8388607", "TiB", 8388607 * 1024**4),
])
def test_parse_size(value, unit, expected):
    assert parse_size(value, unit) == expected


@pytest.mark.parametrize(("value", "unit"), [
    ("-1", None), ("-5", "G"), ("1.5", "G"), ("abc", None), ("", None), ("0x10", None),
    ("1e3", None), ("5", "X"), ("5", "GBB"), ("5", "Gi"), ("5", "iB"), ("5", "bit"),
    ("5", "\u212a"),                    # KELVIN SIGN lower-cases to 'k': still refused
    ("9223372036854775808", None), ("8", "EiB"), ("8388608", "TiB"), ("9" * 40, None),
    ("9" * 5000, "G"), ("+5", None), ("٣", None), ("²", None), ("1 2", None), (5, None),
])
def test_parse_size_rejects(value, unit):
    with pytest.raises(InvalidArgument):
        parse_size(value, unit)


def test_parse_size_messages():
    with pytest.raises(InvalidArgument, match="too large"):
        parse_size("8", "EiB")
    with pytest.raises(InvalidArgument, match="unit"):
        parse_size("8", "foo")
    with pytest.raises(InvalidArgument, match="malformed size"):
        parse_size("-8", None)


# --- libvirt test data --------------------------------------------------------------------

@NEEDS_DATA
def test_testdata_present():
    assert len(IN_FILES) >= 10


@NEEDS_DATA
@pytest.mark.parametrize("fname", IN_FILES)
def test_libvirt_xml2xml(fname):
    volume = load(fname)
    out_file = OUT_DIR / fname
    if not out_file.exists():
        return          # libvirt has no output for this input either: parsing is the test
    expected = out_file.read_text()
    formatted = format_volume_xml(volume)
    assert canonical(formatted) == canonical(expected)
    assert xml_equivalent(formatted, expected)


@NEEDS_DATA
@pytest.mark.parametrize("fname", IN_FILES)
def test_round_trip(fname):
    volume = load(fname)
    again = parse_volume_xml(format_volume_xml(volume), pool_type_for(fname))
    assert again == volume
    assert format_volume_xml(again) == format_volume_xml(volume)


@NEEDS_DATA
def test_file_qcow2_without_output_parses():
    v = load("vol-file-qcow2.xml")
    assert v.name == "sparse-qcow2.img"
    assert v.type == "file"
    assert v.format == "qcow2"
    assert v.capacity == 1024**4
    assert v.allocation == 0
    assert v.path == "/var/lib/libvirt/images/sparse-qcow2.img"
    assert v.permissions == Permissions(mode=0, owner=744, group=0, label="virt_image_t")


@NEEDS_DATA
def test_values_from_testdata():
    backing = load("vol-file-backing.xml")
    assert backing.type == "file"
    assert backing.format == "raw"
    assert backing.capacity == 10_000_000_000
    assert backing.key == "/var/lib/libvirt/images/sparse.img"
    assert backing.permissions == Permissions(mode=0, owner=744, group=0)
    assert backing.backing_store == BackingStore(
        path="/var/lib/virt/images/master.img", format="vmdk",
        permissions=Permissions(mode=0o744, owner=1, group=1, label="virt_image_t"))
    assert "<mode>00</mode>" in format_volume_xml(backing)

    luks = load("vol-luks.xml")
    assert luks.capacity == 5368709120
    assert luks.allocation == 294912
    assert luks.encryption_format == "luks"
    assert luks.encryption_secrets == [
        {"type": "passphrase", "uuid": "f52a81b2-424e-490c-823d-6bd4235bc572"}]

    q11 = load("vol-qcow2-1.1.xml")
    assert (q11.compat, q11.features) == ("1.1", [])
    plain = load("vol-qcow2.xml")
    assert (plain.compat, plain.features) == (None, None)

    logical = load("vol-logical-backing.xml")
    assert logical.type == "block"
    assert logical.format is None
    assert logical.backing_store.format is None
    assert logical.key == "r4xkCv-MQhr-WKIT-R66x-Epn2-e8hG-1Z5gY0"

    part = load("vol-partition.xml")
    assert (part.type, part.format, part.capacity) == ("block", "none", 106896384)


# --- defaults and other behaviour ---------------------------------------------------------

@pytest.mark.parametrize(("pool_type", "vtype", "fmt"), [
    ("dir", "file", "raw"), ("fs", "file", "raw"), ("netfs", "file", "raw"),
    ("gluster", "file", "raw"), ("vstorage", "file", "raw"),
    ("logical", "block", None), ("disk", "block", "none"),
])
def test_defaults_per_pool_type(pool_type, vtype, fmt):
    v = parse_volume_xml(vol(), pool_type)
    assert (v.type, v.format) == (vtype, fmt)


def test_capacity_may_be_missing():
    v = parse_volume_xml("<volume><name>v</name></volume>")
    assert v.capacity is None
    assert v.allocation is None
    assert "<capacity" not in format_volume_xml(v)


def test_logical_pool_ignores_format():
    v = parse_volume_xml(vol("<target><format type='qcow2'/></target>"), "logical")
    assert v.format is None


def test_features_and_nocow_round_trip():
    v = parse_volume_xml(vol("<target><format type='qcow2'/><compat>0.10</compat>"
                             "<features><lazy_refcounts/></features><nocow/></target>"))
    assert (v.compat, v.features, v.nocow) == ("0.10", ["lazy_refcounts"], True)
    out = format_volume_xml(v)
    assert "    <features>\n      <lazy_refcounts/>\n    </features>\n    <nocow/>\n" in out
    assert parse_volume_xml(out) == v


def test_encryption_cipher_round_trip():
    v = parse_volume_xml(vol(
        "<target><encryption format='luks'><secret type='passphrase' usage='/x'/>"
        "<cipher name='aes' size='256' mode='xts' hash='sha256'/>"
        "<ivgen name='plain64' hash='sha256'/></encryption></target>"))
    assert v.encryption_secrets == [{"type": "passphrase", "usage": "/x"}]
    assert v.encryption_cipher == {"name": "aes", "size": "256", "mode": "xts", "hash": "sha256"}
    assert v.encryption_ivgen == {"name": "plain64", "hash": "sha256"}
    assert parse_volume_xml(format_volume_xml(v)) == v


def test_backing_store_without_path_ignored_like_libvirt():
    v = parse_volume_xml(vol("<backingStore/>"))
    assert v.backing_store is None


def test_explicit_volume_type_kept():
    v = parse_volume_xml(vol(root="<volume type='block'>"))
    assert v.type == "block"
    assert format_volume_xml(v).startswith("<volume type='block'>\n  <name>v</name>\n")


BAD_VOLUMES = {
    "dotdot name": (vol(name=".."), "'.' or '..'"),
    "slash name": (vol(name="/"), "must not contain '/'"),
    "traversal name": (vol(name="../../etc/passwd"), "must not contain '/'"),
    "long name": (vol(name="x" * 10_000), "longer than 255"),
    "missing name": ("<volume><capacity>1</capacity></volume>", "no <name>"),
    "wrong root": ("<pool type='dir'><name>v</name></pool>", "expecting <volume>"),
    "unknown type": (vol(root="<volume type='weird'>"), "unknown volume type"),
    "negative capacity": ("<volume><name>v</name><capacity>-1</capacity></volume>",
                          "malformed size"),
    "bad unit": ("<volume><name>v</name><capacity unit='parsecs'>1</capacity></volume>",
                 "unit"),
    "overflow": ("<volume><name>v</name><capacity unit='EiB'>8</capacity></volume>",
                 "too large"),
    "bad allocation": (vol("<allocation>lots</allocation>"), "malformed size"),
    "unknown format": (vol("<target><format type='qcow3'/></target>"), "format type"),
    "bad mode": (vol("<target><permissions><mode>999</mode></permissions></target>"),
                 "octal mode"),
    "bad owner": (vol("<target><permissions><owner>root</owner></permissions></target>"),
                  "owner"),
    "bad compat": (vol("<target><compat>1.1.1</compat></target>"), "compat"),
    "unknown feature": (vol("<target><features><evil/></features></target>"), "feature"),
    "bad encryption format": (vol("<target><encryption format='rot13'/></target>"),
                              "encryption format"),
    "bad secret uuid": (vol("<target><encryption format='luks'><secret type='passphrase' "
                            "uuid='nope'/></encryption></target>"), "UUID"),
    "bad backing format": (vol("<backingStore><path>/b</path><format type='x'/>"
                               "</backingStore>"), "format type"),
    "garbage": ("<<<>>>", "not well-formed"),
}


@pytest.mark.parametrize(("xml", "message"), BAD_VOLUMES.values(), ids=BAD_VOLUMES.keys())
def test_bad_volumes_rejected(xml, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse_volume_xml(xml, "dir")


def test_disk_pool_takes_partition_formats_only():
    assert parse_volume_xml(vol("<target><format type='linux-swap'/></target>"),
                            "disk").format == "linux-swap"
    with pytest.raises(InvalidArgument, match="unknown volume format type 'qcow2'"):
        parse_volume_xml(vol("<target><format type='qcow2'/></target>"), "disk")


def test_hostile_volume_documents():
    with pytest.raises(InvalidArgument, match="DOCTYPE"):
        parse_volume_xml("<!DOCTYPE v [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                         + vol(name="&x;"))
    with pytest.raises(InvalidArgument, match="larger than"):
        parse_volume_xml(vol("<key>" + "k" * (2 * 1024 * 1024) + "</key>"))
    with pytest.raises(InvalidArgument, match="NUL"):
        parse_volume_xml(vol(name="a\x00"))
    with pytest.raises(InvalidArgument, match="unknown storage pool type"):
        parse_volume_xml(vol(), "nope")
