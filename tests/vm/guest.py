"""Helpers for tests that run INSIDE the VM lane's guest (``@pytest.mark.vm``).

- ``IN_VM``: True in the guest (its init sets ``EXAMPLE_STORAGE_IN_VM=1``).
- ``skip_vm_tests_outside(items)``: the collection hook body that skips ``vm``-marked tests
  on the host.
- ``run(argv, env=...)``: a checked command with a timeout and its output in the error.

LVM in the guest: ``tests.harness.lvm.PrivateLvm`` (udev off, only the test's devices
visible; activation on, since the guest has device-mapper). dmsetup in the guest needs
``DM_DISABLE_UDEV=1`` to create its /dev/mapper nodes itself (there is no udevd).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence

import pytest

IN_VM = os.environ.get("EXAMPLE_STORAGE_IN_VM") == "1"
SKIP_REASON = (
    "runs inside the VM lane's guest (EXAMPLE_STORAGE_IN_VM=1): tests/vm/test_vm_lane.py "
    "boots it; by hand: scripts/vm-test <selection>"
)


def skip_vm_tests_outside(items: Iterable[pytest.Item]) -> None:
    """Mark every ``vm`` test skipped unless we are in the guest."""
    if IN_VM:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(skip)


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        timeout: float = 120) -> str:
    """Run ``argv`` (no shell, LC_ALL=C, stdin closed); stdout, or AssertionError with
    the command's stderr."""
    full_env = dict(os.environ, LC_ALL="C", **(env or {}))
    res = subprocess.run(
        list(argv), env=full_env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout, check=False,
    )
    assert res.returncode == 0, (
        f"{' '.join(argv)} -> exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    )
    return res.stdout
