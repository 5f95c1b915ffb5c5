"""Pool type 'iscsi': one target's LUNs through the kernel initiator (open-iscsi).

Source: ``<host name= port=/>`` (the portal), ``<device path='TARGET-IQN'/>``, optionally
``<initiator><iqn name=.../></initiator>`` (then an open-iscsi iface 'estorage-<hash>'
carries that initiator name; it stays for later pools) and ``<auth type='chap'
username=...><secret usage=...|uuid=.../></auth>``.

Start creates the node record by hand (``iscsiadm -m node -o new``: no SendTargets
discovery, so a target that advertises another address, like tgtd's 127.0.0.1, still
works), sets CHAP with ``-o update`` except the secret, which is written into the record
file only (system/iscsiadm.py: never into a process's argv), logs in, waits for the
session's SCSI host, rescans it and waits for its LUNs' block devices. An existing
session to the target is used as it is. Destroy logs out and deletes the node record;
while a LUN (or a partition on it) is mounted, held by a stacked device or opened
exclusively it refuses with Busy, unless ``force``: logging out pulls the disk from
under its user.
The pool is active while its session exists (after a daemon restart too).

iscsiadm needs iscsid: it is not started here (that is the system's job: iscsid.socket
or the iscsid service); Start says clearly when it does not run.

Volumes are the session's LUNs exactly as a 'scsi' pool on its host lists them
(backends/scsi.py: 'unit:0:0:N', Key = WWN, path /dev/disk/by-path/... when udev made
one, else /dev/sdX). Refresh rescans the session (``iscsiadm -m session -r SID
--rescan``: new LUNs, changed sizes). The kernel does not rescan by itself when the target
adds a LUN, so a running pool rescans every 'lun-poll-interval' seconds (Pool.Start's
option, as for iscsi-direct; core/pool.py) and core follows the host's uevents in between
(core/lun_follower.py), announcing Pool.LunsChanged. FindPoolSources is SendTargets
discovery through libiscsi, as for iscsi-direct (it leaves no node records behind).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Busy, Failed, InvalidArgument, InvalidState
from ..model.definitions import PoolDefinition, PoolSource, SourceAuth
from ..system import iscsi, iscsiadm
from ..system.runner import which
from ..system.scsi_host import VOLUME_TYPES, ScsiSysfs
from .base import Backend, RefreshResult
from .device_safety import check_unused
from .iscsi_direct import IscsiDirectBackend
from .scsi import lun_refresh_result

log = logging.getLogger(__name__)

SESSION_WAIT = 15.0     # after login: until the kernel shows the session and its host
BLOCK_WAIT = 10.0       # after the first scan: until the disk LUNs have block devices
_USER_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class _Target:
    iqn: str
    host: str
    port: int
    portal: str               # as iscsiadm -p wants it: host:port, [v6]:port
    iface: str | None         # None: open-iscsi's default iface
    initiator: str | None


class IscsiBackend(Backend):
    type_name = "iscsi"
    required_tools = (iscsiadm.ISCSIADM,)
    features = frozenset({"start", "stop", "refresh", "find_sources"})
    default_volume_type = "block"
    polls_luns = True       # core rescans periodically: the kernel does not on its own
    lun_volumes = True      # core announces LunsChanged and follows the host's uevents

    def __init__(self, direct: IscsiDirectBackend, sysfs: ScsiSysfs | None = None,
                 root: str = "/", db_root: str = iscsiadm.DB_ROOT) -> None:
        self._direct = direct
        self.sysfs = sysfs or ScsiSysfs(root)
        self.root = root
        self.db_root = db_root
        # set by core: resolves a pool's <auth> to the secret's bytes (core/secrets.py)
        self.secret_lookup: Callable[[SourceAuth], bytes] | None = None

    def missing_optional_tools(self) -> list[str]:
        """FindPoolSources discovers through libiscsi's iscsi-ls."""
        return [t for t in (iscsi.ISCSI_LS,) if which(t) is None]

    # -- the pool's target ----------------------------------------------------------
    def _target(self, pool: PoolDefinition) -> _Target:
        src = pool.source
        if not src.hosts:
            raise InvalidArgument("an iscsi pool needs a source <host>")
        if not src.devices:
            raise InvalidArgument("an iscsi pool needs <device path='TARGET-IQN'/>")
        host = src.hosts[0]
        portal = iscsi.portal_of(host.name, host.port)
        initiator = src.initiator_iqn
        if initiator is not None:
            iscsi.validate_iqn(initiator, "initiator")
        return _Target(
            iqn=iscsi.validate_iqn(src.devices[0].path), host=host.name,
            port=host.port or iscsi.DEFAULT_PORT, portal=portal,
            iface=iscsiadm.iface_name_for(initiator) if initiator else None,
            initiator=initiator,
        )

    def _credentials(self, auth: SourceAuth | None) -> tuple[str, str] | None:
        if auth is None:
            return None
        if auth.type != "chap":
            raise InvalidArgument(f"iSCSI supports only CHAP authentication, not '{auth.type}'")
        if not _USER_RE.match(auth.username or ""):
            raise InvalidArgument("invalid CHAP user name")
        if self.secret_lookup is None:
            raise InvalidArgument("no secret store is available for CHAP")
        return auth.username, iscsiadm.chap_secret_text(self.secret_lookup(auth))

    def _sessions(self, t: _Target) -> list[iscsiadm.IscsiSession]:
        found = [s for s in iscsiadm.read_sessions(self.root)
                 if iscsiadm.session_matches(s, t.iqn, t.host, t.port, t.iface)]
        return sorted(found, key=lambda s: (s.state != "LOGGED_IN", s.sid))

    def _session(self, pool: PoolDefinition) -> iscsiadm.IscsiSession | None:
        found = self._sessions(self._target(pool))
        return found[0] if found else None

    def lun_host(self, pool: PoolDefinition) -> int | None:
        """The SCSI host number of the pool's session (None: not logged in)."""
        try:
            session = self._session(pool)
        except InvalidArgument:
            return None
        return session.host if session is not None else None

    # -- pool -------------------------------------------------------------------------
    async def is_active(self, pool: PoolDefinition) -> bool:
        return self.lun_host(pool) is not None

    async def start(self, pool: PoolDefinition) -> None:
        t = self._target(pool)
        creds = self._credentials(pool.source.auth)   # an unknown secret: before anything
        if not self._sessions(t):
            iscsiadm.require_iscsid()
            if t.iface is not None and t.initiator is not None:
                await iscsiadm.ensure_iface(t.iface, t.initiator)
            await iscsiadm.node_new(t.iqn, t.portal, t.iface)
            try:
                await self._set_auth(t, creds)
                await iscsiadm.login(t.iqn, t.portal, t.iface)
            except BaseException:
                await self._forget_node(t)
                raise
        session = await self._wait_session(t)
        await iscsiadm.rescan(session.sid)
        await self._wait_block_devices(session.host)

    async def _set_auth(self, t: _Target, creds: tuple[str, str] | None) -> None:
        if creds is None:
            return      # the record keeps iscsid.conf's defaults
        user, secret = creds
        await iscsiadm.node_update(t.iqn, t.portal, t.iface, [
            ("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", user)])
        record = iscsiadm.find_record(self.db_root, t.iqn, t.port, t.iface or "default")
        if record is None:
            raise Failed(f"cannot find the node record of {t.iqn} that iscsiadm wrote "
                         f"below {self.db_root}/nodes")
        await asyncio.to_thread(iscsiadm.set_record_password, record, secret)

    async def _forget_node(self, t: _Target) -> None:
        try:
            await iscsiadm.node_delete(t.iqn, t.portal, t.iface)
        except Exception as e:  # noqa: BLE001 - the original error matters more
            log.warning("could not delete the node record of %s: %s", t.iqn, e)

    async def _wait_session(self, t: _Target) -> iscsiadm.IscsiSession:
        deadline = time.monotonic() + SESSION_WAIT
        while True:
            found = [s for s in self._sessions(t) if s.host is not None]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise Failed(f"logged in to {t.iqn} at {t.portal}, but the kernel shows no "
                             f"session for it after {SESSION_WAIT:g}s")
            await asyncio.sleep(0.1)

    async def _wait_block_devices(self, host: int | None) -> None:
        """LUNs show up before their sd driver has made the block device: wait a bit."""
        if host is None:
            return
        deadline = time.monotonic() + BLOCK_WAIT
        while True:
            pending = [lun.address for lun in self.sysfs.luns(host)
                       if lun.device_type in VOLUME_TYPES and not lun.block]
            if not pending:
                return
            if time.monotonic() > deadline:
                log.warning("LUNs %s have no block device after %gs (is the sd_mod driver "
                            "loaded? without udevd nothing loads it)", ", ".join(pending),
                            BLOCK_WAIT)
                return
            await asyncio.sleep(0.1)

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        t = self._target(pool)
        sessions = self._sessions(t)
        if not force:
            for session in sessions:
                self._check_luns_unused(session)
        for session in sessions:
            await iscsiadm.logout(session.sid)
        await self._forget_node(t)

    def _check_luns_unused(self, session: iscsiadm.IscsiSession) -> None:
        for lun in self.sysfs.luns(session.host) if session.host is not None else []:
            if lun.block:
                try:
                    check_unused(lun.node)
                except Busy as e:
                    raise Busy(f"LUN {lun.volume_name} of {session.target}: {e.message}; "
                               "Destroy with force logs out anyway") from None
                except InvalidArgument:     # no node to open (no devtmpfs): cannot tell
                    continue

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        session = self._require_session(pool)
        await iscsiadm.rescan(session.sid)
        return await self.relist(pool)

    async def relist(self, pool: PoolDefinition) -> RefreshResult:
        """The volumes as the session's LUNs are now, without a rescan (after uevents)."""
        session = self._require_session(pool)
        target = pool.target.path if pool.target else None
        luns = self.sysfs.luns(session.host) if session.host is not None else []
        return lun_refresh_result(luns, target)

    def _require_session(self, pool: PoolDefinition) -> iscsiadm.IscsiSession:
        session = self._session(pool)
        if session is None:
            t = self._target(pool)
            raise InvalidState(f"there is no iSCSI session to {t.iqn} at {t.portal} "
                               "(logged out behind the service's back?)")
        return session

    # -- discovery ----------------------------------------------------------------------
    async def find_sources(self, hint: PoolSource | None) -> list[PoolSource]:
        self._direct.secret_lookup = self.secret_lookup or self._direct.secret_lookup
        return await self._direct.find_sources(hint)
