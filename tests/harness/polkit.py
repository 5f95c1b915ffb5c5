"""polkit on a private bus: python-dbusmock's polkitd template, or the real polkitd.

- ``MockPolkit``: decides by action id only (``set_allowed``), anyone is "allowed" alike.
  Its bus must let the current user own ``org.freedesktop.PolicyKit1``
  (``MOCK_POLKIT_CONF``).
- ``RealPolkitd``: Debian's ``/usr/lib/polkit-1/polkitd`` with the project's ``.policy``
  installed, and JS rules (``grant``) to let a test user through. Without logind every
  non-root caller is ``active=false, local=false`` (only ``allow_any`` applies, i.e.
  ``auth_admin`` for all our actions: refused, ``is_challenge`` true); root always passes.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from .bus import REPO, PrivateBus, allow_own_snippet, wait_for_name
from .busctl import busctl
from .procs import pid_alive, stop_child

POLKIT_NAME = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY_IFACE = "org.freedesktop.PolicyKit1.Authority"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
CHECK_SIGNATURE = "(sa{sv})sa{ss}us"

POLKITD = "/usr/lib/polkit-1/polkitd"
PROJECT_POLICY = REPO / "policy" / "org.example.storage.policy"
INSTALLED_POLICY = Path("/usr/share/polkit-1/actions/org.example.storage.policy")
RULES_DIR = Path("/etc/polkit-1/rules.d")
# Book-keeping shared by concurrent test runs on this machine (see _PolicyInstall).
STATE_DIR = Path("/run/example-storage-tests/polkit-policy")


def mock_polkit_conf(user: str | None = None) -> dict[str, str]:
    """Extra bus conf letting ``user`` (default: the current user) own the polkit name."""
    user = user or pwd.getpwuid(os.geteuid()).pw_name
    return {"estest-mock-polkit.conf": allow_own_snippet(POLKIT_NAME, user)}


class AuthResult(NamedTuple):
    """The ``(bba{ss})`` answer of CheckAuthorization."""

    is_authorized: bool
    is_challenge: bool
    details: dict[str, str]


def _parse_check_reply(data: object) -> AuthResult:
    # busctl --json=short: {"type": "(bba{ss})", "data": [[authorized, challenge, {...}]]}
    assert isinstance(data, dict), data
    authorized, challenge, details = data["data"][0]
    return AuthResult(bool(authorized), bool(challenge), dict(details))


def check_authorization_as(address: str, user: str, action: str, timeout: float = 30) -> AuthResult:
    """Ask CheckAuthorization(action) *as* ``user``, for the asking process itself.

    A fresh ``busctl`` runs under ``runuser -u USER``; its subject is ``unix-process`` with
    its own PID (``exec`` keeps the shell's ``$$``) and uid, so polkit lets it ask.
    No interaction is allowed (flags 0).
    """
    uid = pwd.getpwnam(user).pw_uid
    script = (
        'exec busctl --address="$1" --json=short call '
        f"{POLKIT_NAME} {AUTHORITY_PATH} {AUTHORITY_IFACE} CheckAuthorization "
        f"'{CHECK_SIGNATURE}' unix-process 3 pid u $$ start-time t 0 uid i \"$2\" "
        '"$3" 0 0 ""'
    )
    res = subprocess.run(
        ["runuser", "-u", user, "--", "/bin/sh", "-c", script, "sh", address, str(uid), action],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"CheckAuthorization as {user} failed: {res.stderr.strip()}")
    return _parse_check_reply(json.loads(res.stdout))


def check_authorization_bus_name(
    address: str, bus_name: str, action: str, timeout: float = 30
) -> AuthResult:
    """Ask CheckAuthorization(action) as the current user for subject system-bus-name."""
    res = busctl(
        address,
        "--json=short",
        "call",
        POLKIT_NAME,
        AUTHORITY_PATH,
        AUTHORITY_IFACE,
        "CheckAuthorization",
        CHECK_SIGNATURE,
        "system-bus-name",
        "1",
        "name",
        "s",
        bus_name,
        action,
        "0",
        "0",
        "",
        timeout=timeout,
    )
    return _parse_check_reply(json.loads(res.stdout))


_LIVE: set[_Service] = set()


@atexit.register
def _stop_all() -> None:  # last resort: a polkit nobody stopped
    for service in list(_LIVE):
        service.stop()


class _Service:
    """A child process that owns a bus name; stopped by PID."""

    name = POLKIT_NAME
    label = "service"

    def __init__(self, bus: PrivateBus) -> None:
        self.bus = bus
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as self
            prefix=f"estest-{self.label}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _spawn(self, argv: Sequence[str], timeout: float = 15) -> None:
        if not self.bus.address:
            raise RuntimeError("the bus is not started")
        self.proc = subprocess.Popen(
            list(argv),
            env=self.bus.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
        )
        _LIVE.add(self)
        if not wait_for_name(self.bus.address, self.name, timeout, alive=[self.proc]):
            rc = self.proc.poll()
            self._stop_proc()
            raise RuntimeError(
                f"{self.label} did not own {self.name} within {timeout}s (exit code {rc}):\n"
                + self.log()
            )

    def _stop_proc(self) -> None:
        if self.proc is not None:
            stop_child(self.proc)

    def log(self) -> str:
        """What the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop the process by PID (idempotent) and remove its log."""
        self._stop_proc()
        _LIVE.discard(self)
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MockPolkit(_Service):
    """``python3 -m dbusmock --system --template polkitd`` on ``bus``.

    By default every action is refused; ``set_allowed`` lists those that pass.
    The bus must have been started with ``mock_polkit_conf()`` among its extra confs.
    """

    label = "mock-polkit"

    def start(self, timeout: float = 15) -> MockPolkit:
        self._spawn(
            ["/usr/bin/python3", "-m", "dbusmock", "--system", "--template", "polkitd"], timeout
        )
        return self

    def __enter__(self) -> MockPolkit:
        return self.start()

    def _mock_call(self, member: str, signature: str, *args: str) -> None:
        busctl(self.bus.address, "call", POLKIT_NAME, AUTHORITY_PATH, MOCK_IFACE, member,
               signature, *args)

    def set_allowed(self, actions: Sequence[str]) -> None:
        """Only these action ids are authorized from now on (for every subject)."""
        self._mock_call("SetAllowed", "as", str(len(actions)), *actions)

    def allow_unknown(self, allow: bool) -> None:
        """Authorize (or not) every action not listed by ``set_allowed``."""
        self._mock_call("AllowUnknown", "b", "true" if allow else "false")

    def set_delay(self, seconds: float) -> None:
        """Make CheckAuthorization answer after ``seconds``."""
        self._mock_call("SetDelay", "d", repr(float(seconds)))

    def simulate_hang(self, hang: bool) -> None:
        """Make CheckAuthorization never answer (until ``release_hanging_calls``)."""
        self._mock_call("SimulateHang", "b", "true" if hang else "false")

    def release_hanging_calls(self) -> None:
        self._mock_call("ReleaseHangingCalls", "")


class _PolicyInstall:
    """Installs the project's .policy into /usr/share/polkit-1/actions for as long as any
    test run on this machine needs it, then restores what was there before (or removes it).

    Concurrent runs are counted with holder files (one per installer, named by PID) under an
    ``flock``; holders whose PID is gone are pruned, so a killed run does not pin the file.
    """

    def __init__(self) -> None:
        self.holder: Path | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Path]:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "holders").mkdir(exist_ok=True)
        with open(STATE_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            holders = STATE_DIR / "holders"
            for h in holders.iterdir():
                pid = h.name.split("-", 1)[0]
                if not pid.isdigit() or not pid_alive(int(pid)):
                    h.unlink(missing_ok=True)
            yield holders

    def install(self) -> None:
        with self._locked() as holders:
            backup, record = STATE_DIR / "original.policy", STATE_DIR / "original.state"
            if not any(holders.iterdir()) and not record.exists():
                # First user: remember what the host had. (A record left by a run that was
                # killed is kept: the file it saw was the original, not ours.)
                backup.unlink(missing_ok=True)
                if INSTALLED_POLICY.exists():
                    shutil.copy2(INSTALLED_POLICY, backup)
                record.write_text("present" if backup.exists() else "absent")
            self.holder = holders / f"{os.getpid()}-{secrets.token_hex(4)}"
            self.holder.touch()
            tmp = INSTALLED_POLICY.with_name(f".{INSTALLED_POLICY.name}.{secrets.token_hex(4)}")
            shutil.copyfile(PROJECT_POLICY, tmp)
            tmp.chmod(0o644)
            tmp.replace(INSTALLED_POLICY)

    def uninstall(self) -> None:
        if self.holder is None:
            return
        with self._locked() as holders:
            self.holder.unlink(missing_ok=True)
            self.holder = None
            if any(holders.iterdir()):
                return
            backup, record = STATE_DIR / "original.policy", STATE_DIR / "original.state"
            if record.exists() and record.read_text() == "present" and backup.exists():
                backup.replace(INSTALLED_POLICY)
            else:
                INSTALLED_POLICY.unlink(missing_ok=True)
            backup.unlink(missing_ok=True)
            record.unlink(missing_ok=True)


class PolkitGrant:
    """A JS rule in /etc/polkit-1/rules.d granting ``user`` the ``actions``; ``remove()``
    (or leaving the ``with`` block) deletes it."""

    def __init__(self, polkitd: RealPolkitd, user: str, actions: Sequence[str]) -> None:
        self.polkitd = polkitd
        self.user = user
        self.actions = list(actions)
        self.path = RULES_DIR / f"50-example-storage-test-{secrets.token_hex(6)}.rules"

    def write(self, timeout: float = 5) -> PolkitGrant:
        rule = (
            "// written by the org.example.Storage test harness; removed after the test\n"
            "polkit.addRule(function(action, subject) {\n"
            f"    if (subject.user == {json.dumps(self.user)} &&\n"
            f"        {json.dumps(self.actions)}.indexOf(action.id) >= 0) {{\n"
            "        return polkit.Result.YES;\n"
            "    }\n"
            "});\n"
        )
        RULES_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("." + self.path.name)
        tmp.write_text(rule)
        tmp.chmod(0o644)
        tmp.replace(self.path)
        if self.actions:
            self.polkitd.wait_authorized(self.user, self.actions[0], True, timeout)
        return self

    def remove(self, timeout: float = 5) -> None:
        """Delete the rule file and wait until polkitd has dropped it. Idempotent."""
        if not self.path.exists():
            return
        self.path.unlink()
        if self.actions and self.polkitd.running:
            self.polkitd.wait_authorized(self.user, self.actions[0], False, timeout)

    def __enter__(self) -> PolkitGrant:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


class RealPolkitd(_Service):
    """Debian's polkitd (``--no-debug``) on ``bus``, with the project's actions installed.

    It drops to user ``polkitd``; the stock ``/usr/share/dbus-1/system.d`` conf (which
    ``PrivateBus`` includes) lets that user own the name. Needs root.
    """

    label = "polkitd"

    def __init__(self, bus: PrivateBus) -> None:
        super().__init__(bus)
        self._policy = _PolicyInstall()
        self.grants: list[PolkitGrant] = []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15) -> RealPolkitd:
        if os.geteuid() != 0:
            raise PermissionError("RealPolkitd needs root")
        self._policy.install()
        try:
            self._spawn([POLKITD, "--no-debug"], timeout)
        except BaseException:
            self._policy.uninstall()
            raise
        return self

    def __enter__(self) -> RealPolkitd:
        return self.start()

    def grant(self, user: str, actions: Sequence[str], timeout: float = 5) -> PolkitGrant:
        """Write a rule letting ``user`` do ``actions``; returns once polkitd applies it.

        The result is also a context manager; all grants are removed by ``stop()``.
        """
        g = PolkitGrant(self, user, actions)
        self.grants.append(g)
        return g.write(timeout)

    def check_as(self, user: str, action: str) -> AuthResult:
        """CheckAuthorization(action) asked by a process of ``user`` for itself."""
        return check_authorization_as(self.bus.address, user, action)

    def wait_authorized(self, user: str, action: str, expected: bool, timeout: float) -> None:
        """Poll ``check_as`` until its ``is_authorized`` equals ``expected``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.check_as(user, action)
            if result.is_authorized == expected:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"polkitd did not {'apply' if expected else 'drop'} the rule for "
                    f"{user}/{action} within {timeout}s (last answer {result})"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Remove every grant, stop polkitd by PID, restore the actions dir. Idempotent."""
        try:
            for g in self.grants:
                with contextlib.suppress(Exception):
                    g.remove(timeout=2)
                g.path.unlink(missing_ok=True)
            self.grants.clear()
        finally:
            try:
                super().stop()
            finally:
                self._policy.uninstall()


__all__ = [
    "AUTHORITY_IFACE",
    "AUTHORITY_PATH",
    "POLKIT_NAME",
    "AuthResult",
    "MockPolkit",
    "PolkitGrant",
    "RealPolkitd",
    "check_authorization_as",
    "check_authorization_bus_name",
    "mock_polkit_conf",
]
