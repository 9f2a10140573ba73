"""The first module a worker process runs: its lifeline to the driver, before anything heavy.

A spawned worker imports the module of its target before running it; this one imports only
the standard library, so that the worker's heartbeat starts within a moment of its start,
not after torch and the plugins have loaded (which can take longer than the driver's
``[matrix] heartbeat_timeout`` on a loaded machine). Then it hands over to the worker loop
of ``advx.engine.executors``.

What it sets up: the worker dies with its driver (``PR_SET_PDEATHSIG`` on Linux; everywhere,
the heartbeat thread ends it when the driver's pipe breaks or the worker is re-parented),
ignores the terminal's Ctrl-C (its driver stops it), and beats every ``beat`` seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any


def die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies (``PR_SET_PDEATHSIG``)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - the heartbeat thread still ends the worker
            pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


class Link:
    """A worker's end of its pipe: messages from its two threads (cells, heartbeat) sent one at a
    time; when the driver is gone (a broken pipe, or this process re-parented) the worker ends."""

    def __init__(self, conn: Any, parent: int) -> None:
        self.conn = conn
        self.parent = parent
        self.lock = threading.Lock()

    def send(self, msg: tuple) -> None:
        with self.lock:
            try:
                self.conn.send(msg)
            except (OSError, EOFError, ValueError):
                os._exit(1)

    def recv(self) -> Any:
        try:
            return self.conn.recv()
        except (OSError, EOFError):
            os._exit(1)  # the driver is gone

    def heartbeat(self, every: float) -> None:
        while True:
            time.sleep(every)
            if os.getppid() != self.parent:
                os._exit(1)
            self.send(("beat",))


def worker(conn: Any, parent: int, beat: float, *args: Any) -> None:
    """A worker process: its lifeline first, then ``advx.engine.executors.worker_loop(link, *args)``."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver stops us
    link = Link(conn, parent)
    threading.Thread(target=link.heartbeat, args=(beat,), name="advx-heartbeat", daemon=True).start()
    link.send(("up",))
    from advx.engine.executors import worker_loop

    worker_loop(link, *args)
