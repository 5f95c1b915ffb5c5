"""system/libc.py: C library calls turn a failure into OSError with the call's errno."""

import ctypes
import errno
import os

import pytest
from example_storage.system.libc import libc_call, libc_function

ADD_WATCH = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)


def test_a_successful_call_returns_its_result():
    fd = libc_call("inotify_init1", (ctypes.c_int,), os.O_CLOEXEC)
    try:
        assert fd >= 0 and os.fstat(fd)   # a real open descriptor
    finally:
        os.close(fd)


def test_a_failing_call_raises_its_errno_naming_the_path():
    with pytest.raises(OSError) as info:
        libc_call("inotify_add_watch", ADD_WATCH, -1, b"/tmp", 8, path="/tmp")
    assert info.value.errno == errno.EBADF and info.value.filename == "/tmp"


def test_a_missing_function_is_enosys():
    assert libc_function("no_such_function_in_libc") is None
    with pytest.raises(OSError) as info:
        libc_call("no_such_function_in_libc", ())
    assert info.value.errno == errno.ENOSYS and "no_such_function_in_libc" in str(info.value)
