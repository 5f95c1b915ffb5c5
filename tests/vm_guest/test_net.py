"""With ``net=True`` the guest reaches the host at 10.0.2.2 (qemu user networking): what the
NFS and iSCSI lanes use to reach ganesha/tgtd on the host (runs in the VM lane)."""

from __future__ import annotations

import os
import socket

import pytest

pytestmark = pytest.mark.vm


def test_guest_reaches_a_host_server_at_10_0_2_2() -> None:
    port = os.environ.get("VM_LANE_HOST_PORT")
    if not port:
        pytest.skip("VM_LANE_HOST_PORT is not set: boot with net=True and a host server "
                    "(tests/vm/test_vm_lane.py does)")
    with socket.create_connection(("10.0.2.2", int(port)), timeout=20) as conn:
        conn.settimeout(20)
        greeting = conn.recv(100)
    assert greeting == b"vm-lane host\n"
