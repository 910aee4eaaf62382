"""A payload over a limit is ended even when its rank can start no thread (a fork bomb under ``ulimit -u`` takes
every process its user may have, threads included)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.threadless import run_without_threads

CHILD = """
from pathlib import Path
from hpcpilot.accesspoint_writer import job_definition
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.payload import launch
from hpcpilot.proctree import TOKEN_ENV, new_token
from hpcpilot.workflow.jobflow import terminate_in_background

run = JobRun(parse_job(job_definition(4003, "sleep")), 0, "node", 1)
run.launch_unless_stopped(lambda: launch(["sleep", "60"], Path(sys.argv[1]), {"PATH": "/usr/bin:/bin",
                                                                                 TOKEN_ENV: new_token()}))
print(run.process.pid, flush=True)
no_thread_from_here()
terminate_in_background(run, 1.0)
print(run.process.wait().returncode, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_payload_is_ended_when_no_thread_can_be_started_to_end_it(tmp_path: Path) -> None:
    child = run_without_threads(CHILD, str(tmp_path))
    lines = child.stdout.split()
    try:
        assert child.returncode == 0, child.stderr[-2000:]
        assert lines[1] == str(-signal.SIGTERM)  # ended by the SIGTERM it was sent, within the grace
    finally:
        if lines:  # a payload the child failed to end
            try:
                os.kill(int(lines[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
