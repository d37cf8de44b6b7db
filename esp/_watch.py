"""Change notification shared by the SAD and the SPD: both swap immutable snapshots under a lock, and a compiled
data loop holding a copy of their tables must learn at once that it has to take a new one."""
from __future__ import annotations

import threading
from collections.abc import Callable


class Watched:
    """A table whose writers serialise on ``self._lock`` and call :meth:`_notify` after each swap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: tuple[Callable[[], None], ...] = ()

    def watch(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (in the writer's thread, after the new snapshot is in place) on every change. Keep it
        short."""
        with self._lock:
            self._watchers += (fn,)

    def unwatch(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w is not fn)

    def _notify(self) -> None:
        for fn in self._watchers:
            fn()
