"""The ``vm_lane`` fixture: the prepared VM lane, one per session.

``vm_lane.run(pytest_args, **kwargs)`` boots the guest and runs ``pytest <pytest_args>``
in it (see ``tests.vm.lane.run_in_vm``). Skipped with the reason when this machine cannot
run qemu (not root, qemu/busybox-static/kmod not installed) and inside the guest itself;
a failure to prepare (download, unpack) is an error, not a skip.
"""

from __future__ import annotations

import pytest

from tests.vm import lane
from tests.vm.guest import IN_VM


@pytest.fixture(scope="session")
def vm_lane() -> lane.VmLane:
    if IN_VM:
        pytest.skip("already inside the VM lane's guest")
    try:
        image = lane.prepare()
    except lane.VmUnavailable as e:
        pytest.skip(f"VM lane unavailable: {e}")
    except lane.VmLaneError as e:
        pytest.fail(f"preparing the VM lane failed: {e}", pytrace=False)
    return lane.VmLane(image)
