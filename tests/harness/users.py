"""Throw-away system users for tests that call the service as non-root."""

from __future__ import annotations

import pwd
import secrets
import subprocess
import time
from types import TracebackType


def _run_retrying(argv: list[str], attempts: int = 10) -> None:
    """Run a shadow-utils command, retrying while another process holds /etc/passwd's lock."""
    for i in range(attempts):
        res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode == 0:
            return
        if "lock" not in res.stderr or i == attempts - 1:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
        time.sleep(0.2 * (i + 1))


class TestUser:
    """``useradd -M -r -s /usr/sbin/nologin estest<6 hex>``; ``remove()`` runs ``userdel``
    (no ``-r``: the user has no home; nothing else is touched). Needs root."""

    __test__ = False  # not a pytest test class

    def __init__(self, prefix: str = "estest") -> None:
        self.name = f"{prefix}{secrets.token_hex(3)}"
        _run_retrying(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", self.name])
        entry = pwd.getpwnam(self.name)
        self.uid: int = entry.pw_uid
        self.gid: int = entry.pw_gid
        self._removed = False

    def remove(self) -> None:
        """Delete the user (idempotent)."""
        if self._removed:
            return
        self._removed = True
        _run_retrying(["userdel", self.name])

    def __enter__(self) -> TestUser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"TestUser({self.name!r}, uid={self.uid})"
