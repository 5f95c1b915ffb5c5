"""Hardened XML parsing and structural comparison (model/xmlsafe.py)."""

from __future__ import annotations

import threading

import pytest
from example_storage.errors import InvalidArgument
from example_storage.model import xmlsafe
from example_storage.model.xmlsafe import (
    MAX_XML_BYTES,
    canonical,
    child_attr,
    child_text,
    element,
    escape,
    parse_document,
    xml_equivalent,
)
from lxml import etree

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<pool type='dir'><name>&lol4;</name></pool>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE pool [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<pool type='dir'><name>&xxe;</name></pool>"""


def test_parses_plain_document():
    root = parse_document("<pool type='dir'><name>a</name></pool>")
    assert root.tag == "pool"
    assert root.get("type") == "dir"
    assert child_text(root, "name") == "a"


def test_xml_declaration_with_encoding_in_str():
    root = parse_document("<?xml version='1.0' encoding='UTF-8'?>\n<pool><name>é</name></pool>")
    assert child_text(root, "name") == "é"
    # the declaration's encoding is irrelevant for a str: it is already decoded
    root = parse_document("<?xml version='1.0' encoding='ISO-8859-1'?><a>ü日本</a>")
    assert root.text == "ü日本"


def test_leading_bom_is_accepted():
    assert parse_document("\ufeff<a>x</a>").text == "x"


def test_comments_and_pis_are_dropped():
    root = parse_document("<a><!-- c --><?pi x?><b/></a>")
    assert [c.tag for c in root] == ["b"]


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_doctype_is_rejected(doc):
    with pytest.raises(InvalidArgument, match="must not contain a DOCTYPE"):
        parse_document(doc)


def test_external_entity_is_never_read():
    with pytest.raises(InvalidArgument) as info:
        parse_document(EXTERNAL_ENTITY)
    assert "root:" not in info.value.message


def test_undefined_entity_is_rejected():
    with pytest.raises(InvalidArgument, match="not well-formed"):
        parse_document("<a>&xxe;</a>")


def test_too_large_is_rejected():
    doc = "<a>" + "x" * (2 * 1024 * 1024) + "</a>"
    with pytest.raises(InvalidArgument, match="larger than"):
        parse_document(doc)
    # multi-byte characters count as their UTF-8 size
    doc = "<a>" + "é" * (MAX_XML_BYTES // 2 + 1) + "</a>"
    with pytest.raises(InvalidArgument, match="larger than"):
        parse_document(doc)


def test_nul_is_rejected():
    with pytest.raises(InvalidArgument, match="NUL"):
        parse_document("<a>x\x00y</a>")


@pytest.mark.parametrize("value", [b"<a/>", None, 42])
def test_only_str_is_accepted(value):
    with pytest.raises(InvalidArgument, match="must be a string"):
        parse_document(value)


@pytest.mark.parametrize("doc", ["", "   ", "not xml at all", "<a>", "<a></b>", "<a/><b/>",
                                 "<a>\x01</a>", "\udcff<a/>"])
def test_garbage_is_rejected(doc):
    with pytest.raises(InvalidArgument):
        parse_document(doc)


def test_error_message_names_what_and_position():
    with pytest.raises(InvalidArgument) as info:
        parse_document("<pool>\n<name></pool>", "pool XML")
    msg = info.value.message
    assert msg.startswith("pool XML is not well-formed:")
    assert "line 2" in msg
    assert "Traceback" not in msg


def test_equivalence_ignores_layout_and_attribute_order():
    a = "<pool type='dir' x=\"1\">\n  <name>n</name>\n  <source>\n  </source>\n</pool>"
    b = '<pool x="1" type="dir"><!-- hi --><name> n </name><source/></pool>'
    assert xml_equivalent(a, b)
    assert canonical(a) == canonical(b)


def test_equivalence_sees_real_differences():
    assert not xml_equivalent("<a x='1'/>", "<a x='2'/>")
    assert not xml_equivalent("<a><b/><c/></a>", "<a><c/><b/></a>")
    assert not xml_equivalent("<a>x</a>", "<a>y</a>")
    assert not xml_equivalent("<a><b/></a>", "<a/>")
    assert not xml_equivalent("<a xmlns='urn:x'/>", "<a/>")


def test_equivalence_ignores_namespace_prefix_but_not_uri():
    a = "<p xmlns:fs='urn:fs'><fs:o name='x'/></p>"
    b = "<p xmlns:q='urn:fs'><q:o name='x'/></p>"
    assert xml_equivalent(a, b)
    assert xml_equivalent(parse_document(a), b)
    assert not xml_equivalent(a, "<p xmlns:fs='urn:other'><fs:o name='x'/></p>")


def test_canonical_rendering():
    assert canonical("<a y='2' x='1'>\n <b>t</b>\n</a>") == "<a x='1' y='2'>\n  <b> 't'\n"


def test_writer_helpers():
    assert element("a", [("x", "1"), ("y", None)]) == ["<a x='1'/>"]
    assert element("a", text="<&'>") == ["<a>&lt;&amp;&apos;&gt;</a>"]
    assert element("s", keep_open=True) == ["<s>", "</s>"]
    assert element("s", children=["<b/>"]) == ["<s>", "  <b/>", "</s>"]
    assert escape("a'b\"c") == "a&apos;b&quot;c"
    with pytest.raises(InvalidArgument):
        escape("bad\x01")
    root = etree.fromstring("<r><d path=''/><e path='p'/></r>")
    assert child_attr(root, "d", "path") is None
    assert child_attr(root, "e", "path") == "p"
    assert child_attr(root, "missing", "path") is None


def test_the_parser_is_reused_per_thread_and_survives_bad_documents():
    mine = xmlsafe._parser()
    assert xmlsafe._parser() is mine
    for bad in ("<a>", "<!DOCTYPE a><a/>", "<a>&x;</a>", "<a/><b/>"):
        with pytest.raises(InvalidArgument):
            parse_document(bad)
    assert parse_document("<v><name>ok</name></v>").findtext("name") == "ok"

    others, errors = [], []

    def parse_many(i: int) -> None:
        try:
            others.append(xmlsafe._parser())
            for n in range(300):
                root = parse_document(f"<v n='{i}'><name>t{i}-{n}</name></v>")
                assert (root.get("n"), root.findtext("name")) == (str(i), f"t{i}-{n}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=parse_many, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(p) for p in [mine, *others]}) == 5
