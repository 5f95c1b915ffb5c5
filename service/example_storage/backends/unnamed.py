"""New files made without a name (O_TMPFILE) and given one when finished (linkat).

A volume is made complete (sized, its format recorded, owner and mode set) before anyone
can see it under its name. With a named temp file that costs two more directory changes
(the temp name added, then removed) and leaves the temp file behind after a crash; an
unnamed file has neither: it is only ever visible complete, and a crash frees it. Where
the filesystem cannot make one (NFS, FUSE, older kernels) or this process may not link one
(AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH), callers use a named temp file instead.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..system.libc import libc_call

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
# the filesystem or kernel has no O_TMPFILE
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS})
# linkat(AT_EMPTY_PATH) not allowed here (ENOENT without CAP_DAC_READ_SEARCH) or missing
_NO_LINK = frozenset({errno.ENOENT, errno.EPERM, errno.EINVAL, errno.ENOSYS})

_usable = True          # False once linking an unnamed file turned out not to work here
_LINKAT_ARGS = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)


def open_unnamed(directory: str, mode: int) -> int | None:
    """A new, unnamed regular file on ``directory``'s filesystem, open for writing; None
    where that cannot be made (use a named temp file). Other errors raise OSError."""
    if not _usable:
        return None
    try:
        return os.open(directory, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


def link_unnamed(fd: int, path: str) -> bool:
    """Give the unnamed file ``fd`` the name ``path``, never replacing anything
    (FileExistsError if ``path`` exists). False (and nothing changed) where this process
    cannot link an unnamed file: the caller makes the file again with a temp name."""
    global _usable
    try:
        libc_call("linkat", _LINKAT_ARGS, fd, b"", _AT_FDCWD, os.fsencode(path),
                  _AT_EMPTY_PATH, path=path)
        return True
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(exc.errno, exc.strerror, path) from None
        if exc.errno not in _NO_LINK:
            raise
        if not os.path.lexists(os.path.dirname(path) or "."):
            raise FileNotFoundError(exc.errno, exc.strerror, path) from None
    _usable = False
    return False
