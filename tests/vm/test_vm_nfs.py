"""Real kernel NFS mounts: nfs-ganesha on the host's 127.0.0.1, the guest (VM lane, user-mode
networking) mounts it from 10.0.2.2 and runs tests/vm_guest/test_netfs_guest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.ganesha import Ganesha, ganesha_missing
from tests.vm.lane import VmLane
from tests.vm.test_vm_lane import junit_summary

TIMEOUT = 900


def test_netfs_pool_on_a_real_nfs_mount_in_the_vm(vm_lane: VmLane, tmp_path: Path) -> None:
    missing = ganesha_missing()
    if missing:
        pytest.skip(missing)
    with Ganesha(tmp_path / "ganesha") as server:
        res = vm_lane.run(
            ["tests/vm_guest/test_netfs_guest.py", "-q", "-ra"], timeout=TIMEOUT,
            workdir=tmp_path / "vm", net=True,
            env={"VM_NFS_PORT": str(server.port)},
        )
        log = server.log_text()
    assert res.returncode == 0, (
        f"guest pytest exited {res.returncode} after {res.seconds:.0f} s\n"
        f"--- guest output ---\n{res.output}\n--- guest console (tail) ---\n"
        f"{res.console[-3000:]}\n--- ganesha log (tail) ---\n{log[-2000:]}"
    )
    total, skipped = junit_summary(res.junit_xml_path)
    assert total > 0, f"the guest ran no test\n{res.output}"
    assert not skipped, f"skipped in the guest: {skipped}"
