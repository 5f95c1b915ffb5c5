"""Secrets (CHAP passwords) that pool XML names by usage or UUID.

Layout: ``CONFIG_DIR/secrets/`` (mode 0700) holds one file per secret, mode 0600,
named ``usage-<hex of the usage string>`` or ``uuid-<uuid>``, written atomically.
A secret is only ever set (Manager.SetSecret) and read back by the daemon itself to
log in to a target; no method returns it, no log line shows it (messages name the
usage only), and it reaches tools only through their environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidArgument, NotFound
from ..model.definitions import SourceAuth
from ..model.names import validate_uuid

MAX_SECRET = 4096
MAX_USAGE = 256


def _check_usage(usage: str) -> str:
    if not usage or len(usage) > MAX_USAGE or any(ord(c) < 32 for c in usage):
        raise InvalidArgument("a secret usage must be 1..256 printable characters")
    return usage


class SecretStore:
    def __init__(self, config_dir: Path) -> None:
        self.dir = Path(config_dir) / "secrets"

    def _path(self, usage: str | None = None, uuid: str | None = None) -> Path:
        if uuid is not None:
            return self.dir / f"uuid-{validate_uuid(uuid)}"
        return self.dir / f"usage-{_check_usage(usage or '').encode().hex()}"

    def set(self, usage: str, value: bytes, *, uuid: str | None = None) -> None:
        """Store ``value`` under ``usage`` (and under ``uuid`` when given); an empty
        value deletes the secret."""
        if len(value) > MAX_SECRET:
            raise InvalidArgument(f"a secret may be at most {MAX_SECRET} bytes")
        paths = [self._path(usage=usage)]
        if uuid:
            paths.append(self._path(uuid=uuid))
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for path in paths:
            if not value:
                path.unlink(missing_ok=True)
            else:
                _write_private(path, value)

    def get(self, *, usage: str | None = None, uuid: str | None = None) -> bytes:
        path = self._path(usage=usage, uuid=uuid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            what = f"UUID {uuid}" if uuid else f"usage '{usage}'"
            raise NotFound(f"no secret with {what} is set (Manager.SetSecret)") from None

    def for_auth(self, auth: SourceAuth) -> bytes:
        """The secret a pool's <auth><secret usage=|uuid=/></auth> names."""
        if auth.secret_uuid:
            return self.get(uuid=auth.secret_uuid)
        return self.get(usage=auth.secret_usage)


def _write_private(path: Path, value: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
