"""The daemon process: READY=1 to systemd, name requested last, clean SIGTERM."""

import socket
import subprocess
import sys

from tests.bus.helpers import POOL, raw_volume_xml
from tests.harness.bus import PrivateBus
from tests.harness.daemon import StorageDaemon


def test_notify_ready_and_sigterm(tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(15)
    bus = PrivateBus().start()
    daemon = StorageDaemon(bus, tmp_path / "d")
    try:
        proc = subprocess.Popen(daemon.argv(), env={**bus.env(), "NOTIFY_SOCKET": str(sock_path)},
                                stderr=subprocess.PIPE, text=True)
        try:
            data = sock.recv(256).decode()
            assert "READY=1" in data
            proc.terminate()
            assert proc.wait(timeout=15) == 0
            err = proc.stderr.read()
            assert "Traceback" not in err
            assert "STOPPING=1" in sock.recv(256).decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        sock.close()
        bus.stop()


async def test_second_instance_refuses_to_run(svc, tmp_path):
    other = StorageDaemon(svc.bus, tmp_path / "second")
    res = subprocess.run(other.argv(), env=svc.bus.env(), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1
    assert "owned by another process" in res.stderr and "Traceback" not in res.stderr
    assert await svc.manager("ListPools", "a{sv}", {}) == []     # the first one still answers


async def test_name_is_taken_after_objects_are_exported(svc):
    pool = await svc.running_dir_pool("early")
    for i in range(20):
        await svc.call(pool, POOL, "CreateVolume", "sa{sv}", raw_volume_xml(f"v{i}", "1", "KiB"),
                       {})
    svc.daemon.stop()
    # StorageDaemon.start returns as soon as the name has an owner: at that moment every
    # object must already be there.
    await svc.restart()
    objects = await svc.managed_objects()
    assert len([p for p in objects if "/volumes/" in p]) == 20


def test_bad_bus_address_is_one_line_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "example_storage.daemon", "--bus", "unix:path=/nonexistent/x",
         "--config-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "cannot run" in res.stderr and "Traceback" not in res.stderr
