"""libvirt-style storage pool capabilities XML, built from the backends' declarations."""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from ..backends.base import Backend


def capabilities_xml(backends: Iterable[Backend]) -> str:
    root = etree.Element("storagepoolCapabilities")
    for backend in backends:
        missing = backend.missing_tools()
        supported = bool(backend.features) and not missing
        pool = etree.SubElement(root, "pool", type=backend.type_name,
                                supported="yes" if supported else "no")
        if backend.pool_formats:
            opts = etree.SubElement(pool, "poolOptions")
            etree.SubElement(opts, "defaultFormat", type=backend.pool_formats[0])
            _enum(opts, "sourceFormatType", backend.pool_formats)
        if backend.volume_formats:
            opts = etree.SubElement(pool, "volOptions")
            default = backend.default_volume_format or backend.volume_formats[0]
            etree.SubElement(opts, "defaultFormat", type=default)
            _enum(opts, "targetFormatType", backend.volume_formats)
        features = etree.SubElement(pool, "features")
        for name in sorted(backend.features):
            etree.SubElement(features, "feature", name=name)
        if missing:
            tools = etree.SubElement(pool, "missingTools")
            for tool in missing:
                etree.SubElement(tools, "tool", name=tool)
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def supported_types(backends: Iterable[Backend]) -> list[str]:
    return [b.type_name for b in backends if b.features and not b.missing_tools()]


def _enum(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    enum = etree.SubElement(parent, "enum", name=name)
    for value in values:
        etree.SubElement(enum, "value").text = value
