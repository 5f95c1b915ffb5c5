"""Upload/Download of a logical volume (its device node needs device-mapper: the VM
lane). The LV's node is a symlink (/dev/VG/LV -> /dev/dm-N): the data must go through
it all the same, and a thick snapshot that could overflow makes Upload refuse."""

import os

import pytest

from tests.bus.conftest import Service
from tests.bus.helpers import POOL, VOLUME, raw_volume_xml
from tests.bus.test_logical_pool import logical_pool_xml
from tests.bus.test_volume_transfer import E, _sha, _sparse_file, _transfer, _transfer_error
from tests.harness.bus import PrivateBus
from tests.harness.daemon import StorageDaemon
from tests.harness.loop import LoopDevice
from tests.harness.lvm import PrivateLvm

pytestmark = pytest.mark.vm
MiB = 1 << 20


@pytest.fixture
async def lvm_guest(tmp_path):
    """(Service, a loop device path): the daemon with a private LVM config seeing only
    that device (as tests/bus/test_logical_pool.py's lvm_svc, with a start-up timeout
    for Python under TCG)."""
    dev = LoopDevice(tmp_path / "pv.img", 64 * MiB)
    conf = PrivateLvm(tmp_path / "lvm", [dev.path])
    bus = PrivateBus().start()
    daemon = StorageDaemon(bus, tmp_path / "daemon",
                           extra_args=["--lvm-system-dir", conf.system_dir,
                                       "--udev-source", "kernel"])
    service = Service(bus, daemon, tmp_path)
    try:
        daemon.start(timeout=120)
        await service.connect()
        yield service, dev.path
    finally:
        await service.close()
        daemon.stop()
        bus.stop()
        conf.cleanup()
        dev.detach()


async def test_logical_volume_upload_download(lvm_guest, tmp_path):
    svc, d0 = lvm_guest
    pool = await svc.manager("DefinePool", "sa{sv}", logical_pool_xml("xf", "vgxf", [d0]), {})
    await svc.call(pool, POOL, "Build", "a{sv}", {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("data", "16", "MiB"), {})
    node = (await svc.props(vol, VOLUME))["Path"]
    assert os.path.islink(node)
    src = tmp_path / "src.img"
    _sparse_file(src, 16 * MiB)
    fd = os.open(src, os.O_RDONLY)
    try:
        await _transfer(svc.client, vol, "Upload", fd, 0, 0)
    finally:
        os.close(fd)
    assert _sha(node, 16 * MiB) == _sha(src)
    out = tmp_path / "out.img"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        await _transfer(svc.client, vol, "Download", fd, 0, 0)
    finally:
        os.close(fd)
    assert _sha(out) == _sha(src) and out.stat().st_blocks * 512 <= 5 * MiB
    # a 4 MiB thick snapshot would overflow under a 16 MiB upload: refused, unchanged
    await svc.call(vol, VOLUME, "Snapshot", "sta{sv}", "snap", 4 * MiB, {})
    fd = os.open(src, os.O_RDONLY)
    try:
        err = await _transfer_error(svc.client, vol, "Upload", fd, 0, 0)
        assert err.type == E + "Busy" and "snap" in err.text
        await _transfer(svc.client, vol, "Upload", fd, 0, MiB)   # 1 MiB fits the snapshot
    finally:
        os.close(fd)
    assert _sha(node, 16 * MiB) == _sha(src)
