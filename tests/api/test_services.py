"""hpcpilot.api.services as a payload wrapper calls it: a real process tree, the batch environment, the codes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcpilot.api.services import ErrorCode, ProcessMonitor, batch_end_time, batch_job_id, error_message

MB = 1 << 20
# A parent holding 40 MB starts a child holding 40 MB that writes 2 MB; both then wait for the "done" file.
TREE = """
import os, subprocess, sys, time
held = bytearray(40 << 20)
for i in range(0, len(held), 4096): held[i] = 1
if sys.argv[1] == "parent":
    subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", sys.argv[2], sys.argv[3]])
else:
    with open(os.path.join(sys.argv[3], "written"), "wb") as out:
        out.write(b"x" * (2 << 20)); out.flush(); os.fsync(out.fileno())
    open(os.path.join(sys.argv[3], "ready"), "w").close()
while not os.path.exists(os.path.join(sys.argv[3], "done")): time.sleep(0.05)
"""


@pytest.fixture
def tree(tmp_path: Path):
    process = subprocess.Popen([sys.executable, "-c", TREE, "parent", TREE, str(tmp_path)], start_new_session=True)
    try:
        give_up = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < give_up and process.poll() is None, "the process tree did not start"
            time.sleep(0.05)
        yield process
    finally:
        (tmp_path / "done").touch()
        process.wait(timeout=30)


@pytest.mark.timeout(120)
def test_a_sample_sums_memory_and_io_over_the_process_and_its_descendants(tree, tmp_path: Path) -> None:
    monitor = ProcessMonitor(tree.pid, timeseries_path=tmp_path / "series.tsv")
    sample = monitor.sample()
    assert sample.nprocs == 2
    assert sample.rss >= 80 * MB // 1024  # kB: both processes' 40 MB
    assert sample.wchar >= 2 * MB  # bytes: the child's write
    summary = monitor.summary()
    assert summary["maxRSS"] == sample.rss and summary["totWCHAR"] == sample.wchar
    assert summary["rateWCHAR"] > 0  # per second since the monitor began: one sample is enough
    lines = (tmp_path / "series.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["Time", "VMEM", "PSS"] and len(lines) == 2


@pytest.mark.timeout(120)
def test_a_sample_after_the_process_ended_leaves_the_summary_as_it_was(tmp_path: Path) -> None:
    # one process, no descendants: it ends when its stdin closes
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                               start_new_session=True)
    try:
        monitor = ProcessMonitor(process.pid, timeseries_path=tmp_path / "series.tsv")
        assert monitor.sample().nprocs == 1
        before = monitor.summary()
    finally:
        process.stdin.close()
        process.wait(timeout=30)
    assert monitor.sample().nprocs == 0
    assert monitor.summary() == before
    assert len((tmp_path / "series.tsv").read_text().splitlines()) == 2  # the header and the one sample


# A parent starts a daemon (double fork, setsid: out of its session) that holds 40 MB; both wait for "done".
ESCAPING = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        held = bytearray(40 << 20)
        for i in range(0, len(held), 4096): held[i] = 1
        open(os.path.join(sys.argv[1], "ready"), "w").close()
        while not os.path.exists(os.path.join(sys.argv[1], "done")): time.sleep(0.05)
    os._exit(0)
while not os.path.exists(os.path.join(sys.argv[1], "done")): time.sleep(0.05)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tracked", [True, False])
def test_a_daemon_that_left_the_session_is_counted_by_the_environments_token(tmp_path: Path, tracked: bool) -> None:
    environment = ProcessMonitor.environment() if tracked else None
    process = subprocess.Popen([sys.executable, "-c", ESCAPING, str(tmp_path)], env=environment,
                               start_new_session=True)
    try:
        monitor = ProcessMonitor(process.pid, environment=environment)
        give_up = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < give_up and process.poll() is None, "the daemon did not start"
            time.sleep(0.05)
        sample = monitor.sample()
    finally:
        (tmp_path / "done").touch()
        process.wait(timeout=30)
    if tracked:
        assert sample.nprocs == 2 and sample.rss >= 40 * MB // 1024, sample
    else:  # without the token nothing leads from the process to the daemon
        assert sample.nprocs == 1 and sample.rss < 40 * MB // 1024, sample


def test_an_environment_without_the_token_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="make it with ProcessMonitor.environment"):
        ProcessMonitor(os.getpid(), environment={"PATH": "/bin"})


@pytest.mark.timeout(120)
def test_a_summary_before_any_sample_is_zeros(tree) -> None:
    summary = ProcessMonitor(tree.pid).summary()
    assert summary["maxPSS"] == 0 and summary["rateRBYTES"] == 0


def test_a_process_that_is_not_there_is_refused_with_what_to_do() -> None:
    no_such_pid = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids stay below it
    with pytest.raises(ProcessLookupError, match="start it first"):
        ProcessMonitor(no_such_pid)


def test_the_batch_jobs_end_and_id_come_from_its_environment() -> None:
    assert batch_end_time({"SLURM_JOB_END_TIME": "1900000000"}) == 1900000000.0
    assert batch_job_id({"PBS_JOBID": "77.titan-batch"}) == "77.titan-batch"
    assert batch_end_time({}) is None and batch_job_id({}) == ""


def test_every_pilot_error_code_says_what_it_means() -> None:
    assert error_message(1171) == "adler32 mismatch on input"
    assert error_message(ErrorCode.STAGEOUT_TIMEOUT) == "stage-out timed out"
    messages = [code.message for code in ErrorCode]
    assert all(messages) and len(set(messages)) == len(messages)


def test_a_number_that_is_no_pilot_error_code_is_refused() -> None:
    with pytest.raises(ValueError, match="4242 is not a pilot error code"):
        error_message(4242)
