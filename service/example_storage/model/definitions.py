"""Plain data for pools and volumes, in libvirt's storage model.

Fields mirror libvirt's pool/volume XML; ``poolxml``/``volxml`` read and write them.
Sizes are always bytes. ``None`` means "not given" (the XML omits the element).
"""

from __future__ import annotations

from dataclasses import dataclass, field

POOL_TYPES = (
    "dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct", "scsi", "mpath",
    "rbd", "sheepdog", "gluster", "zfs", "vstorage",
)

FS_NAMESPACE = "http://libvirt.org/schemas/storagepool/fs/1.0"


@dataclass
class Permissions:
    mode: int | None = None          # e.g. 0o700
    owner: int | None = None         # uid; -1 means "the daemon's"
    group: int | None = None         # gid; -1 means "the daemon's"
    label: str | None = None         # SELinux label, kept verbatim


@dataclass
class SourceHost:
    name: str
    port: int | None = None


@dataclass
class FreeExtent:
    start: int
    end: int


@dataclass
class SourceLun:
    """A LUN of an iSCSI target, as FindPoolSources with a target reports it (output only;
    an extension of libvirt's source list: <lun number= size= wwn= serial=/>)."""

    number: int
    size: int                              # bytes (READ CAPACITY 16)
    wwn: str = ""                          # VPD 0x83 NAA/EUI-64 designator, hex
    serial: str = ""                       # VPD 0x80 unit serial number


@dataclass
class SourceDevice:
    path: str
    part_separator: str | None = None     # 'yes'/'no' (disk pools)
    free_extents: list[FreeExtent] = field(default_factory=list)  # output only (disk pools)
    luns: list[SourceLun] = field(default_factory=list)  # output only (iSCSI discovery)


@dataclass
class SourceAdapter:
    """<adapter type='scsi_host' name=.../> or type='fc_host' with parent/wwnn/wwpn."""

    type: str | None = None               # 'scsi_host' | 'fc_host'
    name: str | None = None
    parent: str | None = None
    wwnn: str | None = None
    wwpn: str | None = None
    managed: str | None = None
    parent_wwnn: str | None = None
    parent_wwpn: str | None = None
    parent_fabric_wwn: str | None = None
    # <parentaddr unique_id=..><address domain=.. bus=.. slot=.. function=../>
    parent_addr: dict[str, str] | None = None


@dataclass
class SourceAuth:
    type: str                              # 'chap' | 'ceph'
    username: str
    secret_uuid: str | None = None
    secret_usage: str | None = None
    secret_type: str | None = None        # <secret type=...> (optional, kept verbatim)


@dataclass
class PoolSource:
    hosts: list[SourceHost] = field(default_factory=list)
    devices: list[SourceDevice] = field(default_factory=list)
    dir: str | None = None
    adapter: SourceAdapter | None = None
    name: str | None = None
    initiator_iqn: str | None = None
    format: str | None = None
    auth: SourceAuth | None = None
    protocol_ver: str | None = None
    vendor: str | None = None
    product: str | None = None


@dataclass
class PoolTarget:
    path: str | None = None
    permissions: Permissions | None = None


@dataclass
class PoolDefinition:
    type: str
    name: str
    uuid: str | None = None
    source: PoolSource = field(default_factory=PoolSource)
    target: PoolTarget | None = None
    mount_opts: list[str] = field(default_factory=list)   # <fs:mount_opts><fs:option name=.../>
    # Runtime figures, written by GetXMLDesc; ignored on input (libvirt does the same).
    capacity: int = 0
    allocation: int = 0
    available: int = 0


@dataclass
class BackingStore:
    path: str
    format: str | None = None
    permissions: Permissions | None = None


@dataclass
class VolumeDefinition:
    name: str
    type: str | None = None                # 'file' | 'block' | 'dir' | 'network' | 'netdir'
    key: str | None = None
    capacity: int | None = None
    allocation: int | None = None
    physical: int | None = None
    path: str | None = None
    format: str | None = None              # raw, qcow2, none, linux, ...
    permissions: Permissions | None = None
    compat: str | None = None              # qcow2 compat level
    # qcow2 features (e.g. ['lazy_refcounts']); [] = <features/>
    features: list[str] | None = None
    nocow: bool = False
    encryption_format: str | None = None
    encryption_secrets: list[dict[str, str]] = field(default_factory=list)
    encryption_cipher: dict[str, str] | None = None   # <cipher name= size= mode= hash=/>
    encryption_ivgen: dict[str, str] | None = None    # <ivgen name= hash=/>
    backing_store: BackingStore | None = None
    serial: str | None = None              # a LUN's unit serial (VPD 0x80); not in the XML
