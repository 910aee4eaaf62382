"""A rank killed outright (SIGKILL: no handler runs) leaves no payload running behind it."""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.stopping import STOP_SIGNALS
from tests.multirank.test_graceful_stop import JOBS, LONG_SLEEP, rank_processes, sleeping_worker, start_pilot, \
    wait_until_running

DAEMON_SLEEP = f"{399 + random.random():.9f}"  # what a payload leaves running in a session of its own


def payloads_left() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if {LONG_SLEEP, DAEMON_SLEEP} & set(p.info["cmdline"] or [])]


def daemonizing_worker(tmp_path: Path) -> Path:
    """Each payload starts a daemon (setsid: out of the payload's process group and session), then sleeps."""
    line = f"-c 'setsid sleep {DAEMON_SLEEP} & exec sleep {LONG_SLEEP}'"
    return write_access_point(tmp_path / "ap", {p: job_definition(p, "bash", line) for p in JOBS})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("make_worker", [sleeping_worker, daemonizing_worker], ids=["payloads", "their-daemons"])
def test_payloads_of_a_sigkilled_rank_end_with_it(tmp_path: Path, make_worker) -> None:
    ap = make_worker(tmp_path)
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


def ready_guard_of(rank: psutil.Process) -> psutil.Process:
    """The rank's guard, once it has set itself up (it has ignored SIGTERM since guards exist)."""
    (guard,) = [child for child in rank.children() if "hpcpilot.guard" in child.cmdline()]
    deadline = time.monotonic() + 30
    while not _ignores(guard, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.1)
    return guard


def _ignores(process: psutil.Process, signum: int) -> bool:
    status = Path(f"/proc/{process.pid}/status").read_text()
    ignored = int(status.split("SigIgn:")[1].split()[0], 16)
    return bool(ignored >> (signum - 1) & 1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_a_stop_signal_to_the_guard_leaves_it_guarding(tmp_path: Path, signum: int) -> None:
    """A batch system may signal every process of the job step (Slurm's --signal=USR1@60), the guard's session
    too: it must outlive the signal, so that the payloads of a rank killed later still end with it."""
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2)
    try:
        wait_until_running(ap, 2)
        rank = rank_processes(pilot)[-1]
        guard = ready_guard_of(rank)
        guard.send_signal(signum)
        time.sleep(0.5)  # a signal's default action would have ended it by now
        assert guard.is_running() and guard.status() != psutil.STATUS_ZOMBIE, "the signal ended the guard"
        rank.send_signal(signal.SIGKILL)
        pilot.wait(timeout=60)
        deadline = time.monotonic() + 20
        while payloads_left() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = payloads_left()
    finally:
        for process in payloads_left():
            process.kill()
        if pilot.poll() is None:
            os.killpg(pilot.pid, signal.SIGKILL)
        pilot.communicate()
    assert left == [], "payloads outlived their rank"
