"""Kernel iSCSI pools on a real kernel: tgtd on the host's 127.0.0.1, the guest (VM lane,
user-mode networking) logs in from 10.0.2.2 with open-iscsi and runs
tests/vm_guest/test_kernel_iscsi.py. While it runs, the guest changes the target through a
HostAgent (tests/vm/host_agent.py) serving tgtadm requests from the results share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness.tgtd import Tgtd, tgt_missing
from tests.vm.host_agent import HostAgent
from tests.vm.lane import VmLane
from tests.vm.test_vm_lane import junit_summary

TIMEOUT = 900


def target_handlers(tgtd: Tgtd, backing: Path) -> dict:
    """What the guest may ask of the host's tgtd."""

    def add_lun(iqn: str, lun: int, size: int, serial: str | None = None) -> None:
        tgtd.add_lun(iqn, lun, backing / f"{iqn.rsplit(':', 1)[-1]}-{lun}.img", size, serial)

    return {
        "add_target": lambda iqn: tgtd.add_target(iqn),
        "add_lun": add_lun,
        "remove_lun": lambda iqn, lun: tgtd.remove_lun(iqn, lun),
        "add_chap": lambda iqn, user, password: tgtd.add_chap(iqn, user, password),
    }


def test_kernel_iscsi_pools_in_the_vm(vm_lane: VmLane, tmp_path: Path) -> None:
    missing = tgt_missing()
    if missing:
        pytest.skip(missing)
    for tool in ("iscsiadm", "iscsid"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (open-iscsi; run scripts/bootstrap): the "
                        "guest runs the host's binaries")
    tgtd = Tgtd(tmp_path / "tgt").start()
    backing = tmp_path / "luns"
    backing.mkdir()
    workdir = tmp_path / "vm"
    try:
        with HostAgent(workdir / "results", target_handlers(tgtd, backing)) as agent:
            res = vm_lane.run(
                ["tests/vm_guest/test_kernel_iscsi.py", "-q", "-ra"], timeout=TIMEOUT,
                workdir=workdir, net=True, env={"VM_ISCSI_PORT": str(tgtd.port)},
            )
        log = tgtd.log.read_text(errors="replace") if tgtd.log.exists() else ""
    finally:
        tgtd.stop()
    assert res.returncode == 0, (
        f"guest pytest exited {res.returncode} after {res.seconds:.0f} s\n"
        f"--- guest output ---\n{res.output}\n--- guest console (tail) ---\n"
        f"{res.console[-3000:]}\n--- tgtd log (tail) ---\n{log[-2000:]}"
    )
    total, skipped = junit_summary(res.junit_xml_path)
    assert total > 0, f"the guest ran no test\n{res.output}"
    assert not skipped, f"skipped in the guest: {skipped}"
    assert any(op == "add_lun" for op, _ in agent.served), agent.served
