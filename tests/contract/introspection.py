"""Reading introspection/*.xml: the contract the running service must match."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

INTROSPECTION_DIR = Path(__file__).resolve().parents[2] / "introspection"


@dataclass
class Member:
    kind: str                      # method | signal | property
    name: str
    signature: tuple = ()          # normalized, comparable
    doc: str = ""


@dataclass
class Interface:
    name: str
    members: dict[str, Member] = field(default_factory=dict)


def _args(el: etree._Element, kind: str) -> tuple:
    out = []
    for arg in el.findall("arg"):
        direction = arg.get("direction", "in" if kind == "method" else "out")
        # names of out-args are documentation only (libraries do not export them)
        name = arg.get("name") if (kind == "method" and direction == "in") else None
        out.append((direction, arg.get("type"), name))
    return tuple(out)


def parse_interfaces(xml: bytes | str) -> dict[str, Interface]:
    if isinstance(xml, str):
        xml = xml.encode()
    parser = etree.XMLParser(remove_comments=False, resolve_entities=False, no_network=True,
                             load_dtd=False)
    root = etree.fromstring(xml, parser)
    result = {}
    for iface_el in root.findall("interface"):
        iface = Interface(iface_el.get("name"))
        last_comment = ""
        for child in iface_el:
            if child.tag is etree.Comment:
                last_comment = child.text or ""
                continue
            if child.tag in ("method", "signal"):
                m = Member(child.tag, child.get("name"), _args(child, child.tag), last_comment)
            elif child.tag == "property":
                m = Member("property", child.get("name"),
                           (child.get("type"), child.get("access")), last_comment)
            else:
                continue
            iface.members[f"{m.kind}:{m.name}"] = m
            last_comment = ""
        result[iface.name] = iface
    return result


def contract() -> dict[str, Interface]:
    result = {}
    for path in sorted(INTROSPECTION_DIR.glob("*.xml")):
        result.update(parse_interfaces(path.read_bytes()))
    return result


def documented_action(member: Member) -> str | None:
    match = re.search(r"Polkit action:\s*(\S+)", member.doc)
    return match.group(1) if match else None


def structure(ifaces: dict[str, Interface]) -> dict[str, dict[str, tuple]]:
    return {name: {k: m.signature for k, m in i.members.items()} for name, i in ifaces.items()}
