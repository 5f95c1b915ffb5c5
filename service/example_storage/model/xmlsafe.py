"""Hardened XML parsing for untrusted pool/volume documents, and structural comparison.

Everything a caller hands us goes through ``parse_document``: no DTDs, no entities,
no network, no huge trees, bounded size. Any problem becomes ``InvalidArgument``.
"""

from __future__ import annotations

import re
import threading

from lxml import etree

from ..errors import InvalidArgument

MAX_XML_BYTES = 1024 * 1024

_DOCTYPE = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


_PARSERS = threading.local()


def _parser() -> etree.XMLParser:
    """This thread's parser (an lxml parser may not be used by two threads at once; made
    once per thread, not per document)."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = _new_parser()
    return parser


def _new_parser() -> etree.XMLParser:
    # encoding='utf-8' overrides any encoding named in the XML declaration: we always
    # hand lxml the UTF-8 bytes of a str, whatever the declaration says.
    return etree.XMLParser(
        encoding="utf-8",
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def parse_document(text: str, what: str = "XML") -> etree._Element:
    """Parse an untrusted XML document given as str; return its root element."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a string, not {type(text).__name__}")
    if len(text) > MAX_XML_BYTES:
        raise InvalidArgument(f"{what} is larger than {MAX_XML_BYTES} bytes")
    if "\x00" in text:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text") from None
    if len(data) > MAX_XML_BYTES:
        raise InvalidArgument(f"{what} is larger than {MAX_XML_BYTES} bytes")
    if _DOCTYPE.search(text):
        raise InvalidArgument(f"{what} must not contain a DOCTYPE or entity declaration")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise InvalidArgument(f"{what} is empty")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        raise InvalidArgument(f"{what} is not well-formed: {e.msg or e}") from None
    except (etree.LxmlError, ValueError) as e:
        raise InvalidArgument(f"{what} could not be parsed: {e}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise InvalidArgument(f"{what} must not contain a DOCTYPE")
    for node in root.iter():
        if not isinstance(node.tag, str):   # entity reference or other non-element node
            raise InvalidArgument(f"{what} must not contain entity references")
    return root


def _lines(el: etree._Element, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    attrs = " ".join(f"{k}={v!r}" for k, v in sorted(el.attrib.items()))
    text = (el.text or "").strip()
    out.append(f"{pad}<{el.tag}{' ' + attrs if attrs else ''}>{' ' + repr(text) if text else ''}")
    for child in el:
        if isinstance(child.tag, str):
            _lines(child, depth + 1, out)
        tail = (child.tail or "").strip()
        if tail:
            out.append(f"{pad}  {tail!r}")


def canonical(doc: str | etree._Element) -> str:
    """A normalised, line-per-element rendering of a document for comparison.

    Ignores whitespace-only text, attribute order, quote style, namespace prefixes
    (tags keep their namespace URI) and comments.
    """
    root = parse_document(doc) if isinstance(doc, str) else doc
    out: list[str] = []
    _lines(root, 0, out)
    return "\n".join(out) + "\n"


def xml_equivalent(a: str | etree._Element, b: str | etree._Element) -> bool:
    """True if the two documents have the same elements, attributes and text."""
    return canonical(a) == canonical(b)


# --- small helpers shared by poolxml/volxml -------------------------------------------

_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(value: object) -> str:
    """Escape a value for use as element text or a single-quoted attribute."""
    s = str(value)
    if _NOT_XML_CHAR.search(s):
        raise InvalidArgument(f"value {s[:64]!r} contains characters not allowed in XML")
    return (
        s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace("'", "&apos;").replace('"', "&quot;")
    )


def element(
    tag: str,
    attrs: list[tuple[str, object]] | tuple = (),
    text: object = None,
    children: list[str] | None = None,
    keep_open: bool = False,
) -> list[str]:
    """Lines of one element in libvirt style: single quotes, two-space indentation.

    Attributes whose value is None are left out. ``keep_open`` writes an empty
    element as ``<tag>``/``</tag>`` instead of ``<tag/>``.
    """
    a = "".join(f" {k}='{escape(v)}'" for k, v in attrs if v is not None)
    if children or keep_open:
        return [f"<{tag}{a}>", *("  " + line for line in children or []), f"</{tag}>"]
    if text is not None:
        return [f"<{tag}{a}>{escape(text)}</{tag}>"]
    return [f"<{tag}{a}/>"]


def child_text(parent: etree._Element, tag: str) -> str | None:
    """All text of the first child ``tag`` (like XPath string()), or None if absent/empty."""
    el = parent.find(tag)
    return None if el is None else element_text(el)


def element_text(el: etree._Element) -> str | None:
    """All text of ``el`` (like XPath string()), or None if empty."""
    if len(el) == 0:            # no child elements: its text is all of it
        return el.text or None
    return "".join(el.itertext()) or None


class Children:
    """The first child element of each tag of ``parent``, found in one pass (each lxml
    ``find()`` makes a pass and a new proxy object): ``get``/``text``/``attr`` answer as
    ``parent.find``, ``child_text`` and ``child_attr`` do."""

    __slots__ = ("_first",)

    def __init__(self, parent: etree._Element | None) -> None:
        first: dict[str, etree._Element] = {}
        if parent is not None:
            for child in parent:
                tag = child.tag
                if tag not in first and isinstance(tag, str):
                    first[tag] = child
        self._first = first

    def get(self, tag: str) -> etree._Element | None:
        return self._first.get(tag)

    def text(self, tag: str) -> str | None:
        el = self._first.get(tag)
        return None if el is None else element_text(el)

    def attr(self, tag: str, name: str) -> str | None:
        el = self._first.get(tag)
        return None if el is None else (el.get(name) or None)


def child_attr(parent: etree._Element, tag: str, name: str) -> str | None:
    """Attribute ``name`` of the first child ``tag``, or None if absent/empty."""
    el = parent.find(tag)
    if el is None:
        return None
    return el.get(name) or None
