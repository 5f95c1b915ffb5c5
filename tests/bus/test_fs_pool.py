"""An fs pool on a real loop device: build (refusing to format data), mount, volumes,
unmount, and a restart while mounted."""

import os
import subprocess

import pytest

from tests.bus.helpers import POOL, VOLUME, fs_pool_xml, raw_volume_xml
from tests.harness.loop import LoopDevice

E = "org.example.Storage.Error."


@pytest.fixture
def loop(tmp_path):
    try:
        dev = LoopDevice(tmp_path / "disk.img", 300 << 20)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no loop device: {e}")
    try:
        yield dev
    finally:
        dev.detach()


def _mounted_at(target) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(target):
                return fields[fields.index("-") + 1]
    return None


def _blkid_type(dev) -> str:
    res = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip()


async def test_fs_pool_life_cycle(svc, loop):
    target = svc.workdir / "mnt"
    subprocess.run(["mkfs.ext4", "-q", "-F", loop.path], check=True)
    xml = fs_pool_xml("fsp", loop.path, target, "xfs")
    pool = await svc.manager("DefinePool", "sa{sv}", xml, {})

    # the device holds ext4: refused without overwrite, nothing changed
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {})
    assert err.type == E + "InvalidState" and "ext4" in err.text and "overwrite" in err.text
    assert _blkid_type(loop.path) == "ext4"

    await svc.call(pool, POOL, "Build", "a{sv}", {"overwrite": svc.variant("b", True)})
    assert _blkid_type(loop.path) == "xfs"

    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert _mounted_at(target) == "xfs"
    props = await svc.props(pool, POOL)
    assert props["State"] == "running"
    assert 200 << 20 < props["Capacity"] <= 300 << 20   # xfs keeps a log

    # mounted: Build with overwrite is still refused (wrong state), Delete too
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {"overwrite": svc.variant("b", True)})
    assert err.type == E + "InvalidState"

    xml = raw_volume_xml("a.img", "100", "MiB")
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", xml, {})
    assert (target / "a.img").stat().st_size == 100 << 20
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 150 << 20, {})
    err = await svc.call_error(pool, POOL, "CreateVolume", "sa{sv}",
                               raw_volume_xml("b.img", "1", "GiB", allocation=1 << 30), {})
    assert err.type == E + "NoSpace"
    assert not (target / "b.img").exists()

    # restart while mounted: still running, same volume
    svc.daemon.kill9()
    await svc.restart()
    assert (await svc.props(pool, POOL))["State"] == "running"
    assert (await svc.props(vol, VOLUME))["Capacity"] == 150 << 20

    # a busy filesystem is not unmounted behind the user's back
    holder = subprocess.Popen(["sleep", "60"], cwd=target)
    try:
        err = await svc.call_error(pool, POOL, "Destroy", "a{sv}", {})
        assert err.type == E + "Busy", err.text
        assert _mounted_at(target) == "xfs"
    finally:
        holder.kill()
        holder.wait()

    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert _mounted_at(target) is None
    assert (await svc.props(pool, POOL))["State"] == "inactive"
    await svc.call(pool, POOL, "Delete", "a{sv}", {})
    assert _blkid_type(loop.path) == ""


async def test_fs_build_refuses_mounted_device(svc, loop, tmp_path):
    subprocess.run(["mkfs.ext4", "-q", "-F", loop.path], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["mount", loop.path, str(elsewhere)], check=True)
    try:
        pool = await svc.manager("DefinePool", "sa{sv}",
                                 fs_pool_xml("m", loop.path, svc.workdir / "m"), {})
        err = await svc.call_error(pool, POOL, "Build", "a{sv}",
                                   {"overwrite": svc.variant("b", True)})
        assert err.type == E + "Busy", err.text
        assert _blkid_type(loop.path) == "ext4"
    finally:
        subprocess.run(["umount", str(elsewhere)], check=True)


async def test_fs_pool_not_a_block_device(svc, tmp_path):
    fake = tmp_path / "not-a-device"
    fake.write_bytes(b"\0" * 4096)
    xml = fs_pool_xml("nb", str(fake), tmp_path / "t")
    pool = await svc.manager("DefinePool", "sa{sv}", xml, {})
    err = await svc.call_error(pool, POOL, "Build", "a{sv}", {})
    assert err.type == E + "InvalidArgument", err.text
    assert fake.read_bytes() == b"\0" * 4096
    assert os.path.exists(fake)
