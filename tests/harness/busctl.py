"""Run ``busctl`` against a private bus, optionally as another user (through ``runuser``)."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def busctl_argv(address: str, *args: str, user: str | None = None) -> list[str]:
    """The argv of ``busctl --address=ADDRESS ARGS...`` (behind ``runuser -u USER --``)."""
    argv = ["busctl", f"--address={address}", "--no-pager", *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return argv


def busctl(
    address: str,
    *args: str,
    user: str | None = None,
    timeout: float = 30,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run busctl in text mode; with ``check`` a non-zero exit raises ``CalledProcessError``
    (whose ``stderr`` holds busctl's message, e.g. the D-Bus error)."""
    return subprocess.run(
        busctl_argv(address, *args, user=user),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def busctl_json(
    address: str,
    *args: str,
    user: str | None = None,
    timeout: float = 30,
) -> Any:
    """Run ``busctl --json=short ARGS...`` and return the parsed JSON (raises on failure).

    For ``call``, busctl prints ``{"type": SIGNATURE, "data": [values...]}``.
    """
    res = busctl(address, "--json=short", *args, user=user, timeout=timeout, check=True)
    return json.loads(res.stdout)
