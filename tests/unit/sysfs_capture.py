"""Capture parts of a real /sys as JSON, and rebuild them below a temp dir for the parsers'
tests (tests/unit/test_scsi_host.py on trees captured in the VM lane's guest).

A capture maps paths relative to the root ("sys/class/scsi_host/host2") to entries:
``{"dir": true}``, ``{"link": TARGET}`` (sysfs links are relative, so they resolve inside
the rebuilt tree) or ``{"text": ...}`` / ``{"hex": ...}`` for a file's content (write-only
attributes such as ``scan`` are kept as empty files).

Capturing (run inside the guest, as root)::

    python -m tests.unit.sysfs_capture OUT.json /sys/class/scsi_host/host2 ...

Every path named is taken whole (links followed to their device directories), plus the
class and bus links that point into the captured devices.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SKIP_DIRS = {"power", "queue", "mq", "trace", "integrity", "bdi", "statistics", "firmware_node",
             "subsystem", "driver", "iommu_group", "module"}
MAX_FILE = 16 * 1024
CLASS_DIRS = ("class/scsi_host", "class/fc_host", "class/iscsi_session", "class/iscsi_host",
              "class/iscsi_connection", "class/block", "class/scsi_device", "class/scsi_disk",
              "block", "bus/scsi/devices")


def _read(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError:
        return {"text": ""}          # write-only (scan, delete) or refusing reads
    if len(data) > MAX_FILE:
        return {"text": ""}
    try:
        text = data.decode("ascii")
        if all(c.isprintable() or c in "\n\t" for c in text):
            return {"text": text}
    except UnicodeDecodeError:
        pass
    return {"hex": data.hex()}


def capture(paths: list[str], sys_root: str = "/sys") -> dict[str, dict[str, object]]:
    entries: dict[str, dict[str, object]] = {}
    base = os.path.dirname(os.path.abspath(sys_root))

    def rel(p: str) -> str:
        return os.path.relpath(p, base)

    def add_parents(p: str) -> None:
        parent = os.path.dirname(p)
        while parent.startswith(sys_root) and rel(parent) not in entries:
            entries[rel(parent)] = {"dir": True}
            parent = os.path.dirname(parent)

    def take_tree(top: str) -> None:
        add_parents(top)
        for dirpath, dirnames, filenames in os.walk(top):
            entries[rel(dirpath)] = {"dir": True}
            keep = []
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if os.path.islink(full):
                    entries[rel(full)] = {"link": os.readlink(full)}
                elif d not in SKIP_DIRS:
                    keep.append(d)
            dirnames[:] = keep
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    entries[rel(full)] = {"link": os.readlink(full)}
                else:
                    entries[rel(full)] = _read(full)

    devices: list[str] = []
    for path in paths:
        real = os.path.realpath(path)
        devices.append(real)
        take_tree(real)
    # the class/bus links that lead into what was captured
    for sub in CLASS_DIRS:
        d = os.path.join(sys_root, sub)
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            link = os.path.join(d, name)
            target = os.path.realpath(link)
            if any(target == dev or target.startswith(dev + "/") for dev in devices):
                add_parents(link)
                entries[rel(link)] = {"link": os.readlink(link)}
    return dict(sorted(entries.items()))


def materialize(entries: dict[str, dict[str, object]], root: Path) -> Path:
    """Rebuild a capture below ``root``; returns ``root``."""
    for relpath, entry in entries.items():
        path = root / relpath
        if "dir" in entry:
            path.mkdir(parents=True, exist_ok=True)
        elif "link" in entry:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(str(entry["link"]))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if "hex" in entry:
                path.write_bytes(bytes.fromhex(str(entry["hex"])))
            else:
                path.write_text(str(entry["text"]))
    return root


def load(path: Path, root: Path) -> Path:
    data = json.loads(path.read_text())
    return materialize(data["entries"], root)


def main(argv: list[str]) -> int:
    out, *paths = argv
    data = {"kernel": os.uname().release, "paths": paths, "entries": capture(paths)}
    Path(out).write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"{len(data['entries'])} entries -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
