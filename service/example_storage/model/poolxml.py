"""libvirt-compatible storage pool XML: parse into ``PoolDefinition`` and format back.

Follows libvirt's storage_conf.c: per-type source parts, defaults and checks, and the
element order and quoting of ``virStoragePoolDefFormat``.
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import InvalidArgument
from .definitions import (
    FS_NAMESPACE,
    POOL_TYPES,
    Permissions,
    PoolDefinition,
    PoolSource,
    PoolTarget,
    SourceAdapter,
    SourceAuth,
    SourceDevice,
    SourceHost,
)
from .names import validate_name, validate_uuid
from .xmlsafe import child_attr, child_text, element, parse_document

# Which <source> parts each pool type uses (libvirt's VIR_STORAGE_POOL_SOURCE_* flags).
SOURCE_PARTS: dict[str, frozenset[str]] = {
    "dir": frozenset(),
    "fs": frozenset({"device"}),
    "netfs": frozenset({"host", "dir"}),
    "logical": frozenset({"name", "device"}),
    "disk": frozenset({"device"}),
    "iscsi": frozenset({"host", "device", "initiator"}),
    "iscsi-direct": frozenset({"host", "device", "initiator"}),
    "scsi": frozenset({"adapter"}),
    "mpath": frozenset(),
    "rbd": frozenset({"host", "name"}),
    "sheepdog": frozenset({"host", "name"}),
    "gluster": frozenset({"host", "name", "dir"}),
    "zfs": frozenset({"name", "device"}),
    "vstorage": frozenset({"name"}),
}
# Network pools have no local target (no <target> on input or output).
NETWORK_TYPES = frozenset({"iscsi-direct", "rbd", "sheepdog", "gluster"})

_FS_FORMATS = ("auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2",
               "vfat", "hfs+", "xfs", "ocfs2", "vmfs")
POOL_FORMATS: dict[str, tuple[str, ...]] = {
    "fs": _FS_FORMATS,
    "netfs": ("auto", "nfs", "glusterfs", "cifs"),
    "disk": ("unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2"),
    "logical": ("unknown", "lvm2"),
}
DEFAULT_POOL_FORMAT = {"fs": "auto", "netfs": "auto", "disk": "unknown", "logical": "lvm2"}

_AUTH_TYPES = ("chap", "ceph")
_MAX_ID = 2**32 - 2
_WWN = re.compile(r"(0x)?[0-9a-fA-F]{16}")
_INT = re.compile(r"-?[0-9]{1,12}")


# --- permissions (shared with volxml) --------------------------------------------------

def _parse_id(el: etree._Element, tag: str) -> int | None:
    node = el.find(tag)
    if node is None:
        return None
    value = "".join(node.itertext()).strip()
    # decimal even with a leading zero ("0744" -> 744), like libvirt's XPath number()
    if not _INT.fullmatch(value) or not (int(value) == -1 or 0 <= int(value) <= _MAX_ID):
        raise InvalidArgument(f"malformed {tag} element '{value[:32]}'")
    return int(value)


def parse_permissions(el: etree._Element | None) -> Permissions | None:
    """Read a <permissions> element; None if absent or empty."""
    if el is None:
        return None
    mode = child_text(el, "mode")
    if mode is not None:
        mode = mode.strip()
        if not re.fullmatch(r"[0-7]{1,6}", mode) or int(mode, 8) > 0o777:
            raise InvalidArgument(f"malformed octal mode '{mode[:32]}'")
    perms = Permissions(
        mode=int(mode, 8) if mode is not None else None,
        owner=_parse_id(el, "owner"),
        group=_parse_id(el, "group"),
        label=child_text(el, "label"),
    )
    return None if perms == Permissions() else perms


def format_permissions(perms: Permissions | None) -> list[str]:
    """Lines of a <permissions> element (nothing when there is nothing to say)."""
    if perms is None or perms == Permissions():
        return []
    children: list[str] = []
    if perms.mode is not None:
        children += element("mode", text=f"0{perms.mode:o}")
    if perms.owner is not None:
        children += element("owner", text=perms.owner)
    if perms.group is not None:
        children += element("group", text=perms.group)
    if perms.label is not None:
        children += element("label", text=perms.label)
    return element("permissions", children=children)


def validate_permissions(perms: Permissions | None) -> None:
    if perms is None:
        return
    if perms.mode is not None and not 0 <= perms.mode <= 0o777:
        raise InvalidArgument(f"mode {perms.mode:o} is not between 0 and 0777")
    for what, value in (("owner", perms.owner), ("group", perms.group)):
        if value is not None and not (value == -1 or 0 <= value <= _MAX_ID):
            raise InvalidArgument(f"{what} {value} is out of range")


def sanitize_path(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one (except for '/')."""
    path = re.sub(r"/{2,}", "/", path)
    return path.rstrip("/") or ("/" if path.startswith("/") else path)


# --- parsing -----------------------------------------------------------------------------

def _parse_adapter(el: etree._Element) -> SourceAdapter:
    a = el.attrib
    atype = a.get("type")
    if atype is None:   # legacy form: only a name, meaning scsi_host
        if any(k in a for k in ("wwnn", "wwpn", "parent")) or el.find("parentaddr") is not None:
            raise InvalidArgument("adapter 'wwnn', 'wwpn', 'parent' and <parentaddr> need a type")
        return SourceAdapter(type="scsi_host" if a.get("name") else None, name=a.get("name"))
    if atype == "fc_host":
        managed = a.get("managed")
        if managed is not None and managed not in ("yes", "no"):
            raise InvalidArgument(f"invalid adapter managed value '{managed[:32]}'")
        return SourceAdapter(
            type=atype, parent=a.get("parent"), wwnn=a.get("wwnn"), wwpn=a.get("wwpn"),
            managed=managed, parent_wwnn=a.get("parent_wwnn"),
            parent_wwpn=a.get("parent_wwpn"), parent_fabric_wwn=a.get("parent_fabric_wwn"),
        )
    if atype == "scsi_host":
        return SourceAdapter(type=atype, name=a.get("name"),
                             parent_addr=_parse_parentaddr(el.find("parentaddr")))
    raise InvalidArgument(f"unknown pool adapter type '{atype[:64]}'")


def _parse_parentaddr(el: etree._Element | None) -> dict[str, str] | None:
    if el is None:
        return None
    addr = el.find("address")
    if addr is None:
        raise InvalidArgument("missing scsi_host PCI address element")
    uid = (el.get("unique_id") or "").strip()
    if not re.fullmatch(r"[0-9]{1,10}", uid) or int(uid) > 2**31 - 1:
        raise InvalidArgument("missing or invalid scsi adapter 'unique_id' value")
    out = {"unique_id": str(int(uid))}
    for key, limit, fmt in (("domain", 0xFFFFFFFF, "0x{:04x}"), ("bus", 0xFF, "0x{:02x}"),
                            ("slot", 0x1F, "0x{:02x}"), ("function", 7, "0x{:x}")):
        raw = (addr.get(key) or "0").strip()
        try:
            value = int(raw, 0) if len(raw) <= 12 else -1
        except ValueError:
            value = -1
        if not 0 <= value <= limit:
            raise InvalidArgument(f"invalid PCI address {key} '{raw[:32]}'")
        out[key] = fmt.format(value)
    return out


def _parse_auth(el: etree._Element) -> SourceAuth:
    atype, username = el.get("type"), el.get("username")
    if not username:
        raise InvalidArgument("missing username for auth")
    if atype is None or atype == "none":
        raise InvalidArgument("storage pool missing auth type")
    if atype not in _AUTH_TYPES:
        raise InvalidArgument(f"unknown auth type '{atype[:64]}'")
    secret = el.find("secret")
    if secret is None:
        raise InvalidArgument("missing <secret> element in auth")
    uuid, usage = secret.get("uuid"), secret.get("usage")
    if (uuid is None) == (usage is None):
        raise InvalidArgument("auth secret needs either a uuid or a usage attribute")
    return SourceAuth(type=atype, username=username,
                      secret_uuid=validate_uuid(uuid) if uuid is not None else None,
                      secret_usage=usage, secret_type=secret.get("type"))


def _parse_port(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip()
    if not re.fullmatch(r"[0-9]{1,5}", v) or int(v) > 65535:
        raise InvalidArgument(f"invalid port number '{value[:32]}'")
    return int(v) or None


def _parse_source(el: etree._Element, pool_type: str) -> PoolSource:
    src = PoolSource()
    for host in el.findall("host"):
        if not host.get("name"):
            raise InvalidArgument("missing storage pool host name")
        src.hosts.append(SourceHost(host.get("name"), _parse_port(host.get("port"))))
    for dev in el.findall("device"):
        if not dev.get("path"):
            raise InvalidArgument("missing storage pool source device path")
        sep = dev.get("part_separator")
        if sep is not None and sep not in ("yes", "no"):
            raise InvalidArgument(f"invalid part_separator setting '{sep[:32]}'")
        src.devices.append(SourceDevice(dev.get("path"), sep))   # freeExtent: output only
    src_dir = child_attr(el, "dir", "path")
    src.dir = sanitize_path(src_dir) if src_dir else None
    if (adapter := el.find("adapter")) is not None:
        src.adapter = _parse_adapter(adapter)
    src.name = child_text(el, "name")
    initiator = el.find("initiator")
    src.initiator_iqn = child_attr(initiator, "iqn", "name") if initiator is not None else None
    src.format = child_attr(el, "format", "type")
    if (auth := el.find("auth")) is not None:
        src.auth = _parse_auth(auth)
    ver = child_attr(el, "protocol", "ver")
    if ver is not None:
        if not re.fullmatch(r"[0-9]{1,9}", ver.strip()):
            raise InvalidArgument(f"storage pool protocol ver '{ver[:32]}' is malformed")
        src.protocol_ver = str(int(ver))
    src.vendor = child_attr(el, "vendor", "name")
    src.product = child_attr(el, "product", "name")
    return _restrict_source(src, pool_type)


def _restrict_source(src: PoolSource, pool_type: str) -> PoolSource:
    """Drop the parts this pool type does not use (libvirt never writes them back)."""
    parts = SOURCE_PARTS[pool_type]
    if "host" not in parts:
        src.hosts = []
    if "device" not in parts:
        src.devices = []
    if "dir" not in parts:
        src.dir = None
    if "adapter" not in parts:
        src.adapter = None
    if "name" not in parts:
        src.name = None
    if "initiator" not in parts:
        src.initiator_iqn = None
    if pool_type not in POOL_FORMATS:
        src.format = None
    return src


def _parse_mount_opts(root: etree._Element) -> list[str]:
    opts = []
    for opt in root.findall(f"{{{FS_NAMESPACE}}}mount_opts/{{{FS_NAMESPACE}}}option"):
        name = opt.get("name")
        if name is None:
            raise InvalidArgument("no fs mount option name specified")
        opts.append(name)
    return opts


def parse_pool_xml(text: str) -> PoolDefinition:
    """Parse and validate a libvirt <pool> document, applying libvirt's defaults."""
    root = parse_document(text, "pool XML")
    if root.tag != "pool":
        raise InvalidArgument(f"unexpected root element <{str(root.tag)[:64]}>, expecting <pool>")
    ptype = root.get("type")
    if ptype is None:
        raise InvalidArgument("pool XML has no type attribute")
    if ptype not in POOL_TYPES:
        raise InvalidArgument(f"unknown storage pool type '{ptype[:64]}'")
    parts = SOURCE_PARTS[ptype]
    src_el = root.find("source")
    source = _parse_source(src_el, ptype) if src_el is not None else PoolSource()

    name = child_text(root, "name")
    if name is None and "name" in parts:
        name = source.name
    if name is None:
        raise InvalidArgument("pool XML has no <name> element")
    validate_name(name, "pool name")
    uuid = child_text(root, "uuid")

    pool = PoolDefinition(type=ptype, name=name, source=source,
                          uuid=validate_uuid(uuid) if uuid is not None else None)
    # libvirt's per-type defaults
    if ptype in POOL_FORMATS and source.format is None:
        source.format = DEFAULT_POOL_FORMAT[ptype]
    if "name" in parts and source.name is None and ptype != "rbd":
        source.name = name
    if ptype == "gluster" and source.dir is None:
        source.dir = "/"
    if ptype not in NETWORK_TYPES:
        if ptype == "logical" and source.name:
            path = f"/dev/{source.name}"           # libvirt ignores any given path
        elif ptype == "zfs" and source.name:
            path = f"/dev/zvol/{source.name}"
        else:
            path = child_text(root, "target/path")
        pool.target = PoolTarget(path=sanitize_path(path) if path else None,
                                 permissions=parse_permissions(root.find("target/permissions")))
    if ptype in ("fs", "netfs"):
        pool.mount_opts = _parse_mount_opts(root)
    validate_pool_definition(pool)
    return pool


# --- validation --------------------------------------------------------------------------

def _validate_adapter(adapter: SourceAdapter | None) -> None:
    if adapter is None or adapter.type is None:
        raise InvalidArgument("missing storage pool source adapter")
    if adapter.type == "fc_host":
        if not adapter.wwnn or not adapter.wwpn:
            raise InvalidArgument("'wwnn' and 'wwpn' must be specified for adapter type 'fc_host'")
        if (adapter.parent_wwnn is None) != (adapter.parent_wwpn is None):
            raise InvalidArgument("adapter 'parent_wwnn' and 'parent_wwpn' go together")
        for wwn in (adapter.wwnn, adapter.wwpn, adapter.parent_wwnn, adapter.parent_wwpn,
                    adapter.parent_fabric_wwn):
            if wwn is not None and not _WWN.fullmatch(wwn):
                raise InvalidArgument(f"malformed WWN '{wwn[:32]}'")
    elif adapter.type == "scsi_host":
        if (adapter.name is None) == (adapter.parent_addr is None):
            raise InvalidArgument("a 'scsi_host' adapter needs either a name or a <parentaddr>")
    else:
        raise InvalidArgument(f"unknown pool adapter type '{adapter.type[:64]}'")


def validate_pool_definition(pool: PoolDefinition) -> None:
    """Raise InvalidArgument if ``pool`` is something libvirt would refuse to define."""
    if pool.type not in POOL_TYPES:
        raise InvalidArgument(f"unknown storage pool type '{str(pool.type)[:64]}'")
    validate_name(pool.name, "pool name")
    if pool.uuid is not None:
        validate_uuid(pool.uuid)
    src, parts, ptype = pool.source, SOURCE_PARTS[pool.type], pool.type
    if "host" in parts and not src.hosts:
        raise InvalidArgument(f"{ptype} pools need a source host")
    for host in src.hosts:
        if host.port is not None and not 0 < host.port <= 65535:
            raise InvalidArgument(f"invalid port number {host.port}")
    if "dir" in parts and not src.dir:
        raise InvalidArgument(f"{ptype} pools need a source dir path")
    if ptype == "rbd" and not src.name:
        raise InvalidArgument("element 'name' is mandatory for RBD pool")
    if ptype == "logical":
        validate_name(src.name or "", "volume group name")
    if "adapter" in parts:
        _validate_adapter(src.adapter)
    if ptype in ("fs", "disk", "iscsi", "iscsi-direct") and not src.devices:
        raise InvalidArgument(f"{ptype} pools need a source device")
    if ptype == "iscsi-direct" and not src.initiator_iqn:
        raise InvalidArgument("missing initiator IQN")
    if ptype in POOL_FORMATS and src.format not in POOL_FORMATS[ptype]:
        raise InvalidArgument(f"unknown {ptype} pool format type '{str(src.format)[:64]}'")
    if src.protocol_ver is not None and not (ptype == "netfs" and src.format in ("auto", "nfs")):
        raise InvalidArgument(f"protocol ver is not supported for pool format '{src.format}'")
    if ptype not in NETWORK_TYPES:
        if pool.target is None or not pool.target.path:
            raise InvalidArgument("missing storage pool target path")
        validate_permissions(pool.target.permissions)
    if pool.mount_opts and ptype not in ("fs", "netfs"):
        raise InvalidArgument("mount options are only valid for fs and netfs pools")
    for opt in pool.mount_opts:
        if not opt or "," in opt or any(ord(c) < 0x21 for c in opt):
            raise InvalidArgument(f"invalid mount option '{opt[:64]}'")


# --- formatting --------------------------------------------------------------------------

def _adapter_lines(a: SourceAdapter) -> list[str]:
    if a.type == "fc_host":
        return element("adapter", [
            ("type", a.type), ("parent", a.parent), ("parent_wwnn", a.parent_wwnn),
            ("parent_wwpn", a.parent_wwpn), ("parent_fabric_wwn", a.parent_fabric_wwn),
            ("managed", a.managed), ("wwnn", a.wwnn), ("wwpn", a.wwpn),
        ])
    if a.name is not None or not a.parent_addr:
        return element("adapter", [("type", a.type), ("name", a.name)])
    pa = a.parent_addr
    address = element("address", [(k, pa.get(k)) for k in ("domain", "bus", "slot", "function")])
    parentaddr = element("parentaddr", [("unique_id", pa.get("unique_id"))], children=address)
    return element("adapter", [("type", a.type)], children=parentaddr)


def _source_lines(src: PoolSource, pool_type: str, tag: str = "source") -> list[str]:
    parts = SOURCE_PARTS[pool_type]
    out: list[str] = []
    if "host" in parts:
        for h in src.hosts:
            out += element("host", [("name", h.name), ("port", h.port or None)])
    if "device" in parts:
        for d in src.devices:
            extents = [line for e in d.free_extents
                       for line in element("freeExtent", [("start", e.start), ("end", e.end)])]
            extents += [line for lun in d.luns for line in element("lun", [
                ("number", lun.number), ("size", lun.size), ("wwn", lun.wwn or None),
                ("serial", lun.serial or None)])]
            out += element("device", [("path", d.path), ("part_separator", d.part_separator)],
                           children=extents)
    if "dir" in parts and src.dir is not None:
        out += element("dir", [("path", src.dir)])
    if "adapter" in parts and src.adapter is not None and src.adapter.type:
        out += _adapter_lines(src.adapter)
    if "name" in parts and src.name is not None:
        out += element("name", text=src.name)
    if "initiator" in parts and src.initiator_iqn is not None:
        out += element("initiator", children=element("iqn", [("name", src.initiator_iqn)]))
    if pool_type in POOL_FORMATS:
        out += element("format", [("type", src.format or DEFAULT_POOL_FORMAT[pool_type])])
    if src.auth is not None:
        au = src.auth
        secret = element("secret", [("type", au.secret_type), ("uuid", au.secret_uuid),
                                    ("usage", au.secret_usage)])
        out += element("auth", [("type", au.type), ("username", au.username)], children=secret)
    if src.protocol_ver is not None:
        out += element("protocol", [("ver", src.protocol_ver)])
    if src.vendor is not None:
        out += element("vendor", [("name", src.vendor)])
    if src.product is not None:
        out += element("product", [("name", src.product)])
    return element(tag, children=out, keep_open=True)


def _check_type(pool_type: str) -> None:
    if pool_type not in POOL_TYPES:
        raise InvalidArgument(f"unknown storage pool type '{str(pool_type)[:64]}'")


def format_pool_xml(pool: PoolDefinition) -> str:
    """Write ``pool`` the way libvirt's virStoragePoolDefFormat does."""
    _check_type(pool.type)
    body = element("name", text=pool.name)
    if pool.uuid is not None:
        body += element("uuid", text=pool.uuid)
    for tag in ("capacity", "allocation", "available"):
        body += element(tag, [("unit", "bytes")], text=getattr(pool, tag))
    body += _source_lines(pool.source, pool.type)
    if pool.type not in NETWORK_TYPES:
        target = pool.target or PoolTarget()
        tlines = element("path", text=target.path) if target.path is not None else []
        tlines += format_permissions(target.permissions)
        body += element("target", children=tlines, keep_open=True)
    attrs: list[tuple[str, object]] = [("type", pool.type)]
    if pool.mount_opts:
        attrs.append(("xmlns:fs", FS_NAMESPACE))
        opts = [line for o in pool.mount_opts for line in element("fs:option", [("name", o)])]
        body += element("fs:mount_opts", children=opts)
    return "\n".join(element("pool", attrs, children=body)) + "\n"


def parse_source_xml(text: str, pool_type: str) -> PoolSource | None:
    """A FindPoolSources hint: a lone ``<source>`` element (empty text: no hint)."""
    _check_type(pool_type)
    if not text.strip():
        return None
    root = parse_document(text, "source XML")
    if root.tag != "source":
        raise InvalidArgument(f"expected a <source> element, not <{str(root.tag)[:32]}>")
    return _parse_source(root, pool_type)


def format_pool_sources_xml(sources: list[PoolSource], pool_type: str) -> str:
    """libvirt's <sources> list (FindPoolSources output) for pools of ``pool_type``."""
    _check_type(pool_type)
    body = [line for src in sources for line in _source_lines(src, pool_type)]
    return "\n".join(element("sources", children=body, keep_open=True)) + "\n"
