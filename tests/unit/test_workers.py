"""The rank's worker threads and hang clocks: a thread stuck for ever holds up neither other work nor the exit."""
from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from hpcpilot.workflow.workers import HangClock, HangWatch, Hung, Workers, in_thread_of_its_own
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


def test_work_in_a_thread_of_its_own_hands_on_its_result_or_error() -> None:
    assert in_thread_of_its_own(lambda: 42, "test").result(5) == 42
    with pytest.raises(ZeroDivisionError):
        in_thread_of_its_own(lambda: 1 / 0, "test").result(5)
    assert Hung(3.2).waited == 3.2 and str(Hung(3.2)) == "no answer after 3 s"


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
from hpcpilot.workflow.workers import in_thread_of_its_own

no_thread_from_here()
print(in_thread_of_its_own(lambda: 42, "test").result(5), flush=True)
"""


@pytest.mark.timeout(60)
def test_work_for_a_thread_of_its_own_is_done_when_no_thread_can_be_started() -> None:
    """As an event service job's stage-in and declaration: the rank raised RuntimeError and died, its jobs
    undeclared."""
    child = run_without_threads(THREADLESS_WORK)
    assert (child.returncode, child.stdout) == (0, "42\n"), child.stderr[-2000:]
