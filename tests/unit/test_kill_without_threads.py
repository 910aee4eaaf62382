"""A payload over a limit is ended even when its rank can start no thread (a fork bomb under ``ulimit -u`` takes
every process its user may have, threads included)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.errors import ExitCode
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


GIVING_UP = """
from pathlib import Path
from hpcpilot.lifetime import Deadline
from hpcpilot.mpi import SerialComm
from hpcpilot.stopping import SignalWatch
from hpcpilot.workflow.supervisor import Supervisor
from tests.rank_context import rank_context

supervisor = Supervisor(rank_context(Path(sys.argv[1]), Path(sys.argv[2])), SerialComm(), Deadline(None, 0),
                        SignalWatch())
no_thread_from_here()
supervisor._give_up(1, 700.0)  # a peer silent past rank_silence_limit
"""


@pytest.mark.timeout(60)
def test_a_rank_that_gives_up_on_a_silent_peer_aborts_with_64_when_no_thread_can_be_started(tmp_path: Path) -> None:
    """The thread that writes kill_worker.json raised instead: a traceback, and the uncaught error's exit code."""
    ap = write_access_point(tmp_path / "ap", {4004: job_definition(4004, "true")})
    child = run_without_threads(GIVING_UP, str(ap), str(tmp_path))
    assert child.returncode == ExitCode.SITE_PROBLEM, child.stderr[-2000:]
    assert "Traceback" not in child.stderr


MONITOR_START = """
from hpcpilot.config import Limits
from hpcpilot.monitor import Monitor
from hpcpilot.mpi import SerialComm, run_or_abort

monitor = Monitor(Limits(), kill=lambda run: None)
no_thread_from_here()
sys.exit(run_or_abort(SerialComm(), monitor.start, 70))
"""


@pytest.mark.timeout(60)
def test_a_rank_whose_monitor_cannot_start_ends_with_64_saying_why() -> None:
    """No payload may run unwatched: the rank ends before its first job, with a site problem (64) that names the
    limit, not a traceback and the uncaught error's 70."""
    child = run_without_threads(MONITOR_START)
    assert child.returncode == ExitCode.SITE_PROBLEM, child.stderr[-2000:]
    assert "cannot start the payload monitor's thread" in child.stderr and "ulimit -u" in child.stderr
    assert "Traceback" not in child.stderr


RANK = """
import os
from hpcpilot.cli import main

os.environ["HPCPILOT_STARTUP_LIMIT"] = sys.argv[2]
no_thread_from_here()
sys.exit(main(["run", "--access-point", sys.argv[1]]))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("startup_limit, first_thread", [("1800", "the start-up watch's timer"),
                                                         ("0", "the threads that read the job definitions")])
def test_a_rank_that_can_start_no_thread_ends_at_start_up_with_64_touching_no_job(
        tmp_path: Path, startup_limit: str, first_thread: str) -> None:
    """The first thread a rank starts (its start-up watch's; with none, the readers of the job definitions)
    ended the rank in a traceback (70). The rank ends with 64 saying why, and no job is declared (nor run):
    Harvester may give them to another worker."""
    ap = write_access_point(tmp_path / "ap", {4005: job_definition(4005, "true")})
    child = run_without_threads(RANK, str(ap), startup_limit)
    assert child.returncode == ExitCode.SITE_PROBLEM, child.stderr[-2000:]
    assert f"cannot start {first_thread}" in child.stderr and "Traceback" not in child.stderr
    assert sorted(path.name for path in (ap / "4005").iterdir()) == ["HPCJobs.json", "PoolFileCatalog_H.xml"]
