"""Functions of the C library that Python's os module lacks, loaded once each."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from typing import Any

# fallocate(int fd, int mode, off_t offset, off_t len)
FALLOCATE_ARGS = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


@functools.cache
def libc_function(name: str, *argtypes: Any) -> Any:
    """The C library's ``name`` with these argument types (int result, errno kept for
    ctypes.get_errno); None where it is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


def libc_call(name: str, argtypes: tuple[Any, ...], *args: Any, path: str | None = None
              ) -> int:
    """Call the C library's ``name``; its result, or OSError with its errno when it fails
    (a result below 0; ENOSYS where the library has no such function). ``path`` names
    the file in the error."""
    fn = libc_function(name, *argtypes)
    if fn is None:
        raise OSError(errno.ENOSYS, f"the C library has no {name}", path)
    result = fn(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result
