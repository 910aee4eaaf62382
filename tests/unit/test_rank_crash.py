"""A job whose stage-out met a bug of the pilot's (workflow.rank): still declared, and nothing of it kept."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.config import HarvesterFiles
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.workflow.jobflow import job_logger
from hpcpilot.workflow.rank import _declare_after_crash
from tests.rank_context import rank_context


def test_a_job_declared_after_a_bug_in_its_stage_out_leaves_no_log_lines_behind(tmp_path: Path) -> None:
    """The job's lines were kept in memory for the rest of the pilot's life (and every later line of its
    left-behind thread with them)."""
    definition = job_definition(4005, "true")
    ctx = rank_context(write_access_point(tmp_path / "ap", {4005: definition}), tmp_path)
    router = ctx.log_router
    run = JobRun(parse_job(definition), 0, "node", 1)
    try:
        router.open(run.pandaid)
        job_logger(ctx, run).error("a line of its own")
        run.fail(PilotError(ErrorCode.GENERAL, "pilot error in stageout: bug"))
        _declare_after_crash(ctx, run)
    finally:
        logging.getLogger("hpcpilot").removeHandler(router)
    attributes = json.loads((ctx.access_point.job_dir(4005) / HarvesterFiles().worker_attributes).read_text())
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", ErrorCode.GENERAL)
    assert router.close_job(run.pandaid) == b""  # already released
