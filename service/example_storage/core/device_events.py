"""The queue of uevents not yet applied, per device: changes coalesce, add/remove keep
their order (see devices.py for the policy)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

ADD, REMOVE, CHANGE = "add", "remove", "change"
DEFAULT_PENDING_LIMIT = 100_000  # queued add/remove/change entries before a rescan


# -- the event queue ------------------------------------------------------------------
class PendingEvents:
    """Not yet applied uevents, per device, coalesced (see the module docstring).

    Per device the queue alternates add/remove, with at most one trailing change:
    a change after a queued change or add adds nothing (the add reads the whole state
    anyway), an add or remove drops the changes queued before it.
    """

    def __init__(self, limit: int = DEFAULT_PENDING_LIMIT) -> None:
        self.limit = limit
        self._queues: dict[str, deque[tuple[str, dict[str, str]]]] = {}
        self._count = 0
        self.overflowed = False

    def __len__(self) -> int:
        return self._count

    def push(self, name: str, action: str, props: dict[str, str] | None = None) -> None:
        if action not in (ADD, REMOVE):
            action = CHANGE   # change, move, online, offline...: re-read the device
        queue = self._queues.setdefault(name, deque())
        before = len(queue)
        if action == CHANGE:
            if not (queue and queue[-1][0] in (CHANGE, ADD)):
                queue.append((CHANGE, {}))
        else:
            while queue and queue[-1][0] == CHANGE:
                queue.pop()
            if queue and queue[-1][0] == action:
                if action == ADD:
                    queue[-1] = (ADD, dict(props or {}))
            else:
                queue.append((action, dict(props or {}) if action == ADD else {}))
        self._count += len(queue) - before
        if not queue:
            del self._queues[name]
        if self._count > self.limit:
            self.overflowed = True
            self.clear()

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0

    def names(self) -> list[str]:
        return list(self._queues)

    def head(self, name: str) -> tuple[str, dict[str, str]] | None:
        queue = self._queues.get(name)
        return queue[0] if queue else None

    def pop(self, name: str) -> tuple[str, dict[str, str]]:
        queue = self._queues[name]
        item = queue.popleft()
        self._count -= 1
        if not queue:
            del self._queues[name]
        return item

    def actions(self, name: str) -> list[str]:
        return [a for a, _ in self._queues.get(name, ())]


