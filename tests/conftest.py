"""Fixtures shared by every test, built on ``tests/harness``.

Each fixture stops what it started (by PID) even when the test fails. What needs root is
skipped with a reason when the tests do not run as root; loop devices are skipped when
``losetup -f`` finds no free device.

- ``private_bus`` -> PrivateBus (system policy + dbus/org.example.Storage.conf)
- ``mock_polkit`` -> MockPolkit (``.bus``: its own PrivateBus); ``mock_polkit_bus`` -> that bus
- ``real_polkit`` -> RealPolkitd (``.bus``); ``real_polkit_bus`` -> that bus   [root]
- ``storaged(bus, *, name="storaged", **kw)`` -> started StorageDaemon in tmp_path/name [root]
- ``test_user`` -> TestUser (session scope)                                       [root]
- ``loop_device(size_bytes=64 MiB, *, name=None)`` -> LoopDevice                  [root]
- ``dbus_client(address_or_bus)`` -> connected dbus-next MessageBus (async)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dbus_next.aio import MessageBus

from tests.harness.bus import PrivateBus
from tests.harness.client import connect
from tests.harness.daemon import StorageDaemon
from tests.harness.loop import LoopDevice
from tests.harness.polkit import POLKITD, MockPolkit, RealPolkitd, mock_polkit_conf
from tests.harness.users import TestUser

IS_ROOT = os.geteuid() == 0
_DAEMONS = pytest.StashKey[list[StorageDaemon]]()


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (CI cancelling, ``timeout``) ends the run like Ctrl-C: pytest then still
    tears the fixtures down, so no bus, polkitd, daemon, user or loop device is left."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def require_root(what: str) -> None:
    """Skip the current test unless we run as root."""
    if not IS_ROOT:
        pytest.skip(f"{what} needs root (euid is {os.geteuid()})")


def _need_tool(tool: str) -> None:
    if shutil.which(tool) is None and not os.access(tool, os.X_OK):
        pytest.skip(f"{tool} is not installed (run scripts/bootstrap)")


# -- buses and polkit ----------------------------------------------------------------------
@pytest.fixture
def private_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    """A fresh private system bus; DBUS_SYSTEM_BUS_ADDRESS points at it during the test."""
    _need_tool("dbus-daemon")
    with PrivateBus() as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        yield bus


@pytest.fixture
def mock_polkit(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockPolkit]:
    """python-dbusmock's polkitd on its own private bus (which lets us own the polkit
    name). Refuses every action until ``set_allowed([...])``."""
    _need_tool("dbus-daemon")
    with PrivateBus(mock_polkit_conf()) as bus, MockPolkit(bus) as mock:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        yield mock


@pytest.fixture
def mock_polkit_bus(mock_polkit: MockPolkit) -> PrivateBus:
    """The private bus on which ``mock_polkit`` runs."""
    return mock_polkit.bus


@pytest.fixture
def real_polkit(monkeypatch: pytest.MonkeyPatch) -> Iterator[RealPolkitd]:
    """The real polkitd on its own private bus, with the project's actions installed.
    ``real_polkit.grant(user, [actions])`` lets a user through (removed at teardown)."""
    require_root("real polkitd (installs the .policy, writes rules, drops to 'polkitd')")
    _need_tool(POLKITD)
    with PrivateBus() as bus, RealPolkitd(bus) as polkitd:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        yield polkitd


@pytest.fixture
def real_polkit_bus(real_polkit: RealPolkitd) -> PrivateBus:
    """The private bus on which ``real_polkit`` runs."""
    return real_polkit.bus


# -- the daemon under test -----------------------------------------------------------------
@pytest.fixture
def storaged(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., StorageDaemon]]:
    """Factory: ``storaged(bus, *, name="storaged", **kwargs)`` starts the daemon on ``bus``
    with its state in ``tmp_path/name`` and returns the StorageDaemon (kwargs go to
    StorageDaemon). Every daemon is stopped at teardown; a failing test's report gets the
    daemons' logs."""
    started: list[StorageDaemon] = []
    request.node.stash[_DAEMONS] = started

    def start(bus: PrivateBus, *, name: str = "storaged", **kwargs: Any) -> StorageDaemon:
        require_root("the storage daemon (only root may own org.example.Storage)")
        daemon = StorageDaemon(bus, tmp_path / name, **kwargs)
        started.append(daemon)
        return daemon.start()

    yield start
    errors = []
    for daemon in reversed(started):
        try:
            daemon.stop()
        except Exception as e:  # keep stopping the others
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    """Attach the logs of the test's daemons to the report of a failing test."""
    report = yield
    if report.failed:
        for i, daemon in enumerate(item.stash.get(_DAEMONS, [])):
            report.sections.append(
                (f"storaged #{i} log ({daemon.log_path})", daemon.log_tail(200))
            )
    return report


# -- host resources ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def test_user() -> Iterator[TestUser]:
    """A throw-away system user (no home, nologin), deleted at the end of the session."""
    require_root("creating a user")
    user = TestUser()
    try:
        yield user
    finally:
        user.remove()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[..., LoopDevice]]:
    """Factory: ``loop_device(size_bytes=64 MiB, *, name=None)`` attaches a sparse image
    from tmp_path; every device is unmounted and detached at teardown."""
    require_root("loop devices")
    _need_tool("losetup")
    probe = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no free loop device: losetup -f: {probe.stderr.strip()}")
    devices: list[LoopDevice] = []

    def make(size_bytes: int = 64 << 20, *, name: str | None = None) -> LoopDevice:
        image = tmp_path / "loop-images" / (name or f"disk{len(devices)}.img")
        dev = LoopDevice(image, size_bytes)
        devices.append(dev)
        return dev

    yield make
    errors = []
    for dev in reversed(devices):
        try:
            dev.detach()
        except Exception as e:  # keep detaching the others
            errors.append(e)
    if errors:
        raise errors[0]


# -- clients -------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def dbus_client() -> AsyncIterator[Callable[[str | PrivateBus], Awaitable[MessageBus]]]:
    """Factory: ``await dbus_client(bus_or_address)`` -> a connected dbus-next MessageBus;
    all are disconnected at teardown."""
    buses: list[MessageBus] = []

    async def make(target: str | PrivateBus) -> MessageBus:
        address = target.address if isinstance(target, PrivateBus) else target
        bus = await connect(address)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        if bus.connected:
            bus.disconnect()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``vm`` run only inside the VM lane's guest (tests/vm/lane.py)."""
    from tests.vm.guest import skip_vm_tests_outside

    skip_vm_tests_outside(items)
