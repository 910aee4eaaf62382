"""An event service job on a rank that can start no thread (a payload's fork bomb took every process its user
may have): the job is declared failed, the rank goes on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.config import HarvesterFiles
from hpcpilot.errors import ErrorCode
from tests.threadless import run_without_threads

PANDAID = 5101

CHILD = """
import os
from pathlib import Path
from hpcpilot.lifetime import Deadline
from hpcpilot.mpi import SerialComm
from hpcpilot.stopping import SignalWatch
from hpcpilot.workflow.eventservice import run_event_service_job
from hpcpilot.workflow.supervisor import Supervisor
from tests.rank_context import rank_context

ctx = rank_context(Path(sys.argv[1]), Path(sys.argv[2]))
comm = SerialComm()
supervisor = Supervisor(ctx, comm, Deadline(None, 0), SignalWatch())
job, = ctx.access_point.read_jobs()


def sockets():
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # listdir's own
            pass
    return sum(link.startswith("socket:") for link in links)


before = sockets()
no_thread_from_here()
run = run_event_service_job(ctx, comm, job, 1, supervisor)
ctx.publisher.flush()
print(run.status.value, sockets() - before, flush=True)
"""


@pytest.mark.timeout(60)
def test_an_event_service_job_whose_channel_gets_no_thread_is_declared_failed(tmp_path: Path) -> None:
    definition = job_definition(PANDAID, "true", eventService="True")
    ap = write_access_point(tmp_path / "ap", {PANDAID: definition}, many_to_one=False)
    (ap / "JobsEventRanges.json").write_text(json.dumps({str(PANDAID): []}))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    child = run_without_threads(CHILD, str(ap), str(scratch))
    assert (child.returncode, child.stdout) == (0, "failed 0\n"), child.stderr[-3000:]  # no socket left open
    attributes = json.loads((ap / HarvesterFiles().worker_attributes).read_text())
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", ErrorCode.SETUP_FAILED)
    assert "can't start new thread" in attributes["pilotErrorDiag"]
    assert not list(scratch.iterdir())  # its scratch, the channel's socket in it, removed
