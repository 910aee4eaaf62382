"""The payload guard (hpcpilot.guard) with real processes: what a dead rank left running ends, nothing else."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from hpcpilot.guard import PayloadGuard, guard, stop_signals_blocked
from hpcpilot.proctree import TOKEN_ENV, new_token
from hpcpilot.stopping import STOP_SIGNALS


def sleeper(token: str | None = None) -> subprocess.Popen:
    env = {**os.environ, TOKEN_ENV: token} if token else None
    return subprocess.Popen(["sleep", "300"], start_new_session=True, env=env)  # a payload: a session of its own


def test_the_sessions_left_registered_are_those_started_and_not_ended() -> None:
    assert guard([b"+10\n", b"+11\n", b"-10\n", b"+12\n"]) == {11, 12}
    assert guard([b"+10\n", b"bye\n"]) is None


@pytest.mark.timeout(30)
def test_a_rank_gone_without_goodbye_takes_its_running_payloads_with_it() -> None:
    running, reaped = sleeper(), sleeper()
    rank = PayloadGuard()
    rank.started(running.pid)
    rank.started(reaped.pid)
    reaped.kill()
    reaped.wait()
    rank.ended(reaped.pid)
    os.close(rank._pipe)  # what the kernel does when the rank dies
    assert running.wait(timeout=20) == -signal.SIGKILL
    assert rank.process.wait(timeout=20) == 0


@pytest.mark.timeout(30)
def test_what_the_rank_s_payloads_left_outside_their_sessions_ends_too() -> None:
    """A daemon a payload started (in a session of its own, never registered) carries the payload's token;
    a process with another pilot's token is left alone."""
    daemon, stranger = sleeper(new_token()), sleeper("0123456789ab.not-this-rank")
    try:
        rank = PayloadGuard()
        os.close(rank._pipe)
        assert daemon.wait(timeout=20) == -signal.SIGKILL
        assert rank.process.wait(timeout=20) == 0
        assert stranger.poll() is None
    finally:
        for process in (daemon, stranger):
            process.kill()
            process.wait()


@pytest.mark.timeout(30)
def test_a_rank_that_gives_up_takes_its_payloads_with_it() -> None:
    payload = sleeper(new_token())
    rank = PayloadGuard()
    rank.started(payload.pid)
    rank.abandon()
    assert payload.wait(timeout=20) == -signal.SIGKILL
    rank.close()  # nothing left to say goodbye to


@pytest.mark.timeout(30)
def test_payloads_reaped_after_the_rank_gave_up_are_no_warning(caplog) -> None:
    """A payload thread that reaps its payload after abandon() has nothing to tell the guard, and the guard
    is not "gone": it did what it was asked."""
    payload = sleeper(new_token())
    rank = PayloadGuard()
    rank.started(payload.pid)
    rank.abandon()
    payload.wait(timeout=20)
    rank.ended(payload.pid)
    assert "guard gone" not in caplog.text


@pytest.mark.timeout(30)
def test_a_goodbye_leaves_every_process_alone() -> None:
    payload = sleeper(new_token())
    rank = PayloadGuard()
    rank.started(payload.pid)
    rank.close()
    try:
        assert rank.process.returncode == 0
        assert payload.poll() is None
    finally:
        payload.kill()
        payload.wait()


@pytest.mark.timeout(30)
def test_a_guard_that_cannot_start_leaves_the_rank_running_unguarded(monkeypatch) -> None:
    monkeypatch.setattr("sys.executable", "/nonexistent/python")
    rank = PayloadGuard()
    rank.started(12345)  # nothing to tell, nothing raised
    rank.close()
    assert rank.process is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_a_stop_signal_sent_the_instant_the_guard_starts_leaves_it_guarding(signum: int) -> None:
    """A stop sent to every process of the job (Slurm's --signal) as a guard starts, before its Python could
    ignore it, killed the guard, and a rank killed later left its payloads running."""
    for _ in range(5):
        rank = PayloadGuard()
        os.kill(rank.process.pid, signum)
        rank.close()
        assert rank.process.returncode == 0


def test_a_stop_for_the_rank_while_its_guard_starts_is_delivered_once_it_has_started() -> None:
    """The rank's stop signals wait while its guard is started, and none is lost."""
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with stop_signals_blocked():
            os.kill(os.getpid(), signal.SIGUSR1)
            assert received == []
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.timeout(30)
def test_starting_a_guard_leaves_the_rank_s_signal_mask_as_it_was() -> None:
    """Also a stop signal the rank itself keeps blocked stays blocked."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        PayloadGuard().close()
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before | {signal.SIGUSR1}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
