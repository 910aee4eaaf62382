"""A read that never returns (a hung shared filesystem: a dead Lustre OST, a hard NFS mount whose server is gone)
must not hang the pilot. The slow FUSE filesystem (tests/slowfs.py) answers no read for an hour here. A real
pilot on 2 ranks gives up on a stage-in once it outlasts all its inputs' time limits, declares the job failed
with 1151, runs the other jobs and declares all; at a stop it does so within its stop bound. It gives up on a
stage-out the same way, and leaves that job undeclared (exit code 64).

The pilot's processes end only once the filesystem answers: a thread in a FUSE read that the server has taken
waits for its answer in a sleep no signal ends (a hung Lustre or NFS read may do the same), and a process ends
with its last thread. So each test ends the server once the pilot has written its summary, as an operator's
remount would, and times the summary.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point
from tests.e2e.conftest import run_pilot
from tests.multirank.test_graceful_stop import start_pilot
from tests.multirank.test_stagein_timeout import TINY_LIMITS
from tests.multirank.test_stop_during_stagein import (ES_JOB, SIZE, assert_declared_not_started, partial_copies,
                                                      stop_one_rank, with_slow_input)
from tests.multirank.test_graceful_stop import finish
from tests.conftest import mounts_below

HUNG_JOB, QUICK_JOB = 8201, 8202
NO_ANSWER = 3600.0  # seconds per read: none comes while the test runs
ALLOWANCE = 1 + (1 + 0.001 * SIZE / (1 << 20))  # the fixed part, then the input's own limit: about 3 s
STOP_BOUND = 6  # a third of it is the time a stage-in gets to end after a stop


def env_with(limits: dict[str, str]) -> dict[str, str]:
    return {**limits, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def hung_and_quick_jobs(tmp_path: Path, replica: Path) -> Path:
    quick = with_inputs(job_definition(QUICK_JOB, "true"), {"in.dat": b"data"})
    return write_access_point(tmp_path / "ap", {HUNG_JOB: with_slow_input(job_definition(HUNG_JOB, "true"), replica),
                                                QUICK_JOB: quick}, {QUICK_JOB: {"in.dat": b"data"}})


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["copy", "link"])  # a copy's reads, or link mode's checksum reads
def test_an_input_read_that_never_returns_fails_its_job_with_1151_and_the_pilot_ends(tmp_path: Path, slow_file,
                                                                                   mode: str) -> None:
    replica = slow_file(SIZE, delay=NO_ANSWER)
    ap = hung_and_quick_jobs(tmp_path, replica)
    summary = ServedUntilSummary(ap, slow_file.server(replica))
    run = run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"), "--stagein-mode", mode,
                    env=env_with(TINY_LIMITS), timeout=90)
    assert summary.seconds() < ALLOWANCE + 45, "the hung stage-in was waited for"
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    hung = run.attributes(HUNG_JOB)
    assert (hung["jobStatus"], hung["pilotErrorCode"]) == ("failed", 1151), hung
    assert hung["pilotErrorDiag"].startswith("stage-in hung: no answer from the filesystem after "), hung
    assert "its thread left behind; check the filesystem of" in run.stderr
    assert run.attributes(QUICK_JOB)["jobStatus"] == "finished"
    assert (run.summary()["finished"], run.summary()["failed"]) == (1, 1)


@pytest.mark.timeout(150)
def test_a_stop_during_a_hung_stage_in_ends_the_pilot_within_its_stop_bound(tmp_path: Path, slow_file) -> None:
    """With the default limits the stage-in would be given up on after minutes; the stop cuts that to a third
    of the stop bound, and the job counts as not started, as any stage-in a stop ends."""
    replica = slow_file(SIZE, delay=NO_ANSWER)
    ap = write_access_point(tmp_path / "ap", {HUNG_JOB: with_slow_input(job_definition(HUNG_JOB, "true"), replica)})
    scratch = tmp_path / "scratch"
    pilot = start_pilot(ap, 2, "--scratch", str(scratch), env={"HPCPILOT_STOP_BOUND": str(STOP_BOUND)})
    wait_for_a_stagein(scratch, pilot)
    summary = ServedUntilSummary(ap, slow_file.server(replica))
    stop_one_rank(pilot)
    returncode, stderr = finish(pilot, 60)
    assert summary.seconds() < STOP_BOUND + 10, "the stop waited for the hung stage-in"
    assert returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert "stage-in hung for" in stderr
    assert_declared_not_started(ap, HUNG_JOB)


@pytest.mark.timeout(150)
def test_an_event_service_jobs_hung_input_fails_the_job_with_1151_and_the_pilot_ends(tmp_path: Path,
                                                                                    slow_file) -> None:
    """Every rank copies the job's inputs while it keeps its watch; each gives up on its own hung copy."""
    definition = job_definition(ES_JOB, sys.executable, "-m hpcpilot.eventservice.reference_payload",
                                eventService="True")
    replica = slow_file(SIZE, delay=NO_ANSWER)
    ap = write_access_point(tmp_path / "ap", {ES_JOB: with_slow_input(definition, replica)})
    summary = ServedUntilSummary(ap, slow_file.server(replica))
    run = run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"), env=env_with(TINY_LIMITS), timeout=90)
    assert summary.seconds() < ALLOWANCE + 45, "the hung stage-in was waited for"
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    attributes = run.attributes(ES_JOB)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1151), attributes
    assert attributes["pilotErrorDiag"].startswith("stage-in hung: no answer from the filesystem after "), attributes


@pytest.mark.timeout(150)
def test_an_output_read_that_never_returns_leaves_its_job_undeclared_and_the_pilot_ends(tmp_path: Path,
                                                                                       slow_file) -> None:
    """The payload bind-mounts the hung file onto its output, so the output's copy never returns: the pilot
    gives up on the stage-out, leaves that job undeclared (its declaration could hang too), and ends with 64;
    the other job is declared."""
    if os.geteuid() != 0:
        pytest.skip("the payload bind-mounts the hung file into its scratch: needs root")
    replica = slow_file(SIZE, delay=NO_ANSWER)
    hung = with_outputs(job_definition(HUNG_JOB, f"touch out.dat && mount --bind {replica} out.dat"), ["out.dat"])
    quick = with_outputs(job_definition(QUICK_JOB, "echo done > out.dat"), ["out.dat"])
    ap = write_access_point(tmp_path / "ap", {HUNG_JOB: hung, QUICK_JOB: quick})
    scratch = tmp_path / "scratch"
    summary = ServedUntilSummary(ap, slow_file.server(replica))
    try:
        run = run_pilot(ap, "mpi2", "--scratch", str(scratch), env=env_with(TINY_LIMITS), timeout=90)
    finally:
        for mountpoint in mounts_below(scratch):
            subprocess.run(["umount", "-l", mountpoint], check=False)
    assert summary.seconds() < 2 * ALLOWANCE + 45, "the hung stage-out was waited for"
    assert run.returncode == 64 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"job {HUNG_JOB}: stage-out hung for" in run.stderr and "leaving the job undeclared" in run.stderr
    assert [job["pandaid"] for job in run.summary()["jobs"] if not job["declared"]] == [HUNG_JOB]
    assert run.attributes(QUICK_JOB)["jobStatus"] == "finished"


def wait_for_a_stagein(scratch: Path, pilot) -> None:
    """Until the copy has begun: its target made in scratch, its first read not answered."""
    deadline = time.monotonic() + 60
    while not partial_copies(scratch):
        if pilot.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the stage-in never began; pilot exit {pilot.poll()}")
        time.sleep(0.1)


class ServedUntilSummary(threading.Thread):
    """Ends the slow filesystem's ``server`` once the pilot's summary is in ``ap``."""

    def __init__(self, ap: Path, server: subprocess.Popen):
        super().__init__(daemon=True)
        self.ap, self.server, self.after = ap, server, float("inf")
        self.started = time.monotonic()
        self.start()

    def run(self) -> None:
        while not (self.ap / "hpcpilot_summary.json").exists() and time.monotonic() - self.started < 120:
            time.sleep(0.1)
        self.after = time.monotonic() - self.started
        self.server.kill()

    def seconds(self) -> float:
        """From this watch's start until the summary was written."""
        self.join(10)
        return self.after


SERVED_FOR = 20.0  # seconds until the hung filesystem's server is ended, as an operator's remount would


@pytest.mark.timeout(120)
@pytest.mark.parametrize("launch", ["grid", "mpi2"])
def test_a_job_definition_read_that_never_returns_aborts_the_start_up_with_64(tmp_path: Path, slow_file,
                                                                              launch: str) -> None:
    """Rank 0 reads the job definitions before any rank watches another: a read that never returns would keep
    every rank idle until the allocation ends. Past startup_limit every rank is aborted (64), no job runs, and
    the batch job ends as soon as the filesystem lets the stuck read go."""
    if os.geteuid() != 0:
        pytest.skip("the hung file is bind-mounted onto a job spec: needs root")
    replica = slow_file(SIZE, delay=NO_ANSWER)
    ap = write_access_point(tmp_path / "ap", {HUNG_JOB: job_definition(HUNG_JOB, "true"),
                                              QUICK_JOB: job_definition(QUICK_JOB, "true")})
    spec = ap / str(HUNG_JOB) / "HPCJobs.json"
    subprocess.run(["mount", "--bind", str(replica), str(spec)], check=True)
    remount = threading.Timer(SERVED_FOR, slow_file.server(replica).kill)
    remount.start()
    try:
        run = run_pilot(ap, launch, env={"HPCPILOT_STARTUP_LIMIT": "3"}, timeout=90)
    finally:
        remount.cancel()
        subprocess.run(["umount", "-l", str(spec)], check=False)
    assert run.returncode == 64 and "Traceback" not in run.stderr, run.stderr[-3000:]
    gave_up = [line for line in run.stderr.splitlines() if "(startup_limit)" in line]
    assert gave_up, run.stderr[-3000:]
    assert _logged_at(gave_up[0]) - _logged_at(run.stderr.splitlines()[0]) < SERVED_FOR / 2, "not within its limit"
    assert not (ap / str(QUICK_JOB) / "worker_attributes.json").exists(), "a job ran after the start-up gave up"


def _logged_at(line: str) -> float:
    return time.mktime(time.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S"))


@pytest.mark.timeout(120)
def test_an_earlier_run_s_declarations_that_never_read_abort_the_start_up_with_64(tmp_path: Path, slow_file) -> None:
    """Rank 0 reads what an earlier run left to publish (here a dump it was taking back when it was killed)
    before any rank watches another: that read is start-up too, bounded by startup_limit."""
    if os.geteuid() != 0:
        pytest.skip("the hung file is bind-mounted onto a file of the access point: needs root")
    replica = slow_file(SIZE, delay=NO_ANSWER)
    ap = write_access_point(tmp_path / "ap", {HUNG_JOB: job_definition(HUNG_JOB, "true"),
                                              QUICK_JOB: job_definition(QUICK_JOB, "true")})
    (ap / ".hpcpilot").mkdir()  # an earlier run declared the job final, and was killed amid a take-back
    (ap / str(HUNG_JOB) / "worker_attributes.json").write_text('{"jobStatus": "finished"}')
    taken = ap / str(HUNG_JOB) / ".hpcpilot-pending.json.taken"
    taken.touch()
    subprocess.run(["mount", "--bind", str(replica), str(taken)], check=True)
    remount = threading.Timer(SERVED_FOR, slow_file.server(replica).kill)
    remount.start()
    try:
        run = run_pilot(ap, "mpi2", env={"HPCPILOT_STARTUP_LIMIT": "3"}, timeout=90)
    finally:
        remount.cancel()
        subprocess.run(["umount", "-l", str(taken)], check=False)
    gave_up = [line for line in run.stderr.splitlines() if "(startup_limit)" in line]
    assert gave_up, run.stderr[-3000:]
    assert _logged_at(gave_up[0]) - _logged_at(run.stderr.splitlines()[0]) < SERVED_FOR / 2, "not within its limit"
    assert run.returncode == 64, run.stderr[-3000:]
