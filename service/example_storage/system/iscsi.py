"""Userspace iSCSI through libiscsi: discovery with ``iscsi-ls`` (Debian libiscsi-bin),
exact sizes with ``iscsi-readcapacity16``, serials with ``iscsi-inq``, and a whole
target's LUNs at once through the libiscsi probe (system/iscsi_probe.py, run as its own
process: iscsi-inq prints the VPD 0x83 NAA designator as raw bytes).

CHAP secrets never go into argv (``/proc/*/cmdline`` is world-readable): the user
name is part of the URL, the password travels in ``LIBISCSI_CHAP_PASSWORD``.
The parsers are pure functions tested on captured real output.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field

from ..errors import AuthFailed, CommandFailed, Failed, InvalidArgument
from .runner import run_command

ISCSI_LS = "iscsi-ls"
ISCSI_INQ = "iscsi-inq"
ISCSI_READCAPACITY16 = "iscsi-readcapacity16"
PASSWORD_ENV = "LIBISCSI_CHAP_PASSWORD"
DEFAULT_PORT = 3260
DEFAULT_INITIATOR = "iqn.2026-11.org.example.storage:initiator"
TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: bytes = field(repr=False)   # never shown by repr()


@dataclass
class DiscoveredTarget:
    iqn: str
    portal: str          # host:port as the target advertises it
    tpgt: int | None = None


@dataclass
class Designator:
    type: int            # 3 = NAA, 2 = EUI-64, 1 = T10 vendor id, 8 = SCSI name
    code_set: int        # 1 binary, 2 ascii, 3 utf-8
    association: int     # 0 = the logical unit
    hex: str
    text: str = ""


@dataclass
class Lun:
    number: int
    size: int
    block_size: int
    serial: str = ""
    designators: list[Designator] = field(default_factory=list)

    @property
    def wwn(self) -> str:
        """The LU's NAA (or EUI-64) designator as lower-case hex, '' when it has none."""
        return pick_wwn(self.designators)


# -- validation and URLs -------------------------------------------------------
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")
_IQN_RE = re.compile(r"^(iqn\.|eui\.|naa\.)[A-Za-z0-9.\-:]{1,220}$")
_USER_RE = re.compile(r"^[A-Za-z0-9._\-@]{1,128}$")


def portal_of(host: str, port: int | None) -> str:
    if not _HOST_RE.match(host or ""):
        raise InvalidArgument(f"invalid iSCSI portal host '{(host or '')[:64]}'")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"          # IPv6
    return f"{host}:{port or DEFAULT_PORT}"


def validate_iqn(iqn: str, what: str = "target") -> str:
    if not _IQN_RE.match(iqn or ""):
        raise InvalidArgument(f"invalid iSCSI {what} name '{(iqn or '')[:64]}'")
    return iqn


def iscsi_url(portal: str, target: str | None = None, lun: int | None = None,
              username: str | None = None) -> str:
    """libiscsi URL; carries the CHAP user name, never the password."""
    user = ""
    if username:
        if not _USER_RE.match(username):
            raise InvalidArgument("invalid CHAP user name")
        user = f"{username}@"
    url = f"iscsi://{user}{portal}/"
    if target:
        url += validate_iqn(target)
        if lun is not None:
            url += f"/{int(lun)}"
    return url


def _env(creds: Credentials | None) -> dict[str, str] | None:
    if creds is None:
        return None
    try:
        return {PASSWORD_ENV: creds.password.decode()}
    except UnicodeDecodeError:
        raise InvalidArgument("the CHAP secret must be text (UTF-8)") from None


# -- pure parsers ----------------------------------------------------------------
_TARGET_LINE = re.compile(r"^Target:(?P<iqn>\S+)\s+Portal:(?P<portal>\S+?)(?:,(?P<tpgt>\d+))?$")


def parse_iscsi_ls(text: str) -> list[DiscoveredTarget]:
    """``iscsi-ls iscsi://HOST:PORT/`` → the targets, in the order printed."""
    out: list[DiscoveredTarget] = []
    for line in text.splitlines():
        m = _TARGET_LINE.match(line.strip())
        if m:
            tpgt = int(m["tpgt"]) if m["tpgt"] else None
            out.append(DiscoveredTarget(m["iqn"], m["portal"], tpgt))
    return out


def parse_readcapacity16(text: str) -> tuple[int, int]:
    """``iscsi-readcapacity16`` output → (size in bytes, logical block size)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        block = int(fields["LOGICAL BLOCK LENGTH IN BYTES"])
        lba = int(fields["RETURNED LOGICAL BLOCK ADDRESS"])
    except (KeyError, ValueError):
        raise Failed("unexpected iscsi-readcapacity16 output") from None
    return (lba + 1) * block, block


def parse_unit_serial(text: str) -> str:
    """``iscsi-inq -e 1 -c 128`` → the unit serial number (VPD 0x80), trimmed."""
    m = re.search(r"Unit Serial Number:\[(.*)\]", text)
    return m.group(1).strip() if m else ""


def printable(text: str) -> str:
    """``text`` without control characters (a target's serial goes into XML and D-Bus)."""
    return "".join(c for c in text if c.isprintable()).strip()


def pick_wwn(designators: list[Designator]) -> str:
    """The logical unit's WWN: its NAA designator (the longest, e.g. NAA 6 over NAA 3),
    else EUI-64; lower-case hex without prefix; '' when there is none."""
    for kind in (3, 2):
        found = [d for d in designators if d.type == kind and d.association == 0 and d.hex]
        if found:
            return max(found, key=lambda d: len(d.hex)).hex.lower()
    return ""


def parse_probe_output(text: str) -> list[Lun]:
    """The JSON of system/iscsi_probe.py → the target's disk LUNs (a LUN that does not
    answer READ CAPACITY 16, such as tgtd's controller LUN 0, is left out)."""
    try:
        data = json.loads(text)
        luns = []
        for item in data["luns"]:
            if item.get("size") is None:
                continue
            luns.append(Lun(
                number=int(item["lun"]), size=int(item["size"]),
                block_size=int(item["block_size"]),
                serial=printable(str(item.get("serial") or "")),
                designators=[Designator(int(d["type"]), int(d["code_set"]),
                                        int(d["association"]), str(d["hex"]),
                                        str(d.get("text") or "").rstrip("\0"))
                             for d in item.get("designators", [])],
            ))
        return sorted(luns, key=lambda lun: lun.number)
    except (ValueError, KeyError, TypeError):
        raise Failed("unexpected output from the iSCSI probe") from None


# -- wrappers --------------------------------------------------------------------
async def discover(portal: str, creds: Credentials | None = None,
                   initiator: str = DEFAULT_INITIATOR) -> list[DiscoveredTarget]:
    """SendTargets discovery on ``portal`` (host:port)."""
    argv = [ISCSI_LS, "-i", validate_iqn(initiator, "initiator"),
            iscsi_url(portal, username=creds.username if creds else None)]
    try:
        res = await run_command(argv, timeout=TIMEOUT, env=_env(creds))
    except CommandFailed as e:
        raise Failed(f"iSCSI discovery on {portal} failed: {e.message}") from None
    return parse_iscsi_ls(res.stdout)


async def target_luns(portal: str, target: str, creds: Credentials | None = None,
                      initiator: str = DEFAULT_INITIATOR) -> list[Lun]:
    """Log in to ``target`` and list its disk LUNs with exact size, serial and WWN.
    Raises AuthFailed when the target refuses the CHAP login."""
    argv = [sys.executable, "-m", "example_storage.system.iscsi_probe",
            portal, validate_iqn(target), validate_iqn(initiator, "initiator")]
    if creds is not None:
        argv.append(creds.username)
    res = await run_command(argv, timeout=TIMEOUT, env=_env(creds), check=False)
    if res.returncode == 0:
        return parse_probe_output(res.stdout)
    try:
        err = str(json.loads(res.stdout).get("error", ""))
    except ValueError:
        err = res.stderr.strip()[-500:]
    if res.returncode == 2:
        hint = "no CHAP credentials were given" if creds is None else \
            "check the CHAP user name and secret"
        raise AuthFailed(f"iSCSI login to {target} at {portal} refused: {err} ({hint})")
    raise Failed(f"iSCSI login to {target} at {portal} failed: {err}")


async def read_capacity(portal: str, target: str, lun: int,
                        creds: Credentials | None = None) -> tuple[int, int]:
    argv = [ISCSI_READCAPACITY16,
            iscsi_url(portal, target, lun, creds.username if creds else None)]
    res = await run_command(argv, timeout=TIMEOUT, env=_env(creds))
    return parse_readcapacity16(res.stdout)


async def unit_serial(portal: str, target: str, lun: int,
                      creds: Credentials | None = None) -> str:
    argv = [ISCSI_INQ, "-e", "1", "-c", "128",
            iscsi_url(portal, target, lun, creds.username if creds else None)]
    res = await run_command(argv, timeout=TIMEOUT, env=_env(creds))
    return parse_unit_serial(res.stdout)
