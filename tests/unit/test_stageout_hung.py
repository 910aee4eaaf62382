"""What the pilot says of a job whose stage-out it gave up on as hung (workflow.jobflow.stage_out_hung)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.workflow.jobflow import stage_out_hung
from tests.rank_context import rank_context


@pytest.mark.parametrize("declared, said, not_said", [
    (False, "leaving the job undeclared (exit code 64)", "after the job was declared"),
    (True, "after the job was declared", "undeclared"),
])
def test_a_hung_stage_out_is_said_undeclared_only_when_the_job_is(tmp_path: Path, caplog, declared, said,
                                                                   not_said) -> None:
    """The removal of the scratch, the stage-out's last step, may be what hangs: the job was then declared, and
    counts so in the summary and the exit code, yet the log said it was left undeclared with exit code 64."""
    definition = job_definition(4006, "true")
    ctx = rank_context(write_access_point(tmp_path / "ap", {4006: definition}), tmp_path)
    logging.getLogger("hpcpilot").removeHandler(ctx.log_router)
    run = JobRun(parse_job(definition), 0, "node", 1)
    run.declared = declared
    with caplog.at_level(logging.ERROR, logger="hpcpilot"):
        stage_out_hung(ctx, run, 12.0)
    assert "job 4006: stage-out hung for 12 s" in caplog.text
    assert said in caplog.text and not_said not in caplog.text
