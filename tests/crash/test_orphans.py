"""A rank killed outright (SIGKILL: no handler runs) leaves no payload running behind it."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.multirank.test_graceful_stop import LONG_SLEEP, rank_processes, sleeping_worker, start_pilot, \
    wait_until_running


def payloads_left() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if LONG_SLEEP in (p.info["cmdline"] or [])]


@pytest.mark.timeout(120)
def test_payloads_of_a_sigkilled_rank_end_with_it(tmp_path: Path) -> None:
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2)
    try:
        wait_until_running(ap, 2)
        assert payloads_left(), "the payloads run"
        rank_processes(pilot)[-1].send_signal(signal.SIGKILL)
        pilot.wait(timeout=60)  # the launcher ends the other rank once one dies
        deadline = time.monotonic() + 20
        while payloads_left() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = payloads_left()
    finally:
        for process in payloads_left():  # never leave them to the next test, whatever happened
            process.kill()
        if pilot.poll() is None:
            os.killpg(pilot.pid, signal.SIGKILL)
        pilot.communicate()
    assert left == [], "payloads outlived their rank"
