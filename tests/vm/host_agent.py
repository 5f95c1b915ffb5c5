"""The guest asks the host to act during a VM-lane run (change a tgtd target while the
guest's daemon watches, say), through files in the results share.

The guest (``ask_host(op, **args)``) writes ``requests/<n>.json`` there (atomically: a
temp name, then rename) and waits for ``requests/<n>.reply``; the host side
(``HostAgent(results_dir, handlers)``, a thread beside ``boot()``) polls the directory,
runs ``handlers[op](**args)`` and writes the reply: ``{"ok": result}`` or ``{"error":
text}``. The results share is mounted with cache=none in the guest, so each side sees
the other's files at once. Nothing else crosses: the host runs only its own handlers.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUESTS = "requests"
GUEST_RESULTS = "/run/vm-lane"


class HostAgent:
    """Serves the guest's requests while a guest runs (use as a context manager)."""

    def __init__(self, results_dir: Path, handlers: dict[str, Callable[..., Any]],
                 interval: float = 0.05) -> None:
        self.dir = Path(results_dir) / REQUESTS
        self.handlers = handlers
        self.interval = interval
        self.served: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostAgent:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for request in sorted(self.dir.glob("*.json")):
                reply = request.with_suffix(".reply")
                if reply.exists():
                    continue
                self._answer(request, reply)
            time.sleep(self.interval)

    def _answer(self, request: Path, reply: Path) -> None:
        try:
            data = json.loads(request.read_text())
            op, args = data["op"], data.get("args", {})
            self.served.append((op, args))
            answer = {"ok": self.handlers[op](**args)}
        except Exception as exc:  # noqa: BLE001 - reported to the guest, which fails
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        tmp = reply.with_suffix(".tmp")
        tmp.write_text(json.dumps(answer))
        tmp.rename(reply)


_counter = itertools.count(1)


def ask_host(op: str, timeout: float = 60, **args: Any) -> Any:
    """(In the guest) have the host run ``op``; its result, or RuntimeError."""
    base = Path(os.environ.get("VM_LANE_RESULTS", GUEST_RESULTS)) / REQUESTS
    base.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{next(_counter):04d}"
    tmp = base / f"{name}.part"
    tmp.write_text(json.dumps({"op": op, "args": args}))
    tmp.rename(base / f"{name}.json")
    reply = base / f"{name}.reply"
    deadline = time.monotonic() + timeout
    while not reply.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the host did not answer request {op} within {timeout:g}s "
                               "(is a HostAgent serving this run?)")
        time.sleep(0.05)
    answer = json.loads(reply.read_text())
    if "error" in answer:
        raise RuntimeError(f"the host failed {op}: {answer['error']}")
    return answer["ok"]
