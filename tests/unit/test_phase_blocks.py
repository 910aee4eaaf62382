"""The blocks each job phase runs in (hpcpilot.workflow.jobflow): its time, and its failure as the job's error."""
import logging

import pytest

from hpcpilot.accesspoint_writer import job_definition
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.workflow import jobflow
from hpcpilot.workflow.jobflow import recorded, timed

LOG = logging.LoggerAdapter(logging.getLogger("test"), {})


def a_run() -> JobRun:
    return JobRun(parse_job(job_definition(4002, "true")), 0, "node", 1)


def test_a_pilot_error_in_the_block_becomes_the_jobs_error_and_the_first_one_counts():
    run = a_run()
    with recorded(run, LOG):
        raise PilotError(ErrorCode.STAGEIN_FAILED, "first")
    with recorded(run, LOG):
        raise PilotError(ErrorCode.STAGEOUT_FAILED, "second")
    assert run.failed and run.error.code == ErrorCode.STAGEIN_FAILED and run.error.diag == "first"


def test_any_other_exception_goes_through_and_leaves_the_job_as_it_was():
    run = a_run()
    with pytest.raises(KeyError):
        with recorded(run, LOG):
            raise KeyError("bug")
    assert not run.failed


def test_the_time_of_a_block_is_added_to_its_phase_also_when_it_raises(monkeypatch):
    clock = iter([10.0, 12.5, 20.0, 21.0])
    monkeypatch.setattr(jobflow.time, "monotonic", lambda: next(clock))
    run = a_run()
    with timed(run, "stagein"):
        pass
    with pytest.raises(PilotError):
        with timed(run, "stagein"):
            raise PilotError(ErrorCode.GENERAL, "x")
    assert run.seconds["stagein"] == 3.5 and run.seconds["payload"] == 0
