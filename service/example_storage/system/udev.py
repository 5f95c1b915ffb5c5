"""Block device uevents (pyudev) and what udev would otherwise tell: its database and
the /dev/disk/by-* links.

The "udev" netlink source carries udevd's processed events (with ``ID_*`` properties);
without a running udevd it silently receives nothing, so ``choose_source("auto")``
takes the "kernel" source then (raw kernel uevents, no ``ID_*``; the caller probes).
The monitor is read from the asyncio loop through its file descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

UDEV = "udev"
KERNEL = "kernel"
SOURCES = ("auto", UDEV, KERNEL, "none")
# Big enough for a storm of thousands of events between two reads; root can force it.
RECEIVE_BUFFER = 16 << 20
# At most this many events per wake-up of the loop, so a storm cannot starve the bus.
BATCH = 512


@dataclass(frozen=True)
class UEvent:
    """One uevent of a block device; ``name`` is the kernel name (``sda1``)."""

    action: str
    name: str
    properties: dict[str, str] = field(default_factory=dict, compare=False)
    overflow: bool = False   # events were lost (socket buffer overrun): rescan everything


def udevd_running(root: str | os.PathLike[str] = "/") -> bool:
    """udevd creates its control socket at start-up."""
    return (Path(root) / "run" / "udev" / "control").exists()


def choose_source(requested: str, root: str | os.PathLike[str] = "/") -> str | None:
    """The netlink source to listen on: "udev", "kernel", or None for "none"."""
    if requested not in SOURCES:
        raise ValueError(f"unknown uevent source {requested!r} (one of {', '.join(SOURCES)})")
    if requested == "none":
        return None
    if requested == "auto":
        return UDEV if udevd_running(root) else KERNEL
    if requested == UDEV and not udevd_running(root):
        log.warning("udev source requested but udevd does not seem to run: "
                    "no events may arrive")
    return requested


class UeventMonitor:
    """Calls ``callback(UEvent)`` for every block device uevent, from the asyncio loop."""

    def __init__(self, source: str, callback: Callable[[UEvent], None]) -> None:
        import pyudev  # imported here: only the daemon needs it, not the pure readers

        self.source = source
        self.callback = callback
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._monitor.filter_by("block")
        try:
            self._monitor.set_receive_buffer_size(RECEIVE_BUFFER)
        except OSError as exc:  # not root: the default buffer is what we get
            log.debug("cannot enlarge the uevent buffer: %s", exc)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._monitor.start()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._monitor.fileno(), self._readable)
        log.info("listening to %s uevents", self.source)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._loop = None

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("uevents were lost (receive buffer overrun): rescanning")
                    self.callback(UEvent("overflow", "", overflow=True))
                    continue
                log.error("cannot read uevents: %s", exc)
                return
            if device is None:
                return
            self.callback(UEvent(device.action or "change", device.sys_name,
                                 dict(device.properties)))


# -- the udev database and /dev links --------------------------------------------
@dataclass(frozen=True)
class UdevRecord:
    """What udevd stored about one device: properties (E:) and /dev symlinks (S:)."""

    properties: dict[str, str]
    symlinks: tuple[str, ...]


def parse_udev_db(text: str) -> UdevRecord:
    """A /run/udev/data/b<MAJ>:<MIN> file."""
    props: dict[str, str] = {}
    links: list[str] = []
    for line in text.splitlines():
        tag, sep, value = line.partition(":")
        if not sep:
            continue
        if tag == "E":
            key, eq, val = value.partition("=")
            if eq:
                props[key] = val
        elif tag == "S":
            links.append("/dev/" + value)
    return UdevRecord(props, tuple(sorted(links)))


def read_udev_db(major: int, minor: int, root: str | os.PathLike[str] = "/"
                 ) -> UdevRecord | None:
    """udevd's record of block device MAJ:MIN, or None when udevd has none."""
    path = Path(root) / "run" / "udev" / "data" / f"b{major}:{minor}"
    try:
        return parse_udev_db(path.read_text(errors="replace"))
    except OSError:
        return None


def disk_links(root: str | os.PathLike[str] = "/") -> dict[str, tuple[str, ...]]:
    """The /dev/disk/by-*/ symlinks, by the device node they resolve to.

    Paths are reported as seen from ``root`` (``/dev/...``) — without udevd there are
    usually none.
    """
    base = Path(root) / "dev" / "disk"
    found: dict[str, list[str]] = {}
    try:
        kinds = sorted(e for e in os.listdir(base) if e.startswith("by-"))
    except OSError:
        return {}
    for kind in kinds:
        try:
            entries = sorted(os.listdir(base / kind))
        except OSError:
            continue
        for entry in entries:
            link = base / kind / entry
            try:
                target = os.path.realpath(link)
            except OSError:
                continue
            shown = "/dev/disk/" + kind + "/" + entry
            node = target if str(root) in ("/", "") else "/" + os.path.relpath(target, root)
            found.setdefault(node, []).append(shown)
    return {node: tuple(links) for node, links in found.items()}


def decode_udev_escapes(text: str) -> str:
    r"""udev writes unsafe bytes as ``\xNN`` (ID_FS_LABEL_ENC, by-label link names)."""
    if "\\x" not in text:
        return text
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i : i + 2] == b"\\x" and i + 4 <= len(raw):
            try:
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", "replace")
