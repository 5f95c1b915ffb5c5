"""The unit tests of adapter/bus.py's own marshalling and hooks, run again with dbus-fast as
the library (EXAMPLE_STORAGE_DBUS=dbus-fast picks it when bus.py is imported, so in a
process of their own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = ["tests/unit/test_bus_marshal.py", "tests/unit/test_bus_members.py",
         "tests/unit/test_bus_writer.py", "tests/unit/test_bus_reply.py",
         "tests/bus/test_method_replies.py", "tests/unit/test_bus_export_checks.py"]


def test_bus_unit_tests_pass_with_dbus_fast():
    pytest.importorskip("dbus_fast")
    env = dict(os.environ, EXAMPLE_STORAGE_DBUS="dbus-fast")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout
