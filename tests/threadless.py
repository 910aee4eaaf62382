"""Python run in a process that can start no thread, as a rank can't whose payload took every process its user
may have (a fork bomb under ``ulimit -u``): an address-space limit leaves no room for a thread's stack. A process
of its own, as the limit would break the test runner's threads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hpcpilot

PRELUDE = """
import resource, sys, threading
threading.stack_size(64 << 20)


def no_thread_from_here():
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (32 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        threading.Thread(target=lambda: None).start()
    except RuntimeError:
        return
    sys.exit("a thread could still be started: the test proves nothing")
"""


def run_without_threads(script: str, *args: str, timeout: float = 45) -> subprocess.CompletedProcess:
    """Run ``script`` (which calls ``no_thread_from_here()`` where threads are to end) with ``args``."""
    env = {**os.environ, "PYTHONPATH": str(Path(hpcpilot.__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", PRELUDE + script, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
