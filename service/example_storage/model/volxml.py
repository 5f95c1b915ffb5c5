"""libvirt-compatible storage volume XML: parse into ``VolumeDefinition`` and format back.

Follows libvirt's virStorageVolDefParseXML/virStorageVolDefFormat, including the
per-pool-type default volume type and format.
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import InvalidArgument
from .definitions import POOL_TYPES, BackingStore, VolumeDefinition
from .names import validate_name, validate_uuid
from .poolxml import format_permissions, parse_permissions
from .xmlsafe import Children, element, parse_document

MAX_SIZE = 2**63 - 1          # off_t is signed: nothing can be larger
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}

VOLUME_TYPES = ("file", "block", "dir", "network", "netdir", "ploop")
FILE_FORMATS = ("raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd",
                "ploop", "cow", "qcow", "qcow2", "qed", "vmdk")
PARTITION_FORMATS = ("none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm",
                     "linux-raid", "extended")
# Volume formats per pool type; pool types not listed have no volume format at all.
VOLUME_FORMATS: dict[str, tuple[str, ...]] = {
    "dir": FILE_FORMATS, "fs": FILE_FORMATS, "netfs": FILE_FORMATS, "gluster": FILE_FORMATS,
    "vstorage": FILE_FORMATS, "rbd": FILE_FORMATS, "disk": PARTITION_FORMATS,
}
_BLOCK_POOLS = ("logical", "disk", "iscsi", "scsi", "mpath", "zfs")
_NETWORK_POOLS = ("rbd", "sheepdog", "iscsi-direct")
FEATURES = ("lazy_refcounts", "extended_l2")
ENCRYPTION_FORMATS = ("default", "qcow", "luks", "luks2", "luks-any")


def parse_size(value: str, unit: str | None) -> int:
    """A size in bytes from libvirt's number + unit ('G' = GiB, 'GB' = 10**9, ...)."""
    digits = value.strip() if isinstance(value, str) else ""
    if not (digits.isascii() and digits.isdigit()):      # [0-9]+
        raise InvalidArgument(f"malformed size '{str(value)[:32]}'")
    scale = _unit_scale(unit)
    if len(digits) > 20 or int(digits) > MAX_SIZE // scale:
        raise InvalidArgument(f"size {digits[:32]} {unit or 'bytes'} is too large")
    return int(digits) * scale


def _unit_scale(unit: str | None) -> int:
    if unit is None or unit == "":
        return 1
    u = unit.lower() if unit.isascii() else ""
    if u in ("b", "byte", "bytes"):
        return 1
    if len(u) == 1 or u[1:] == "ib":
        base = 1024
    elif u[1:] == "b":
        base = 1000
    else:
        base = 0
    if not base or u[0] not in _POWERS:
        raise InvalidArgument(f"unknown size unit '{unit[:32]}'")
    return base ** _POWERS[u[0]]


def _size(children: Children, tag: str) -> int | None:
    """<tag unit=...>N</tag> in bytes, or None when absent or empty."""
    text = children.text(tag)
    return parse_size(text, children.attr(tag, "unit")) if text is not None else None


def _format(children: Children, pool_type: str) -> str | None:
    """The <format type=...> among ``children``, defaulted and checked for this pool
    type."""
    formats = VOLUME_FORMATS.get(pool_type)
    if formats is None:
        return None                      # libvirt ignores formats for these pools
    fmt = children.attr("format", "type")
    if fmt is None:
        return formats[0]                # 'raw' or 'none'
    if fmt not in formats:
        raise InvalidArgument(f"unknown volume format type '{fmt[:64]}'")
    return fmt


def _parse_encryption(el: etree._Element, vol: VolumeDefinition) -> None:
    fmt = el.get("format")
    if fmt not in ENCRYPTION_FORMATS:
        raise InvalidArgument(f"unknown volume encryption format '{str(fmt)[:64]}'")
    vol.encryption_format = fmt
    for secret in el.findall("secret"):
        if secret.get("type") != "passphrase":
            raise InvalidArgument("volume encryption secret type must be 'passphrase'")
        uuid, usage = secret.get("uuid"), secret.get("usage")
        if (uuid is None) == (usage is None):
            raise InvalidArgument("encryption secret needs either a uuid or a usage attribute")
        entry = {"type": "passphrase"}
        entry.update({"uuid": validate_uuid(uuid)} if uuid is not None else {"usage": usage})
        vol.encryption_secrets.append(entry)
    if (cipher := el.find("cipher")) is not None:
        size = (cipher.get("size") or "").strip()
        if not cipher.get("name") or not re.fullmatch(r"[0-9]{1,5}", size):
            raise InvalidArgument("encryption <cipher> needs a name and a numeric size")
        vol.encryption_cipher = {k: v for k, v in cipher.attrib.items()
                                 if k in ("name", "mode", "hash")} | {"size": str(int(size))}
    if (ivgen := el.find("ivgen")) is not None:
        if not ivgen.get("name"):
            raise InvalidArgument("encryption <ivgen> needs a name")
        vol.encryption_ivgen = {k: v for k, v in ivgen.attrib.items() if k in ("name", "hash")}


def _parse_target(target: Children, vol: VolumeDefinition) -> None:
    vol.path = target.text("path")
    vol.permissions = parse_permissions(target.get("permissions"))
    if (enc := target.get("encryption")) is not None:
        _parse_encryption(enc, vol)
    vol.compat = target.text("compat")
    if vol.compat is not None and not re.fullmatch(r"[0-9]{1,9}\.[0-9]{1,9}", vol.compat):
        raise InvalidArgument(f"malformed 'compat' element '{vol.compat[:32]}'")
    vol.nocow = target.get("nocow") is not None
    if (features := target.get("features")) is not None:
        names = {str(f.tag) for f in features if isinstance(f.tag, str)}
        unknown = names - set(FEATURES)
        if unknown:
            raise InvalidArgument(f"unsupported feature {sorted(unknown)[0][:64]}")
        vol.features = [f for f in FEATURES if f in names]
        vol.compat = vol.compat or "1.1"


def parse_volume_xml(text: str, pool_type: str = "dir") -> VolumeDefinition:
    """Parse a libvirt <volume> document for a pool of ``pool_type``.

    capacity may be missing (None): whoever creates the volume checks that.
    """
    if pool_type not in POOL_TYPES:
        raise InvalidArgument(f"unknown storage pool type '{str(pool_type)[:64]}'")
    root = parse_document(text, "volume XML")
    if root.tag != "volume":
        raise InvalidArgument(
            f"unexpected root element <{str(root.tag)[:64]}>, expecting <volume>")
    children = Children(root)
    name = children.text("name")
    if name is None:
        raise InvalidArgument("volume XML has no <name> element")
    vol = VolumeDefinition(name=validate_name(name, "volume name"))
    vtype = root.get("type")
    if vtype is not None and vtype not in VOLUME_TYPES:
        raise InvalidArgument(f"unknown volume type '{vtype[:64]}'")
    vol.type = vtype or default_volume_type(pool_type)
    vol.key = children.text("key")
    vol.capacity = _size(children, "capacity")
    vol.allocation = _size(children, "allocation")
    vol.physical = _size(children, "physical")
    target = Children(children.get("target"))
    _parse_target(target, vol)
    vol.format = _format(target, pool_type)
    backing = Children(children.get("backingStore"))
    bpath = backing.text("path")
    if bpath is not None:                # libvirt ignores a backingStore without a path
        vol.backing_store = BackingStore(
            path=bpath, format=_format(backing, pool_type),
            permissions=parse_permissions(backing.get("permissions")))
    return vol


def default_volume_type(pool_type: str) -> str:
    """The volume type libvirt reports for volumes of this pool type."""
    if pool_type in _BLOCK_POOLS:
        return "block"
    return "network" if pool_type in _NETWORK_POOLS else "file"


def _encryption_lines(vol: VolumeDefinition) -> list[str]:
    if vol.encryption_format is None:
        return []
    children: list[str] = []
    for s in vol.encryption_secrets:
        children += element("secret", [(k, s.get(k)) for k in ("type", "uuid", "usage")])
    if (c := vol.encryption_cipher) is not None:
        children += element("cipher", [(k, c.get(k)) for k in ("name", "size", "mode", "hash")])
    if (i := vol.encryption_ivgen) is not None:
        children += element("ivgen", [(k, i.get(k)) for k in ("name", "hash")])
    return element("encryption", [("format", vol.encryption_format)], children=children)


def format_volume_xml(vol: VolumeDefinition) -> str:
    """Write ``vol`` the way libvirt's virStorageVolDefFormat does."""
    body = element("name", text=vol.name)
    if vol.key is not None:
        body += element("key", text=vol.key)
    for tag in ("capacity", "allocation", "physical"):
        if getattr(vol, tag) is not None:
            body += element(tag, [("unit", "bytes")], text=getattr(vol, tag))
    target = element("path", text=vol.path) if vol.path is not None else []
    if vol.format is not None:
        target += element("format", [("type", vol.format)])
    target += format_permissions(vol.permissions)
    target += _encryption_lines(vol)           # libvirt writes encryption before compat
    if vol.compat is not None:
        target += element("compat", text=vol.compat)
    if vol.features is not None:
        target += element("features", children=[
            line for f in vol.features for line in element(f)])
    if vol.nocow:
        target += element("nocow")
    body += element("target", children=target, keep_open=True)
    if (b := vol.backing_store) is not None:
        lines = element("path", text=b.path)
        if b.format is not None:
            lines += element("format", [("type", b.format)])
        body += element("backingStore", children=lines + format_permissions(b.permissions))
    return "\n".join(element("volume", [("type", vol.type or "file")], children=body)) + "\n"
