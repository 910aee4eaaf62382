"""The rank's worker threads and hang clocks: a thread stuck for ever holds up neither other work nor the exit."""
from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.lifetime import Deadline
from hpcpilot.mpi import SerialComm
from hpcpilot.stopping import SignalWatch
from hpcpilot.workflow.supervisor import Supervisor
from hpcpilot.workflow.workers import HangClock, HangWatch, Helper, Hung, Workers
from tests.rank_context import rank_context
from tests.threadless import run_without_threads


def test_a_replacement_thread_runs_the_work_queued_behind_a_stuck_one() -> None:
    never = threading.Event()
    done = threading.Event()
    workers = Workers(1, "test")
    workers.submit(never.wait)  # the only thread, stuck
    workers.submit(done.set)
    assert not done.wait(0.3)
    workers.add()
    assert done.wait(5)
    workers.close()
    never.set()


def test_a_task_that_raises_does_not_cost_a_thread(caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()
    workers = Workers(1, "test")
    workers.submit(lambda: 1 / 0)
    workers.submit(done.set)
    assert done.wait(5)
    assert "unexpected error in a worker thread" in caplog.text
    workers.close()


@pytest.mark.timeout(60)
def test_a_process_ends_while_one_of_its_workers_is_stuck() -> None:
    program = ("import threading; from hpcpilot.workflow.workers import Workers\n"
               "workers = Workers(2, 'test'); workers.submit(threading.Event().wait); workers.close()\n"
               "print('closed', flush=True)")
    ended = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert (ended.returncode, ended.stdout) == (0, "closed\n"), ended.stderr


def test_a_hang_clock_overruns_after_its_allowance_or_its_stop_grace() -> None:
    assert not HangClock(60, stop_grace=60).overrun()
    clock = HangClock(60, stop_grace=0.05)
    clock.stop()
    time.sleep(0.1)
    assert clock.overrun() and clock.waited() >= 0.1
    patient = HangClock(0.05, stop_grace=60)
    patient.stop()  # a stop never lengthens the allowance
    time.sleep(0.1)
    assert patient.overrun()
    unlimited = HangClock(math.inf, stop_grace=0)  # e.g. a job's declaration: waited for, stop or not
    unlimited.stop()
    time.sleep(0.01)
    assert not unlimited.overrun()


def test_a_hang_watch_hands_out_each_overrun_once_and_ignores_the_end_of_an_earlier_phase() -> None:
    watch = HangWatch()
    job = SimpleNamespace(pandaid=7)
    watch.start("stageout", job, HangClock(0, stop_grace=60))
    watch.end("stagein", 7)  # a stage-in given up on ends late: the stage-out stays watched
    time.sleep(0.01)
    assert watch.overrun() == [("stageout", job, pytest.approx(0.01, abs=1))]
    assert watch.overrun() == []


def test_work_on_a_helper_s_thread_hands_on_its_result_or_error() -> None:
    helper = Helper("test")
    assert helper.start(lambda: 42).result(5) == 42
    with pytest.raises(ZeroDivisionError):
        helper.start(lambda: 1 / 0).result(5)
    assert Hung(3.2).waited == 3.2 and str(Hung(3.2)) == "no answer after 3 s"


@pytest.mark.timeout(30)
def test_a_helper_keeps_its_thread_for_the_next_work_and_replaces_one_stuck_in_work_given_up_on() -> None:
    """An event service rank hands one piece of file work per range to it: a thread started for each cost as
    much as the copy of a small output (a tenth of the pilot's ranges per second on two cores)."""
    helper, threads, stuck = Helper("test"), [], threading.Event()
    for _ in range(2):
        helper.start(lambda: threads.append(threading.current_thread())).result(5)
    assert threads[0] is threads[1] and threads[0].name == "test"
    helper.start(stuck.wait)  # as a read of a hung filesystem: never ends
    helper.abandon()
    try:
        helper.start(lambda: threads.append(threading.current_thread())).result(5)
        assert threads[2] is not threads[0] and threads[0].is_alive()
    finally:
        stuck.set()


THREADLESS_POOL = """
import threading
from hpcpilot.workflow.workers import Workers

stuck, done = threading.Event(), threading.Event()
workers = Workers(1, "test")
workers.submit(stuck.wait)  # the only thread, stuck (in a hung filesystem's read, say)
workers.submit(done.set)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
no_thread_from_here()
workers.add()  # in the stuck one's place: none can be started
print("added", done.is_set(), flush=True)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))  # the payload that took them all has ended
workers.restore()
print("restored", done.wait(20), flush=True)
"""


@pytest.mark.timeout(60)
def test_a_thread_that_cannot_be_started_is_started_later_instead_of_raising() -> None:
    child = run_without_threads(THREADLESS_POOL)
    assert (child.returncode, child.stdout.split()) == (0, ["added", "False", "restored", "True"]), child.stderr[-2000:]


THREADLESS_WORK = """
from hpcpilot.workflow.workers import Helper

no_thread_from_here()
print(Helper("test").start(lambda: 42).result(5), flush=True)
"""


@pytest.mark.timeout(60)
def test_work_for_a_helper_is_done_when_no_thread_can_be_started() -> None:
    """As an event service job's stage-in and declaration: the rank raised RuntimeError and died, its jobs
    undeclared."""
    child = run_without_threads(THREADLESS_WORK)
    assert (child.returncode, child.stdout) == (0, "42\n"), child.stderr[-2000:]


@pytest.mark.timeout(30)
def test_a_rank_keeps_one_thread_for_its_file_work_and_goes_on_past_work_it_gave_up_on(tmp_path: Path) -> None:
    """keeping_alive (an event service rank's copy of each range's output, each declaration) started a thread
    per call; the one kept now must not hold up the next work once it is stuck in work given up on."""
    access_point = write_access_point(tmp_path / "ap", {4005: job_definition(4005, "true")})
    ctx = rank_context(access_point, tmp_path)
    try:
        supervisor = Supervisor(ctx, SerialComm(), Deadline(None, 0), SignalWatch())
        threads, stuck = [], threading.Event()
        for _ in range(2):
            supervisor.keeping_alive(lambda: threads.append(threading.current_thread()))
        assert threads[0] is threads[1] is not threading.current_thread()
        with pytest.raises(Hung):
            supervisor.keeping_alive(stuck.wait, hung_after=0.2)  # as a hung filesystem's fsync
        assert supervisor.keeping_alive(lambda: threading.current_thread()) is not threads[0]
    finally:
        stuck.set()
        logging.getLogger("hpcpilot").removeHandler(ctx.log_router)
