"""A stop from another thread and a payload ending by itself: each job gets one outcome, the true one."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.payload import launch
from hpcpilot.proctree import TOKEN_ENV, new_token

STOP = PilotError(ErrorCode.SIGTERM, "payload stopped: SIGTERM received")


def new_run() -> JobRun:
    return JobRun(parse_job(job_definition(4001, "true")), 0, "node", 1)


def start(run: JobRun, tmp_path: Path, *argv: str) -> bool:
    env = {"PATH": "/usr/bin:/bin", TOKEN_ENV: new_token()}
    return run.launch_unless_stopped(lambda: launch(list(argv), tmp_path, env))


def wait_until_exited(run: JobRun) -> None:
    give_up = time.monotonic() + 10
    while not run.process.has_exited():
        assert time.monotonic() < give_up, "payload did not end"
        time.sleep(0.01)


@pytest.mark.timeout(30)
def test_a_payload_that_ended_by_itself_keeps_its_outcome_though_not_yet_reaped(tmp_path: Path) -> None:
    run = new_run()
    assert start(run, tmp_path, "true")
    wait_until_exited(run)  # a zombie: its thread has not yet returned from wait()
    assert run.stop_payload(STOP) is False and not run.failed
    assert run.process.wait().returncode == 0


@pytest.mark.timeout(30)
def test_a_running_payload_is_failed_by_the_stop(tmp_path: Path) -> None:
    run = new_run()
    assert start(run, tmp_path, "sleep", "30")
    try:
        assert run.stop_payload(STOP) is True and run.error is STOP
    finally:
        run.process.terminate(1.0)
        run.process.wait()
    run.end_payload()
    assert run.stop_payload(STOP) is False


@pytest.mark.timeout(30)
def test_a_payload_is_never_started_after_its_stop(tmp_path: Path) -> None:
    run = new_run()
    assert run.stop_payload(STOP) is True
    assert start(run, tmp_path, "touch", "started") is False
    assert run.process is None and not (tmp_path / "started").exists()
