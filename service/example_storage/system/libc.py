"""Functions of the C library that Python's os module lacks, loaded once each."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


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
