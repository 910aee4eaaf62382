"""Rank 0's progress lines."""
import logging

from hpcpilot.jobstate import JobResult
from hpcpilot.mpi import SerialComm
from hpcpilot.workflow.progress import Collector


def test_the_rate_counts_only_jobs_run_not_those_declared_without_running(caplog):
    """Jobs an earlier run declared, or invalid ones, are done at once: counted as run, they made the rate
    of a resumed worker read millions of jobs a minute."""
    earlier = [JobResult(pandaid, "finished", 0, "", -1, "") for pandaid in range(100_000)]
    collector = Collector(SerialComm(), 100_001, earlier, interval=3600)
    collector.started_at -= 60  # a minute into the run
    collector.note_started(100_000)
    collector.add(JobResult(100_000, "finished", 0, "", 0, "node"))
    with caplog.at_level(logging.INFO, logger="hpcpilot.workflow.progress"):
        collector.log_progress()
    (line,) = [record.getMessage() for record in caplog.records]
    assert "100001/100001 done (0 failed), 0 running" in line and line.endswith(", 1.0 jobs/min")
