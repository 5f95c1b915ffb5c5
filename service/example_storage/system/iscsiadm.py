"""The kernel iSCSI initiator: open-iscsi's ``iscsiadm`` (node records, login, logout,
rescan) and the sessions the kernel shows in sysfs.

iscsiadm talks to ``iscsid`` over an abstract unix socket; without a running iscsid a
login fails, so callers check ``iscsid_running()`` first and say so.

CHAP secrets never go into argv (``/proc/*/cmdline`` is world-readable) and iscsiadm
takes a value only as ``-v VALUE``: the user name and method are set with iscsiadm, the
password is written into the node record file itself (``set_record_password``: below
iscsid's node dir, mode 0600, atomically), from where iscsiadm reads it at login and
hands it to iscsid over its socket.

Node records: ``iscsiadm -m node -o new`` without a portal group tag writes the
"old style" file ``<db>/nodes/<IQN>/<ADDR>,<PORT>``; records with a tag are
``<db>/nodes/<IQN>/<ADDR>,<PORT>,<TPGT>/<IFACE>``. Both are found by their content.
The parsers are pure functions, tested on captured records and sysfs trees.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthFailed, Failed, InvalidArgument, NotFound
from .runner import run_command
from .sysfs import list_dir, parse_int, read_attr

ISCSIADM = "iscsiadm"
ISCSID = "iscsid"
DB_ROOT = "/etc/iscsi"              # Debian's open-iscsi: nodes/, ifaces/, iscsid.conf
IPC_SOCKET = "\0ISCSIADM_ABSTRACT_NAMESPACE"
TIMEOUT = 60.0
LOGIN_TIMEOUT = 150.0
MAX_SECRET = 255
IFACE_PREFIX = "estorage-"          # the ifaces our pools with an <initiator> create

# iscsiadm's exit codes (open-iscsi's iscsi_err.h) that callers act on
ERR_SESS_EXISTS = 15
ERR_ISCSID_NOTCONN = 20
ERR_NO_OBJS_FOUND = 21
ERR_LOGIN_AUTH_FAILED = 24

_IFACE_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_PASSWORD_LINE = re.compile(r"^\s*node\.session\.auth\.password\s*=")


class IscsidNotRunning(Failed):
    """iscsid, which the kernel initiator needs, does not run."""


@dataclass(frozen=True)
class IscsiSession:
    """One kernel iSCSI session (/sys/class/iscsi_session/sessionN)."""

    sid: int
    target: str
    address: str = ""       # the portal it is connected to
    port: int | None = None
    iface: str = ""         # open-iscsi iface name ("default")
    initiator: str = ""
    state: str = ""         # LOGGED_IN, FAILED, FREE
    host: int | None = None  # its SCSI host number (hostN)


# -- iscsid --------------------------------------------------------------------------------
def iscsid_running() -> bool:
    """Whether iscsid listens on its control socket (what iscsiadm connects to)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(IPC_SOCKET)
        except OSError:
            return False
    return True


def require_iscsid() -> None:
    if not iscsid_running():
        raise IscsidNotRunning(
            "the open-iscsi daemon iscsid is not running; start it (iscsid, or "
            "systemctl start iscsid) and try again")


# -- pure helpers ------------------------------------------------------------------------
def iface_name_for(initiator: str) -> str:
    """The open-iscsi iface that carries initiator name ``initiator`` for our pools."""
    return IFACE_PREFIX + hashlib.sha256(initiator.encode()).hexdigest()[:12]


def validate_iface(name: str) -> str:
    if not _IFACE_RE.match(name or ""):
        raise InvalidArgument(f"invalid iSCSI iface name '{(name or '')[:64]}'")
    return name


def chap_secret_text(secret: bytes) -> str:
    """The CHAP secret as the text a node record can hold (one line, no surrounding
    blanks: iscsiadm's record parser would lose them)."""
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the CHAP secret must be text (UTF-8)") from None
    if not text or len(secret) > MAX_SECRET:
        raise InvalidArgument(f"the CHAP secret must be 1 to {MAX_SECRET} bytes")
    if text != text.strip() or any(not c.isprintable() for c in text):
        raise InvalidArgument("the CHAP secret must be printable text without leading or "
                              "trailing blanks")
    return text


def parse_node_record(text: str) -> dict[str, str]:
    """An iscsiadm node (or iface) record file: 'name = value' lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


def with_password(text: str, secret: str) -> str:
    """A node record with its CHAP password set to ``secret`` (any old one dropped)."""
    lines = [line for line in text.splitlines() if not _PASSWORD_LINE.match(line)]
    entry = f"node.session.auth.password = {secret}"
    for i, line in enumerate(lines):
        if line.strip() == "# END RECORD":
            lines.insert(i, entry)
            break
    else:
        lines.append(entry)
    return "\n".join(lines) + "\n"


def same_address(a: str, b: str) -> bool:
    """Two portal addresses are the same host (IPv6 spelled either way)."""
    a, b = a.strip("[]"), b.strip("[]")
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def session_matches(s: IscsiSession, target: str, host: str, port: int,
                    iface: str | None) -> bool:
    """Whether session ``s`` is the one a pool names: its target, portal (a host name
    that is not an address matches any address, the kernel shows only addresses) and
    iface: the pool's own when it has an initiator name, else any but those."""
    if s.target != target or (s.port is not None and s.port != port):
        return False
    if iface is not None and s.iface != iface:
        return False
    if iface is None and s.iface.startswith(IFACE_PREFIX):
        return False
    return not is_ip_literal(host) or not s.address or same_address(s.address, host)


# -- sysfs ---------------------------------------------------------------------------------
def read_sessions(root: str | os.PathLike[str] = "/") -> list[IscsiSession]:
    """The kernel's iSCSI sessions, by session id."""
    base = Path(root) / "sys" / "class"
    found = []
    for name in list_dir(base / "iscsi_session"):
        m = re.fullmatch(r"session(\d+)", name)
        if not m:
            continue
        sid = int(m.group(1))
        sdir = base / "iscsi_session" / name
        conn = base / "iscsi_connection" / f"connection{sid}:0"
        address = read_attr(conn / "persistent_address") or read_attr(conn / "address")
        port = parse_int(read_attr(conn / "persistent_port") or read_attr(conn / "port"))
        host = None
        with contextlib.suppress(OSError):
            parent = os.path.basename(os.path.dirname(os.path.realpath(sdir / "device")))
            if re.fullmatch(r"host\d+", parent):
                host = int(parent[4:])
        found.append(IscsiSession(
            sid=sid, target=read_attr(sdir / "targetname"), address=address, port=port,
            iface=read_attr(sdir / "ifacename"), initiator=read_attr(sdir / "initiatorname"),
            state=read_attr(sdir / "state"), host=host,
        ))
    return sorted(found, key=lambda s: s.sid)


def find_record(db_root: str | os.PathLike[str], target: str, port: int,
                iface: str) -> Path | None:
    """The node record file of ``target`` on ``port`` through ``iface`` (either style)."""
    tdir = Path(db_root) / "nodes" / target
    candidates: list[Path] = []
    for entry in sorted(list_dir(tdir)):
        path = tdir / entry
        if path.is_dir():
            candidates += [path / f for f in sorted(list_dir(path))]
        elif path.is_file():
            candidates.append(path)
    for path in candidates:
        try:
            rec = parse_node_record(path.read_text(errors="replace"))
        except OSError:
            continue
        if rec.get("node.name") == target and rec.get("node.conn[0].port") == str(port) \
                and rec.get("iface.iscsi_ifacename", "default") == iface:
            return path
    return None


def set_record_password(path: Path, secret: str) -> None:
    """Write the CHAP password into the node record ``path`` (0600, atomic rename)."""
    text = with_password(path.read_text(errors="replace"), secret)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# -- iscsiadm --------------------------------------------------------------------------------
async def _iscsiadm(args: list[str], what: str, *, ok: tuple[int, ...] = (),
                    timeout: float = TIMEOUT) -> int:
    """Run iscsiadm; returns its exit status when 0 or in ``ok``, raises otherwise."""
    res = await run_command([ISCSIADM, *args], timeout=timeout, check=False)
    if res.returncode == 0 or res.returncode in ok:
        return res.returncode
    detail = " ".join(line.strip() for line in res.stderr.strip().splitlines()[-3:]) \
        or f"exit status {res.returncode}"
    if res.returncode == ERR_ISCSID_NOTCONN:
        require_iscsid()
        raise IscsidNotRunning(f"{what}: iscsid does not answer: {detail}")
    if res.returncode == ERR_LOGIN_AUTH_FAILED:
        raise AuthFailed(f"{what} refused: authorization failure ({detail}); check the CHAP "
                         "user name and secret")
    if res.returncode == ERR_NO_OBJS_FOUND:
        raise NotFound(f"{what}: {detail}")
    raise Failed(f"{what} failed: {detail}")


def _node_args(target: str, portal: str, iface: str | None) -> list[str]:
    args = ["-m", "node", "-T", target, "-p", portal]
    if iface is not None:
        args += ["-I", validate_iface(iface)]
    return args


async def ensure_iface(name: str, initiator: str) -> None:
    """An iface ``name`` (transport tcp) carrying initiator name ``initiator``."""
    validate_iface(name)
    show = await run_command([ISCSIADM, "-m", "iface", "-I", name], timeout=TIMEOUT,
                             check=False)
    if show.returncode != 0:
        await _iscsiadm(["-m", "iface", "-I", name, "-o", "new"], f"creating iface {name}")
    await _iscsiadm(["-m", "iface", "-I", name, "-o", "update", "-n", "iface.initiatorname",
                     "-v", initiator], f"setting the initiator name of iface {name}")


async def node_new(target: str, portal: str, iface: str | None) -> None:
    """(Re)create the node record of ``target`` at ``portal`` with default settings."""
    await _iscsiadm([*_node_args(target, portal, iface), "-o", "new"],
                    f"creating the node record of {target} at {portal}")


async def node_update(target: str, portal: str, iface: str | None,
                      settings: list[tuple[str, str]]) -> None:
    """Set settings of a node record in one run (never a secret: argv is world-readable;
    iscsiadm 2.1 takes several ``-n NAME -v VALUE`` pairs)."""
    args = [*_node_args(target, portal, iface), "-o", "update"]
    for name, value in settings:
        if "password" in name:
            raise ValueError("secrets go into the record file, not into argv")
        args += ["-n", name, "-v", value]
    await _iscsiadm(args, f"updating the node record of {target}")


async def node_delete(target: str, portal: str, iface: str | None) -> None:
    """Delete the node record; nothing to delete is fine."""
    await _iscsiadm([*_node_args(target, portal, iface), "-o", "delete"],
                    f"deleting the node record of {target}", ok=(ERR_NO_OBJS_FOUND,))


async def login(target: str, portal: str, iface: str | None) -> None:
    """Log in (an existing session is fine). Raises AuthFailed on a refused CHAP login."""
    await _iscsiadm([*_node_args(target, portal, iface), "--login"],
                    f"iSCSI login to {target} at {portal}", ok=(ERR_SESS_EXISTS,),
                    timeout=LOGIN_TIMEOUT)


async def logout(sid: int) -> None:
    await _iscsiadm(["-m", "session", "-r", str(int(sid)), "--logout"],
                    f"iSCSI logout of session {sid}", timeout=LOGIN_TIMEOUT)


async def rescan(sid: int) -> None:
    """Rescan session ``sid``: sizes of its LUNs, and new LUNs (returns when done)."""
    await _iscsiadm(["-m", "session", "-r", str(int(sid)), "--rescan"],
                    f"rescanning iSCSI session {sid}")
