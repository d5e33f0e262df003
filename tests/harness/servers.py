"""Stand-in servers the tests run in a thread of their own, for the length of a `with` block."""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class ServedInThread:
    """Serves `self.server` from `self.thread` (both set by the subclass) inside a `with` block."""

    server: socketserver.BaseServer
    thread: threading.Thread

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
