"""Watching what the kernel sends no uevent for.

- ``NodeWatcher``: a write to a block device (mkfs, parted, dd) makes no uevent; udevd
  watches device nodes with inotify and synthesizes a "change" when a writer closes
  one. Without udevd we do the same (IN_CLOSE_WRITE on /dev/<node>).
- ``MountWatcher``: the kernel flags /proc/self/mountinfo (POLLPRI) when the mount
  table changes; mounting or unmounting changes a device's InUse.

Both call a plain callback from the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import struct
from collections.abc import Callable

from .libc import libc_call

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")   # wd, mask, cookie, len


_ADD_WATCH_ARGS = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
_RM_WATCH_ARGS = (ctypes.c_int, ctypes.c_int)


class NodeWatcher:
    """Calls ``callback(name)`` when a writer closes the watched node of ``name``."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        self.callback = callback
        self._fd = libc_call("inotify_init1", (ctypes.c_int,), IN_NONBLOCK | IN_CLOEXEC)
        self._by_wd: dict[int, str] = {}
        self._by_name: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def watch(self, name: str, node: str) -> None:
        if name in self._by_name or self._fd < 0:
            return
        try:
            wd = libc_call("inotify_add_watch", _ADD_WATCH_ARGS, self._fd, os.fsencode(node),
                           IN_CLOSE_WRITE)
        except OSError as exc:
            log.debug("cannot watch %s: %s", node, exc.strerror)
            return
        # inotify gives the same wd for the same inode (two names of one node)
        self._by_wd[wd] = name
        self._by_name[name] = wd

    def unwatch(self, name: str) -> None:
        wd = self._by_name.pop(name, None)
        if wd is None:
            return
        self._by_wd.pop(wd, None)
        if self._fd >= 0:
            with contextlib.suppress(OSError):   # the node is gone: so is its watch
                libc_call("inotify_rm_watch", _RM_WATCH_ARGS, self._fd, wd)

    def watched(self) -> set[str]:
        return set(self._by_name)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.error("inotify read failed: %s", exc)
            return
        names: list[str] = []
        for wd, mask in parse_inotify_events(data):
            name = self._by_wd.get(wd)
            if name is None:
                continue
            if mask & IN_IGNORED:   # the node went away
                self._by_wd.pop(wd, None)
                self._by_name.pop(name, None)
            elif mask & IN_CLOSE_WRITE and name not in names:
                names.append(name)
        for name in names:
            self.callback(name)


def parse_inotify_events(data: bytes) -> list[tuple[int, int]]:
    """(wd, mask) of each ``struct inotify_event`` in a read buffer."""
    events = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        events.append((wd, mask))
        offset += _EVENT.size + length
    return events


class MountWatcher:
    """Calls ``callback()`` after the mount table changed."""

    def __init__(self, callback: Callable[[], None], path: str = "/proc/self/mountinfo"
                 ) -> None:
        self.callback = callback
        self._file = open(path, "rb")  # noqa: SIM115 - kept open while watching
        self._drain()   # poll reports changes since the last full read
        self._epoll = select.epoll()
        self._epoll.register(self._file.fileno(), select.EPOLLPRI | select.EPOLLERR)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The epoll fd becomes readable when the mount table changed.
        self._loop.add_reader(self._epoll.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._loop = None
        with contextlib.suppress(OSError):
            self._epoll.close()
            self._file.close()

    def _readable(self) -> None:
        # Polling the file (as the loop's epoll just did through ours) consumes the
        # change flag, so asking our epoll again would say "nothing": trust the wake-up.
        self._epoll.poll(0)
        self._drain()
        self.callback()

    def _drain(self) -> None:
        """Reading the file to its end re-arms the notification."""
        self._file.seek(0)
        while self._file.read(1 << 16):
            pass


def read_swaps(path: str = "/proc/swaps") -> list[str]:
    """Devices and files in use as swap."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    return [line.split()[0].replace("\\040", " ") for line in lines if line.split()]
