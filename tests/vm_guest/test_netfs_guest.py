"""A netfs pool on a real kernel NFS mount (runs in the VM lane's guest).

The host side (tests/vm/test_vm_nfs.py) starts nfs-ganesha on the host's 127.0.0.1 and boots
the guest with user-mode networking: the guest reaches it at 10.0.2.2 on ``VM_NFS_PORT``;
a second, userspace client (nfs-ls) checks that volumes really land on the server.
Covered: Start mounts, volumes are created, resized and deleted on the server, a daemon
restart keeps the mounted pool running, Destroy of a busy mount names the holder and
``force`` unmounts it, a server that stops answering never stalls the daemon's other
calls, a mount that went away makes the pool inaccessible, autostart mounts at start-up.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.bus.helpers import POOL, VOLUME, dir_pool_xml, raw_volume_xml
from tests.vm.guest import run

pytestmark = pytest.mark.vm
E = "org.example.Storage.Error."
SERVER = "10.0.2.2"


def _nfs_mount_at(target: Path) -> tuple[str, str] | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(target):
                sep = fields.index("-")
                return fields[sep + 1], fields[sep + 2]
    return None


def netfs_pool_xml(name: str, target: Path, port: str) -> str:
    return (
        "<pool type='netfs' xmlns:fs='http://libvirt.org/schemas/storagepool/fs/1.0'>"
        f"<name>{name}</name><source><host name='{SERVER}'/><dir path='/export'/>"
        "<format type='nfs'/><protocol ver='4'/></source>"
        f"<target><path>{target}</path></target>"
        f"<fs:mount_opts><fs:option name='port={port}'/><fs:option name='minorversion=1'/>"
        "</fs:mount_opts></pool>"
    )


@pytest.fixture
def nfs_server() -> str:
    port = os.environ.get("VM_NFS_PORT")
    if not port:
        pytest.skip("VM_NFS_PORT is not set: tests/vm/test_vm_nfs.py boots "
                    "the guest with a ganesha on the host")
    for mod in ("nfs", "nfsv4"):
        subprocess.run(["modprobe", mod], check=False, capture_output=True, timeout=60)
    return port


@pytest.fixture(autouse=True)
def _leftovers():
    """After the daemon (guest_svc) has stopped: the blackhole route, any NFS mount."""
    yield
    run(["sh", "-c", "ip route del blackhole 10.0.2.2 2>/dev/null; "
                     "umount -f -l /var/tmp/estest-nfs-* 2>/dev/null; true"])


def _server_files(port: str) -> list[str]:
    """The export's file names as the server lists them to a second, userspace client
    (libnfs's nfs-ls), independent of the kernel mount and its caches."""
    res = subprocess.run(["nfs-ls", f"nfs://{SERVER}/export?version=4&nfsport={port}"],
                         capture_output=True, text=True, timeout=30, check=True)
    return [line.split(None, 5)[5] for line in res.stdout.splitlines() if line.strip()]


async def test_netfs_pool_on_a_real_nfs_mount(guest_svc, nfs_server, tmp_path):
    svc = guest_svc
    port = nfs_server
    target = Path(f"/var/tmp/estest-nfs-{os.getpid()}")
    pool = await svc.manager("DefinePool", "sa{sv}", netfs_pool_xml("nfs1", target, port), {})

    # Start mounts the export (creating the target)
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    fstype, source = _nfs_mount_at(target) or ("", "")
    assert fstype.startswith("nfs") and source.rstrip("/") == f"{SERVER}:/export"
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Capacity"] > 0

    # volumes land on the server: create, resize, delete
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("a.img", "8", "MiB"), {})
    assert "a.img" in _server_files(port)
    assert os.path.getsize(target / "a.img") == 8 << 20
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 16 << 20, {})
    assert (await svc.props(vol, VOLUME))["Capacity"] == 16 << 20
    assert os.path.getsize(target / "a.img") == 16 << 20
    await svc.call(vol, VOLUME, "Delete", "a{sv}", {})
    assert "a.img" not in _server_files(port)
    keep = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                          raw_volume_xml("keep.img", "1", "MiB"), {})

    # a daemon restart while mounted: still running, volume still listed
    svc.daemon.stop()
    svc.daemon.start(timeout=120)
    await svc.close()
    await svc.connect()
    props = await svc.props(pool, POOL)
    assert props["State"] == "running", props
    assert (await svc.props(keep, VOLUME))["Capacity"] == 1 << 20
    assert _nfs_mount_at(target) is not None

    # a busy mount: Destroy names the holder; force unmounts it anyway
    with open(target / "keep.img", "rb") as held:
        holder = subprocess.Popen(["sleep", "300"], stdin=held, cwd="/")
    try:
        err = await svc.call_error(pool, POOL, "Destroy", "a{sv}", {})
        assert err.type == E + "Busy", err.text
        assert f"sleep[{holder.pid}]" in err.text
        assert _nfs_mount_at(target) is not None
        await svc.call(pool, POOL, "Destroy", "a{sv}", {"force": svc.variant("b", True)})
        assert _nfs_mount_at(target) is None
        assert (await svc.props(pool, POOL))["State"] == "inactive"
        assert f"sleep[{holder.pid}]" in svc.daemon.log()
    finally:
        holder.kill()
        holder.wait()

    # a server that stops answering: the netfs call times out, other calls answer at once
    other = await svc.manager("DefinePool", "sa{sv}",
                              dir_pool_xml("other", tmp_path / "other"), {})
    await svc.call(other, POOL, "Build", "a{sv}", {})
    await svc.call(other, POOL, "Start", "a{sv}", {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    run(["ip", "route", "add", "blackhole", f"{SERVER}/32"])
    try:
        refresh = asyncio.ensure_future(svc.call_error(pool, POOL, "Refresh", "a{sv}", {}))
        await asyncio.sleep(0.5)
        for _ in range(3):
            t0 = time.monotonic()
            assert (await svc.props(other, POOL))["State"] == "running"
            await svc.call(other, POOL, "Refresh", "a{sv}", {})
            await svc.managed_objects()
            assert time.monotonic() - t0 < 1.0
        err = await asyncio.wait_for(refresh, 60)
        assert err.type == E + "TimedOut", err.text
        t0 = time.monotonic()
        await svc.call(pool, POOL, "Destroy", "a{sv}", {"force": svc.variant("b", True)})
        assert time.monotonic() - t0 < 60
        assert _nfs_mount_at(target) is None
    finally:
        run(["sh", "-c", "ip route del blackhole 10.0.2.2 2>/dev/null; true"])
    # the server is back: the pool starts again and its volume is there
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert (await svc.props(keep, VOLUME))["Capacity"] == 1 << 20

    # the mount goes away underneath: the next Refresh says so, the pool is inaccessible,
    # and Start mounts it again
    run(["umount", str(target)])
    err = await svc.call_error(pool, POOL, "Refresh", "a{sv}", {})
    assert err.type == E + "InvalidState" and "not mounted" in err.text, err.text
    assert (await svc.props(pool, POOL))["State"] == "inaccessible"
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    assert (await svc.props(pool, POOL))["State"] == "running"

    # autostart: the daemon mounts the pool when it starts
    await svc.call(pool, POOL, "SetAutostart", "ba{sv}", True, {})
    svc.daemon.stop()
    run(["umount", str(target)])
    svc.daemon.start(timeout=120)
    await svc.close()
    await svc.connect()
    assert (await svc.props(pool, POOL))["State"] == "running"
    assert _nfs_mount_at(target) is not None
    assert (await svc.props(keep, VOLUME))["Capacity"] == 1 << 20
    await svc.call(keep, VOLUME, "Delete", "a{sv}", {})
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    await svc.call(other, POOL, "Destroy", "a{sv}", {})
    assert "keep.img" not in _server_files(port)
