"""SCSI hosts (HBAs, iSCSI sessions, scsi_debug) and their logical units, from sysfs.

No udev and no tools: a host is ``/sys/class/scsi_host/hostN`` (its device directory is
where its targets and LUNs live), an FC port is ``/sys/class/fc_host/hostN`` (WWNN in
``node_name``, WWPN in ``port_name``), a LUN is ``/sys/bus/scsi/devices/H:C:T:L`` with
its SCSI peripheral ``type``, identity (``vpd_pg83`` / ``wwid``, ``vpd_pg80``) and, once
a driver (sd, sr) has bound, its block device in ``block/``. A rescan is a write of
"- - -" to the host's ``scan`` attribute.

Everything is read below ``root`` (default ``/``) so that tests can point a reader at a
captured tree; umockdev's preload library redirects ``/sys`` unchanged. The parsers are
pure functions, tested on trees captured in the VM lane's guest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .iscsi import Designator, pick_wwn
from .sysfs import SECTOR, list_dir, parse_int, parse_uevent, parse_vpd_pg80, read_attr

# SCSI peripheral device types that become volumes (as libvirt: disks and CD/DVD drives).
TYPE_DISK = 0
TYPE_ROM = 5
VOLUME_TYPES = (TYPE_DISK, TYPE_ROM)

_HOST_NAME = re.compile(r"^(?:scsi_)?host(\d{1,9})$")
_ADDRESS = re.compile(r"^(\d{1,9}):(\d{1,9}):(\d{1,9}):(\d{1,20})$")
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_WWN_HEX = re.compile(r"^(?:0x)?([0-9a-fA-F]{16})$")


@dataclass(frozen=True)
class FcHost:
    """The Fibre Channel side of a SCSI host; WWNs as 16 lower-case hex digits."""

    node_name: str          # WWNN
    port_name: str          # WWPN
    fabric_name: str = ""
    port_state: str = ""    # Online, Linkdown, ...
    parent: str = ""        # "host5" when this is a vHBA (NPIV vport) on host5, else ""
    vport_capable: bool = False


@dataclass(frozen=True)
class ScsiHost:
    name: str               # "host3"
    number: int
    proc_name: str = ""     # its driver: "scsi_debug", "iscsi_tcp", "lpfc"
    unique_id: int | None = None
    pci_address: str = ""   # "0000:00:10.0" of the PCI device it belongs to, "" if none
    device_dir: str = ""    # its device directory (the realpath), where its LUNs live
    fc: FcHost | None = None


@dataclass(frozen=True)
class ScsiLun:
    """One logical unit (H:C:T:L) with what sysfs tells about it."""

    host: int
    channel: int
    target: int
    lun: int
    device_type: int        # SCSI peripheral device type: 0 disk, 5 CD/DVD, 12 RAID ctrl
    block: str = ""         # kernel name of its block device ("sdc"), "" when none
    devname: str = ""       # the block device's node below /dev ("sdc")
    size: int = 0           # bytes
    wwn: str = ""           # NAA (or EUI-64) designator, lower-case hex; "" when none
    serial: str = ""
    vendor: str = ""
    model: str = ""
    state: str = ""         # running, offline, blocked...

    @property
    def address(self) -> str:
        return f"{self.host}:{self.channel}:{self.target}:{self.lun}"

    @property
    def node(self) -> str:
        return "/dev/" + self.devname if self.devname else ""

    @property
    def volume_name(self) -> str:
        """libvirt's name for a LUN volume: 'unit:BUS:TARGET:LUN'."""
        return f"unit:{self.channel}:{self.target}:{self.lun}"


# -- pure parsers -----------------------------------------------------------------------
def parse_host_name(name: str) -> int | None:
    """'host3' (or libvirt's 'scsi_host3') -> 3; None when it is not a host name."""
    m = _HOST_NAME.match(name or "")
    return int(m.group(1)) if m else None


def parse_scsi_address(text: str) -> tuple[int, int, int, int] | None:
    """'2:0:0:1' -> (2, 0, 0, 1); None for anything else ('target2:0:0', 'host2')."""
    m = _ADDRESS.match(text or "")
    return (int(m[1]), int(m[2]), int(m[3]), int(m[4])) if m else None


def normalize_wwn(text: str) -> str:
    """An FC WWN ('0x20000000C9831B4B' or '20000000c9831b4b') as 16 lower-case hex
    digits; '' when it is not one."""
    m = _WWN_HEX.match((text or "").strip())
    return m.group(1).lower() if m else ""


def format_pci_address(parent_addr: dict[str, str]) -> str:
    """The <parentaddr><address domain= bus= slot= function=/> of pool XML (as
    model/poolxml.py keeps it: '0x0000', '0x00', '0x10', '0x0') as sysfs spells a PCI
    device: '0000:00:10.0'."""
    def num(key: str) -> int:
        return int(str(parent_addr.get(key) or "0"), 0)

    return f"{num('domain'):04x}:{num('bus'):02x}:{num('slot'):02x}.{num('function'):x}"


def pci_address_of(device_dir: str) -> str:
    """The innermost PCI device in a sysfs device path ('/sys/devices/pci0000:00/
    0000:00:10.0/host3' -> '0000:00:10.0'); '' when the host is not on PCI."""
    found = ""
    for part in device_dir.split("/"):
        if _PCI_ADDRESS.match(part):
            found = part
    return found


def fc_parent_of(device_dir: str) -> str:
    """The SCSI host an FC vport (vHBA) was created on: in '/sys/devices/pci.../host5/
    vport-5:0-0/host7' that is 'host5'; '' for a physical HBA."""
    parts = [p for p in device_dir.split("/") if p]
    hosts = [p for p in parts[:-1] if parse_host_name(p) is not None and p.startswith("host")]
    return hosts[-1] if hosts else ""


def parse_vpd_pg83(data: bytes) -> list[Designator]:
    """The designators of a SCSI VPD page 0x83 (Device Identification), as sysfs'
    ``vpd_pg83`` holds it: binary ones as hex, text ones (code set 2/3) also as text."""
    if len(data) < 4 or data[1] != 0x83:
        return []
    end = min(len(data), 4 + int.from_bytes(data[2:4], "big"))
    out: list[Designator] = []
    i = 4
    while i + 4 <= end:
        code_set = data[i] & 0x0F
        association = (data[i + 1] >> 4) & 0x03
        kind = data[i + 1] & 0x0F
        length = data[i + 3]
        body = data[i + 4 : i + 4 + length]
        if len(body) < length:
            break
        text = body.decode("ascii", "replace").rstrip("\0 ") if code_set in (2, 3) else ""
        out.append(Designator(kind, code_set, association, body.hex(), text))
        i += 4 + length
    return out


def wwn_from_wwid(wwid: str) -> str:
    """sysfs' ``wwid`` ('naa.600a0b80...', 'eui.0025388...') -> lower-case hex; '' for
    identifiers that are not a WWN ('t10.ATA ...')."""
    text = (wwid or "").strip()
    for prefix in ("naa.", "eui."):
        if text.lower().startswith(prefix):
            hexpart = text[len(prefix):].lower()
            return hexpart if re.fullmatch(r"[0-9a-f]{8,64}", hexpart) else ""
    return ""


# -- the reader ---------------------------------------------------------------------------
class ScsiSysfs:
    """SCSI hosts and LUNs below ``root``."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    # -- hosts ------------------------------------------------------------------------
    def host_names(self) -> list[str]:
        names = [n for n in list_dir(self.sys / "class" / "scsi_host")
                 if parse_host_name(n) is not None]
        return sorted(names, key=lambda n: parse_host_name(n) or 0)

    def hosts(self) -> list[ScsiHost]:
        found = (self.host(name) for name in self.host_names())
        return [h for h in found if h is not None]

    def host(self, name: str) -> ScsiHost | None:
        """The host 'hostN' (or 'scsi_hostN'); None when there is no such host."""
        number = parse_host_name(name)
        if number is None:
            return None
        name = f"host{number}"
        class_dir = self.sys / "class" / "scsi_host" / name
        if not class_dir.exists():
            return None
        device_dir = _realpath(class_dir / "device")
        return ScsiHost(
            name=name,
            number=number,
            proc_name=read_attr(class_dir / "proc_name"),
            unique_id=parse_int(read_attr(class_dir / "unique_id")),
            pci_address=pci_address_of(device_dir),
            device_dir=device_dir,
            fc=self._fc(name),
        )

    def _fc(self, name: str) -> FcHost | None:
        fc_dir = self.sys / "class" / "fc_host" / name
        if not fc_dir.exists():
            return None
        device_dir = _realpath(self.sys / "class" / "scsi_host" / name / "device")
        return FcHost(
            node_name=normalize_wwn(read_attr(fc_dir / "node_name")),
            port_name=normalize_wwn(read_attr(fc_dir / "port_name")),
            fabric_name=normalize_wwn(read_attr(fc_dir / "fabric_name")),
            port_state=read_attr(fc_dir / "port_state"),
            parent=fc_parent_of(device_dir),
            vport_capable=(fc_dir / "vport_create").exists(),
        )

    def find_by_parentaddr(self, pci_address: str, unique_id: int) -> ScsiHost | None:
        """The host on PCI device ``pci_address`` with ``unique_id`` (libvirt's
        <parentaddr>: a name that survives reboots, unlike 'hostN')."""
        for host in self.hosts():
            if host.pci_address == pci_address and host.unique_id == unique_id:
                return host
        return None

    def find_fc_host(self, wwnn: str, wwpn: str) -> ScsiHost | None:
        """The FC host whose port has these WWNN and WWPN (any spelling)."""
        wwnn, wwpn = normalize_wwn(wwnn), normalize_wwn(wwpn)
        for name in sorted(list_dir(self.sys / "class" / "fc_host")):
            host = self.host(name)
            if host is not None and host.fc is not None and \
                    (host.fc.node_name, host.fc.port_name) == (wwnn, wwpn):
                return host
        return None

    # -- LUNs -------------------------------------------------------------------------
    def lun_addresses(self, host: int) -> list[str]:
        """'H:C:T:L' of every SCSI device on host number ``host``, in LUN order."""
        found = []
        for name in list_dir(self.sys / "bus" / "scsi" / "devices"):
            address = parse_scsi_address(name)
            if address is not None and address[0] == host:
                found.append((address, name))
        return [name for _, name in sorted(found)]

    def luns(self, host: int) -> list[ScsiLun]:
        found = (self.lun(address) for address in self.lun_addresses(host))
        return [lun for lun in found if lun is not None]

    def lun(self, address: str) -> ScsiLun | None:
        """The SCSI device 'H:C:T:L'; None when it does not exist (any more)."""
        parsed = parse_scsi_address(address)
        if parsed is None:
            return None
        dev = self.sys / "bus" / "scsi" / "devices" / address
        kind = parse_int(read_attr(dev / "type"))
        if kind is None:
            return None
        block = next(iter(list_dir(dev / "block")), "")
        uevent = parse_uevent(read_attr(dev / "block" / block / "uevent")) if block else {}
        size = (parse_int(read_attr(dev / "block" / block / "size")) or 0) * SECTOR if block else 0
        try:
            designators = parse_vpd_pg83((dev / "vpd_pg83").read_bytes())
        except OSError:
            designators = []
        try:
            serial = parse_vpd_pg80((dev / "vpd_pg80").read_bytes())
        except OSError:
            serial = ""
        host, channel, target, lun = parsed
        return ScsiLun(
            host=host, channel=channel, target=target, lun=lun, device_type=kind,
            block=block, devname=(uevent.get("DEVNAME") or block) if block else "",
            size=size,
            wwn=pick_wwn(designators) or wwn_from_wwid(read_attr(dev / "wwid")),
            serial=serial,
            vendor=read_attr(dev / "vendor"),
            model=read_attr(dev / "model"),
            state=read_attr(dev / "state"),
        )

    # -- actions ----------------------------------------------------------------------
    def scan_path(self, host: str) -> Path:
        return self.sys / "class" / "scsi_host" / host / "scan"

    def rescan(self, host: str) -> None:
        """Ask the kernel to scan every channel, target and LUN of ``host``; returns
        when the scan is done (blocking: call it from a thread). OSError passes."""
        if parse_host_name(host) is None:
            raise ValueError(f"not a SCSI host name: {host!r}")
        fd = os.open(self.scan_path(f"host{parse_host_name(host)}"), os.O_WRONLY)
        try:
            os.write(fd, b"- - -")
        finally:
            os.close(fd)


def stable_link(directory: str, node: str) -> str:
    """A link in ``directory`` (e.g. /dev/disk/by-path) that resolves to the device node
    ``node``; '' when there is none (no udevd: no /dev/disk at all)."""
    if not node:
        return ""
    target = os.path.realpath(node)
    for entry in sorted(list_dir(Path(directory))):
        link = os.path.join(directory, entry)
        if os.path.islink(link) and os.path.realpath(link) == target:
            return link
    return ""


def _realpath(path: Path) -> str:
    try:
        return os.path.realpath(path)
    except OSError:
        return ""
