"""The umockdev lane: hardware this machine lacks (SCSI disks with WWN/serial, multipath
maps), faked by umockdev, seen by the real daemon running under ``umockdev-wrapper``.

- ``testbed`` -> Testbed: a testbed_driver.py process (under umockdev-wrapper) that owns
  the umockdev testbed; ``testbed.request(op, **args)`` drives it.
- ``mock_service(records, links)`` -> Service (tests/bus/conftest.py) whose daemon sees
  only the testbed's /sys (and /dev where the testbed has a node).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bus.conftest import Service
from tests.harness.bus import PrivateBus
from tests.harness.daemon import StorageDaemon
from tests.harness.procs import stop_child

DRIVER = Path(__file__).with_name("testbed_driver.py")
WRAPPER = "umockdev-wrapper"


def _umockdev_missing() -> str | None:
    if shutil.which(WRAPPER) is None:
        return "umockdev is not installed (scripts/bootstrap installs umockdev)"
    check = subprocess.run(
        [sys.executable, "-c",
         "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev"],
        capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        return ("umockdev's GObject introspection data is missing "
                f"(gir1.2-umockdev-1.0): {check.stderr.strip().splitlines()[-1:]}")
    return None


class Testbed:
    """Talks to testbed_driver.py; the driver's reply to each request is awaited."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [WRAPPER, sys.executable, str(DRIVER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        first = self.proc.stdout.readline()
        if not first:
            self.proc.wait(10)
            raise RuntimeError(f"umockdev testbed driver exited with {self.proc.returncode}")
        self.root = json.loads(first)["root"]

    def request(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"testbed driver died during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"testbed {op} failed: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request("quit")
                self.proc.wait(10)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                pass
        stop_child(self.proc, 5)
        # the testbed removes its dir when it is finalized; make sure of it
        if self.root.startswith("/tmp/umockdev.") and os.path.isdir(self.root):
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def testbed():
    if os.geteuid() != 0:
        pytest.skip("the service runs as root")
    why = _umockdev_missing()
    if why:
        pytest.skip(why)
    bed = Testbed()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
async def mock_service(tmp_path, testbed):
    """Start the daemon under umockdev-wrapper on the testbed as it is now."""
    started: list[tuple[PrivateBus, StorageDaemon, Service]] = []

    async def start(*extra_args: str) -> Service:
        bus = PrivateBus().start()
        daemon = StorageDaemon(bus, tmp_path, wrapper=[WRAPPER], extra_args=extra_args,
                               env={"UMOCKDEV_DIR": testbed.root})
        service = Service(bus, daemon, tmp_path)
        started.append((bus, daemon, service))
        daemon.start()
        await service.connect()
        return service

    try:
        yield start
    finally:
        for bus, daemon, service in started:
            await service.close()
            daemon.stop()
            bus.stop()
