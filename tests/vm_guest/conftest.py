"""Tests in this directory run INSIDE the VM lane's guest (a real Debian kernel with
device-mapper, NFS and iSCSI drivers). On the host they are skipped; tests/vm/test_vm_lane.py
runs the whole directory in one boot. Mark every test here ``@pytest.mark.vm``.

Fixtures:
- ``scratch_disk`` -> "/dev/vda", the guest's virtio scratch disk, its first MiB zeroed.
"""

from __future__ import annotations

import os

import pytest

from tests.vm.guest import IN_VM


@pytest.fixture
def scratch_disk() -> str:
    """The guest's scratch disk, its first MiB zeroed (the guest is disposable)."""
    assert IN_VM, "scratch_disk is for tests running in the VM lane"
    dev = "/dev/vda"
    if not os.path.exists(dev):
        pytest.fail(f"{dev} is missing: boot the lane with a scratch disk", pytrace=False)
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.write(fd, bytes(1 << 20))
        os.fsync(fd)
    finally:
        os.close(fd)
    return dev


@pytest.fixture
async def guest_svc(tmp_path):
    """The storage daemon on a private bus inside the guest (kernel uevents: no udevd
    there), with a connected client (tests/bus/conftest.py's Service)."""
    from tests.bus.conftest import Service
    from tests.harness.bus import PrivateBus
    from tests.harness.daemon import StorageDaemon

    bus = PrivateBus().start()
    daemon = StorageDaemon(bus, tmp_path, extra_args=["--udev-source", "kernel"])
    service = Service(bus, daemon, tmp_path)
    try:
        daemon.start(timeout=120)   # Python starts slowly under TCG
        await service.connect()
        yield service
    finally:
        await service.close()
        daemon.stop()
        bus.stop()
