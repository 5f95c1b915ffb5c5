"""An fs pool follows its device on a real kernel (runs in the VM lane).

scsi_debug gives the guest a real SCSI disk. The test mounts an fs pool on it, deletes the
disk through sysfs (as a pulled cable or a lost LUN does: the kernel removes the device
under the mounted filesystem), and a subscribed client sees the DeviceRemoved signal and
the pool become inaccessible, without calling anything. After a rescan the disk is back,
Pool.Start brings the pool up again and the volume written before is intact.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import pytest

from tests.bus.helpers import POOL, VOLUME, fs_pool_xml, raw_volume_xml
from tests.vm.guest import run

pytestmark = pytest.mark.vm


def _scsi_debug_disk() -> tuple[str, str]:
    """(kernel name, scsi host dir) of the scsi_debug disk, loading the module."""
    # sd_mod makes the LUN a disk; without udev nothing loads it by modalias
    run(["modprobe", "sd_mod"])
    run(["modprobe", "scsi_debug", "dev_size_mb=96", "num_tgts=1", "max_luns=1"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        blocks = glob.glob("/sys/bus/pseudo/drivers/scsi_debug/adapter*/host*/target*/*/block/*")
        if blocks:
            name = os.path.basename(blocks[0])
            host = glob.glob("/sys/bus/pseudo/drivers/scsi_debug/adapter*/host*")[0]
            return name, os.path.basename(host)
        time.sleep(0.2)
    raise AssertionError("scsi_debug created no disk")


@pytest.fixture(autouse=True)
def _leftovers():
    """After the daemon (guest_svc) has stopped: the pool's mount, the scsi_debug disk."""
    yield
    run(["sh", "-c", "umount -l /var/tmp/estest-mnt-* 2>/dev/null; true"])
    run(["sh", "-c", "rmmod scsi_debug 2>/dev/null; true"])


async def test_fs_pool_follows_its_scsi_disk(guest_svc, tmp_path):
    svc = guest_svc
    name, host = _scsi_debug_disk()
    node = f"/dev/{name}"
    run(["mkfs.ext4", "-q", "-F", node])
    # The pool names the disk by a stable link, as /dev/disk/by-id/... would (no udevd in
    # the guest: the test keeps the link as udev would): the stale mount keeps the old
    # kernel name busy, so the disk comes back under another one.
    dev = str(tmp_path / "by-id-scsi-debug")
    os.symlink(node, dev)
    target = Path(f"/var/tmp/estest-mnt-{os.getpid()}")
    pool = await svc.manager("DefinePool", "sa{sv}", fs_pool_xml("sd", dev, target, "ext4"), {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("keep.img", "4", "MiB"), {})
    with open(target / "keep.img", "r+b") as f:
        f.write(b"still here")
        f.flush()
        os.fsync(f.fileno())
    device = await svc.manager("LookupDevice", "sa{sv}", node, {})
    rec = await svc.recorder()

    # the disk goes away under the mounted filesystem
    Path(f"/sys/block/{name}/device/delete").write_text("1")
    await rec.wait_for(lambda s: s.member == "DeviceRemoved" and s.body[0] == device,
                       timeout=60)
    await rec.wait_for(lambda s: s.member == "PropertiesChanged" and s.path == pool
                       and s.body[1].get("State") == "inaccessible", timeout=60)
    await rec.wait_for(lambda s: s.member == "InterfacesRemoved" and s.body[0] == vol,
                       timeout=60)
    props = await svc.props(pool, POOL)
    assert props["State"] == "inaccessible" and props["Active"] is False
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               raw_volume_xml("no.img", "1", "MiB"), {})
    assert err.type == "org.example.Storage.Error.InvalidState"

    # the disk comes back (same data: scsi_debug keeps it in RAM); Start recovers
    Path(f"/sys/class/scsi_host/{host}/scan").write_text("- - -")
    deadline = time.monotonic() + 30
    back = []
    while not back and time.monotonic() < deadline:
        back = glob.glob("/sys/bus/pseudo/drivers/scsi_debug/adapter*/host*/target*/*/block/*")
        time.sleep(0.2)
    assert back, "the disk did not come back after the rescan"
    os.unlink(dev)
    os.symlink(f"/dev/{os.path.basename(back[0])}", dev)
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert (await svc.props(pool, POOL))["State"] == "running"
    assert (await svc.props(vol, VOLUME))["Capacity"] == 4 << 20
    assert (target / "keep.img").read_bytes()[:10] == b"still here"
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
