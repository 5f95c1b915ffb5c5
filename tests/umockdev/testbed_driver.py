"""A umockdev testbed in its own process, driven over stdin/stdout (one JSON object per
line each way).

umockdev's ``Testbed.uevent()`` finds the device through libudev, so the process that
owns the testbed must itself run under ``umockdev-wrapper`` (the preload library);
keeping it out of pytest's process leaves the tests' own view of /sys untouched.

Started as ``umockdev-wrapper python testbed_driver.py``; it prints
``{"root": DIR}`` first (the daemon under test gets ``UMOCKDEV_DIR=DIR``), then answers
each request with ``{"ok": RESULT}`` or ``{"error": TEXT}``:

- ``{"op": "add", "record": TEXT}``: umockdev-record text (add_from_string)
- ``{"op": "uevent", "syspath": P, "action": A}``
- ``{"op": "set_attribute", "syspath": P, "name": N, "value": V}``
- ``{"op": "remove", "syspath": P}``: remove the device (and its parents up to the
  first one that another device needs: pass those as "also") from sysfs, no uevent
- ``{"op": "symlink", "target": T, "link": L}``: a symlink below the testbed's /dev
- ``{"op": "storm", "syspath": P, "count": N, "attribute": A, "values": [...]}``:
  N "change" uevents as fast as the listeners take them; before event i the attribute
  gets ``values[i * len // N]``
- ``{"op": "cycle", "record": TEXT, "syspath": P, "also": [...], "times": N}``:
  add + "add" uevent + "remove" uevent + remove, N times (uevents as the listeners take
  them, as in "storm")
- ``{"op": "quit"}``
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import sys
import time

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402


def main() -> int:
    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    out = sys.stdout
    out.write(json.dumps({"root": root}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                out.write(json.dumps({"ok": None}) + "\n")
                out.flush()
                return 0
            result = handle(testbed, root, op, request)
            reply = {"ok": result}
        except Exception as exc:  # noqa: BLE001 - report to the test, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


# -- a uevent sender that waits instead of aborting ---------------------------------
# umockdev's own sender (Testbed.uevent) aborts the process when a listener's socket
# queue is full (unix datagram queues hold net.unix.max_dgram_qlen = 10 messages), so a
# storm goes through this one: the same message on a blocking socket. Its format is
# libudev's (systemd's device_monitor_send_device), as in umockdev's uevent_sender.c.
# prefix, magic (network order), header size, properties offset and length (host
# order), subsystem and devtype hashes (network order), tag bloom filter
_HEADER = struct.Struct("=8s4sIII4s4sII")
_MAGIC = 0xFEEDCAFE


def murmur2(text: str) -> int:
    """systemd's string_hash32 (MurmurHash2), for libudev's socket filter."""
    data = text.encode()
    m, length = 0x5BD1E995, len(data)
    h = length & 0xFFFFFFFF
    i = 0
    while length - i >= 4:
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
        i += 4
    rest = data[i:]
    if len(rest) >= 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


class UeventSender:
    def __init__(self, root: str) -> None:
        self.root = root
        self.seqnum = 1_000_000

    def message(self, syspath: str, action: str) -> bytes:
        devdir = os.path.join(self.root, syspath.lstrip("/"))
        props = {}
        with open(os.path.join(devdir, "uevent")) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                props[key] = value
        subsystem = os.path.basename(os.readlink(os.path.join(devdir, "subsystem")))
        self.seqnum += 1
        fields = [("ACTION", action), ("DEVPATH", syspath[len("/sys"):]),
                  ("SUBSYSTEM", subsystem), ("SEQNUM", str(self.seqnum))]
        if props.get("DEVNAME"):
            fields.append(("DEVNAME", "/dev/" + props["DEVNAME"]))
        if props.get("DEVTYPE"):
            fields.append(("DEVTYPE", props["DEVTYPE"]))
        body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields)
        devtype_hash = murmur2(props["DEVTYPE"]) if props.get("DEVTYPE") else 0
        header = _HEADER.pack(b"libudev\0", _MAGIC.to_bytes(4, "big"), _HEADER.size,
                              _HEADER.size, len(body), murmur2(subsystem).to_bytes(4, "big"),
                              devtype_hash.to_bytes(4, "big"), 0, 0)
        return header + body

    def send(self, syspath: str, action: str) -> None:
        message = self.message(syspath, action)
        for path in glob.glob(os.path.join(self.root, "event[0-9]*")):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(path)
                sock.send(message)   # blocks while the listener's queue is full
            except ConnectionRefusedError:
                pass   # that listener went away
            finally:
                sock.close()


def remove(testbed, root: str, syspaths: list[str]) -> None:
    for syspath in syspaths:
        testbed.remove_device(syspath)
    # umockdev 0.17 leaves the /sys/block/NAME link behind; a later add of the same
    # device would then abort
    block = os.path.join(root, "sys", "block")
    for name in os.listdir(block) if os.path.isdir(block) else ():
        link = os.path.join(block, name)
        if os.path.islink(link) and not os.path.exists(link):
            os.unlink(link)


def handle(testbed, root: str, op: str, request: dict):
    if op == "add":
        testbed.add_from_string(request["record"])
        return None
    if op == "uevent":
        testbed.uevent(request["syspath"], request["action"])
        return None
    if op == "set_attribute":
        testbed.set_attribute(request["syspath"], request["name"], request["value"])
        return None
    if op == "remove":
        remove(testbed, root, [request["syspath"], *request.get("also", [])])
        return None
    if op == "symlink":
        link = os.path.join(root, request["link"].lstrip("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(request["target"], link)
        return None
    if op == "storm":
        syspath, count = request["syspath"], int(request["count"])
        attribute, values = request.get("attribute"), request.get("values") or []
        sender = UeventSender(root)
        started = time.monotonic()
        current = None
        for i in range(count):
            if attribute and values:
                value = values[i * len(values) // count]
                if value != current:
                    testbed.set_attribute(syspath, attribute, value)
                    current = value
            sender.send(syspath, "change")
        return {"seconds": time.monotonic() - started}
    if op == "cycle":
        # 2 uevents per time, back to back: through the sender that waits for room in the
        # listener's queue (umockdev's aborts the driver once 10 are pending)
        sender = UeventSender(root)
        for _ in range(int(request["times"])):
            testbed.add_from_string(request["record"])
            sender.send(request["syspath"], "add")
            sender.send(request["syspath"], "remove")
            remove(testbed, root, [request["syspath"], *request.get("also", [])])
        return None
    raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":
    sys.exit(main())
