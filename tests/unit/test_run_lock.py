"""The access point's run lock at the end of a run whose access point went away (its filesystem's server gone)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hpcpilot.runlock import RunLock


def serving_process(mountpoint: Path) -> int:
    """The pid of the FUSE server (tests/slowfs.py) mounted on ``mountpoint``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"slowfs.py") for arg in argv) and os.fsencode(mountpoint) in argv:
                return int(entry.name)
    raise AssertionError(f"no slowfs server for {mountpoint}")


@pytest.mark.timeout(60)
def test_a_lock_whose_filesystem_went_away_is_released_without_an_error(slow_sync_dir) -> None:
    """Closing the lock's file on a FUSE filesystem whose server died fails (ECONNABORTED): at the very end of a
    run, whose jobs are declared, that ended the pilot as an internal error (70) instead of with its own code."""
    access_point = slow_sync_dir(0)
    lock = RunLock()
    lock.take(access_point / ".hpcpilot.lock")
    held = set(os.listdir("/proc/self/fd"))
    os.kill(serving_process(access_point), signal.SIGKILL)
    lock.release()
    lock.release()  # nothing left to release
    assert len(set(os.listdir("/proc/self/fd"))) == len(held) - 1  # the descriptor is gone all the same
