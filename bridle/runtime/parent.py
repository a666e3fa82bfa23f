"""Whether the process that started this one still lives. A process whose parent dies is adopted (by
init, or a subreaper), so its parent's pid changes: the engine, its spare and every front end of
`BRIDLE_FRONTENDS=N` stop, or clean up, when the supervisor that started them is gone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


class Parent:
    """The parent of this process, as it was when this was made."""

    def __init__(self) -> None:
        self.pid = os.getppid()

    def alive(self) -> bool:
        return os.getppid() == self.pid

    def on_death(self, then: Callable[[], None], every_s: float = 1.0) -> threading.Thread:
        """Call `then` once the parent is gone, from a daemon thread that looks every `every_s`."""

        def watch() -> None:
            while self.alive():
                time.sleep(every_s)
            then()

        thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
        thread.start()
        return thread
