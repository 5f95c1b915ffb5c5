"""A tiny libiscsi (ctypes) probe, run as its own process by system/iscsi.py.

    LIBISCSI_CHAP_PASSWORD=... python -m example_storage.system.iscsi_probe \
        PORTAL TARGET_IQN INITIATOR_IQN [USERNAME]

Logs in to one target, lists its LUNs (REPORT LUNS) and, for each, the exact size
(READ CAPACITY 16), the unit serial number (VPD 0x80) and the NAA/EUI designator
(VPD 0x83, as clean hex; iscsi-inq prints it as raw bytes). Prints one JSON object.
The CHAP secret comes only from the environment, never from argv. Exit status 0: ok;
2: login refused for authentication; 3: other login failure; 4: usage/library error.
The probe runs in a separate process so that a hung target is killed by the caller's
timeout (system/runner.py) and a libiscsi crash cannot take the daemon down.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

ISCSI_SESSION_NORMAL = 2
SCSI_STATUS_GOOD = 0
SCSI_CHECK = 2
PASSWORD_ENV = "LIBISCSI_CHAP_PASSWORD"

# VPD 0x83 designator types and code sets (SPC-4)
_DESIGNATOR_EUI64 = 2
_DESIGNATOR_NAA = 3
_CODE_SET_BINARY = 1
_ASSOCIATION_LOGICAL_UNIT = 0


class _Designator(ctypes.Structure):
    pass


_Designator._fields_ = [
    ("next", ctypes.POINTER(_Designator)),
    ("protocol_identifier", ctypes.c_int),
    ("code_set", ctypes.c_int),
    ("piv", ctypes.c_int),
    ("association", ctypes.c_int),
    ("designator_type", ctypes.c_int),
    ("designator_length", ctypes.c_int),
    ("designator", ctypes.POINTER(ctypes.c_ubyte)),
]


class _DeviceIdentification(ctypes.Structure):
    _fields_ = [("qualifier", ctypes.c_int), ("device_type", ctypes.c_int),
                ("pagecode", ctypes.c_int), ("designators", ctypes.POINTER(_Designator))]


class _UnitSerial(ctypes.Structure):
    _fields_ = [("qualifier", ctypes.c_int), ("device_type", ctypes.c_int),
                ("pagecode", ctypes.c_int), ("usn", ctypes.c_char_p)]


class _ReadCapacity16(ctypes.Structure):
    _fields_ = [("returned_lba", ctypes.c_uint64), ("block_length", ctypes.c_uint32)]


class _ReportLuns(ctypes.Structure):
    _fields_ = [("num", ctypes.c_uint32)]


class _Probe:
    def __init__(self) -> None:
        name = ctypes.util.find_library("iscsi") or "libiscsi.so.7"
        lib = ctypes.CDLL(name)
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for fn, res, args in (
            ("iscsi_create_context", vp, [cp]),
            ("iscsi_destroy_context", ci, [vp]),
            ("iscsi_set_targetname", ci, [vp, cp]),
            ("iscsi_set_session_type", ci, [vp, ci]),
            ("iscsi_set_initiator_username_pwd", ci, [vp, cp, cp]),
            ("iscsi_set_timeout", ci, [vp, ci]),
            ("iscsi_full_connect_sync", ci, [vp, cp, ci]),
            ("iscsi_logout_sync", ci, [vp]),
            ("iscsi_get_error", cp, [vp]),
            ("iscsi_reportluns_sync", vp, [vp, ci, ci]),
            ("iscsi_readcapacity16_sync", vp, [vp, ci]),
            ("iscsi_inquiry_sync", vp, [vp, ci, ci, ci, ci]),
            ("scsi_datain_unmarshall", vp, [vp]),
            ("scsi_free_scsi_task", None, [vp]),
        ):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        self.lib = lib

    def _sync(self, fn, *args) -> int | None:
        """Run a *_sync SCSI command, retrying after CHECK CONDITION: the first command
        after login (or after a LUN change) meets a unit attention."""
        task = None
        for _ in range(4):
            if task:
                self.lib.scsi_free_scsi_task(task)
            task = fn(*args)
            if not task or ctypes.cast(task, ctypes.POINTER(ctypes.c_int))[0] != SCSI_CHECK:
                break
        return task

    def _task_data(self, task: int | None):
        """The unmarshalled data of a finished task, or None when it failed."""
        if not task:
            return None
        status = ctypes.cast(task, ctypes.POINTER(ctypes.c_int))[0]
        if status != SCSI_STATUS_GOOD:
            return None
        return self.lib.scsi_datain_unmarshall(task)

    def luns(self, ctx: int) -> list[int]:
        task = self._sync(self.lib.iscsi_reportluns_sync, ctx, 0, 16384)
        try:
            data = self._task_data(task)
            if not data:
                raise RuntimeError("REPORT LUNS failed: " + self._error(ctx))
            num = _ReportLuns.from_address(data).num
            arr = (ctypes.c_uint16 * num).from_address(data + 4)
            return sorted(int(x) for x in arr)
        finally:
            if task:
                self.lib.scsi_free_scsi_task(task)

    def capacity(self, ctx: int, lun: int) -> tuple[int, int] | None:
        task = self._sync(self.lib.iscsi_readcapacity16_sync, ctx, lun)
        try:
            data = self._task_data(task)
            if not data:
                return None
            rc = _ReadCapacity16.from_address(data)
            return (rc.returned_lba + 1) * rc.block_length, rc.block_length
        finally:
            if task:
                self.lib.scsi_free_scsi_task(task)

    def serial(self, ctx: int, lun: int) -> str:
        task = self._sync(self.lib.iscsi_inquiry_sync, ctx, lun, 1, 0x80, 255)
        try:
            data = self._task_data(task)
            if not data:
                return ""
            usn = _UnitSerial.from_address(data).usn
            return (usn or b"").decode("ascii", "replace").strip()
        finally:
            if task:
                self.lib.scsi_free_scsi_task(task)

    def designators(self, ctx: int, lun: int) -> list[dict]:
        task = self._sync(self.lib.iscsi_inquiry_sync, ctx, lun, 1, 0x83, 255)
        out: list[dict] = []
        try:
            data = self._task_data(task)
            if not data:
                return out
            d = _DeviceIdentification.from_address(data).designators
            while d:
                des = d.contents
                raw = bytes(des.designator[: des.designator_length])
                out.append({
                    "type": des.designator_type, "code_set": des.code_set,
                    "association": des.association, "hex": raw.hex(),
                    "text": raw.decode("ascii", "replace") if des.code_set != 1 else "",
                })
                d = des.next
            return out
        finally:
            if task:
                self.lib.scsi_free_scsi_task(task)

    def _error(self, ctx: int) -> str:
        msg = self.lib.iscsi_get_error(ctx)
        return (msg or b"").decode("utf-8", "replace")


def login(probe: _Probe, portal: str, target: str, initiator: str, username: str,
          password: str) -> tuple[int | None, dict, int]:
    """Create a context and log in to ``target``: (ctx, {}, 0) on success, else
    (None, {"error": ..., "auth_failed": ...}, exit status 2 (auth) / 3 / 4)."""
    lib = probe.lib
    ctx = lib.iscsi_create_context(initiator.encode())
    if not ctx:
        return None, {"error": "iscsi_create_context failed"}, 4
    lib.iscsi_set_targetname(ctx, target.encode())
    lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
    lib.iscsi_set_timeout(ctx, 10)
    if username:
        lib.iscsi_set_initiator_username_pwd(ctx, username.encode(), password.encode())
    if lib.iscsi_full_connect_sync(ctx, portal.encode(), -1) != 0:
        err = probe._error(ctx)
        lib.iscsi_destroy_context(ctx)
        auth = "authentication" in err.lower() or "(513)" in err
        return None, {"error": err, "auth_failed": auth}, 2 if auth else 3
    return ctx, {}, 0


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(json.dumps({"error": "usage: PORTAL TARGET INITIATOR [USERNAME]"}))
        return 4
    portal, target, initiator = argv[:3]
    username = argv[3] if len(argv) == 4 else ""
    password = os.environ.get(PASSWORD_ENV, "")
    try:
        probe = _Probe()
    except (OSError, AttributeError) as e:
        print(json.dumps({"error": f"libiscsi unavailable: {e}"}))
        return 4
    lib = probe.lib
    ctx, failure, status = login(probe, portal, target, initiator, username, password)
    if ctx is None:
        print(json.dumps(failure))
        return status
    try:
        result = []
        for lun in probe.luns(ctx):
            cap = probe.capacity(ctx, lun)
            result.append({
                "lun": lun,
                "size": cap[0] if cap else None,
                "block_size": cap[1] if cap else None,
                "serial": probe.serial(ctx, lun),
                "designators": probe.designators(ctx, lun),
            })
        lib.iscsi_logout_sync(ctx)
        print(json.dumps({"luns": result}))
        return 0
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}))
        return 3
    finally:
        lib.iscsi_destroy_context(ctx)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
