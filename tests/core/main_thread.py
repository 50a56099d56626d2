"""Where the main thread is now, for tests that interrupt it at one place
(a SIGINT sent once it waits in a join, a lock, a method of an object)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType


def main_thread_in(found: Callable[[FrameType], bool]) -> bool:
    """Whether a frame of the main thread's stack is one ``found`` picks."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if found(frame):
            return True
        frame = frame.f_back
    return False


def main_thread_joining() -> bool:
    """Whether the main thread waits in ``Thread.join``."""
    return main_thread_in(lambda frame: frame.f_code.co_name == "join")
