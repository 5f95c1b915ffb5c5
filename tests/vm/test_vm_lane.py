"""Run the guest selection (tests/vm_guest) inside the VM lane: one boot for all of it.

The guest's pytest exit status is this test's verdict; its output is shown on failure and
tests skipped inside the guest are reported here as warnings (so they are never silent).
The guest gets user-mode networking and a host TCP server to reach at 10.0.2.2 (port in
``VM_LANE_HOST_PORT``), the way the NFS and iSCSI lanes reach ganesha and tgtd.
"""

from __future__ import annotations

import socket
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.lane import VmLane

# Everything that needs a real kernel, in one boot: the lane's own checks and the LVM
# tests that skip on the host for want of device-mapper (activation, snapshots, thin,
# pvmove, wipe and clone through device nodes).
GUEST_SELECTION = [
    "tests/vm_guest", "tests/unit/test_logical_backend.py", "tests/bus/test_logical_pool.py",
    "tests/bus/test_logical_pool_dm.py", "-q", "-ra",
    # needs the host's ganesha: tests/vm/test_vm_nfs.py boots it with one
    "--ignore=tests/vm_guest/test_netfs_guest.py",
    # needs the host's tgtd: tests/vm/test_vm_iscsi.py boots it with one
    "--ignore=tests/vm_guest/test_kernel_iscsi.py",
]
TIMEOUT = 1500  # seconds for boot + the whole guest selection; qemu is killed after


def junit_summary(path: Path | None) -> tuple[int, list[str]]:
    """(number of tests run, "<test>: <reason>" for each skipped one)."""
    if path is None:
        return 0, []
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", "0")) for s in suites)
    skipped = []
    for case in root.iter("testcase"):
        skip = case.find("skipped")
        if skip is not None:
            skipped.append(f"{case.get('classname')}.{case.get('name')}: {skip.get('message')}")
    return total, skipped


@pytest.fixture
def host_greeter() -> Iterator[int]:
    """A TCP server on the host's loopback that greets each client; yields its port."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"vm-lane host\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def test_guest_selection_passes_in_the_vm(
    vm_lane: VmLane, host_greeter: int, tmp_path: Path
) -> None:
    res = vm_lane.run(
        GUEST_SELECTION, timeout=TIMEOUT, workdir=tmp_path, net=True,
        env={"VM_LANE_HOST_PORT": str(host_greeter)},
    )
    assert res.returncode == 0, (
        f"guest pytest exited {res.returncode} after {res.seconds:.0f} s\n"
        f"--- guest output ---\n{res.output}\n--- guest console (tail) ---\n"
        f"{res.console[-3000:]}"
    )
    total, skipped = junit_summary(res.junit_xml_path)
    assert total > 0, f"the guest ran no test\n{res.output}"
    for line in skipped:
        warnings.warn(f"skipped in the VM lane: {line}", stacklevel=1)
