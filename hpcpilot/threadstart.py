"""Starting a thread the rank cannot do without, or ending the rank saying why.

A payload may take every process its user may have (ulimit -u): a thread
then cannot be started. Work that can wait or be done in the calling thread
has its own fallback (workflow/workers.py); the threads here have none.
"""
from __future__ import annotations

import threading

from .errors import ExitCode, WorkerError


def start_or_give_up(thread: threading.Thread, what: str) -> None:
    """Start ``thread``, which the rank cannot run without; when no thread can be started (this user's other
    processes took every one it may have: ulimit -u), WorkerError 64 saying so: this node cannot run the rank
    now, and a rank whose payloads nothing watches must not run them."""
    try:
        thread.start()
    except RuntimeError as error:  # "can't start new thread"
        raise no_thread_error(what, error) from None


def no_thread_error(what: str, error: RuntimeError) -> WorkerError:
    """Why the rank ends when ``what``, a thread it needs, could not be started."""
    return WorkerError(ExitCode.SITE_PROBLEM, f"cannot start {what} ({error}): this node lets this user start no "
                       "more threads or processes (ulimit -u, or no memory for a thread's stack); no job was started, "
                       "run the worker again elsewhere or once the node has room")
