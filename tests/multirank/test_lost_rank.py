"""A rank that dies or hangs while the launcher leaves the others running ends the pilot (exit 64) within
``rank_silence_limit``, instead of holding the allocation, heartbeat fresh, until its end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.workflow.supervisor import KILL_FILE_WAIT
from tests.multirank.test_graceful_stop import (JOBS, LONG_SLEEP, _status, finish, rank_processes,
                                                sleeping_worker, start_pilot, wait_until_running)

SILENCE_LIMIT = 2.0
SILENCE_ENV = {"HPCPILOT_RANK_SILENCE_LIMIT": str(SILENCE_LIMIT)}
ABORT_BOUND = SILENCE_LIMIT + 15  # the limit, a tick, MPI_Abort and the launcher's clean-up, on a loaded machine


def payloads_left() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if LONG_SLEEP in (p.info["cmdline"] or [])]


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone_soon(ranks: list[psutil.Process]) -> None:
    """A process may still be exiting when the launcher returns: give it a moment."""
    deadline = time.monotonic() + 10
    while any(map(alive, ranks)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, ranks))


def assert_no_payload_left() -> None:
    """Each rank's guard ends its payloads once the rank is gone: give the guards a moment."""
    deadline = time.monotonic() + 10
    while payloads_left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert payloads_left() == []


def assert_aborts_once_silenced(pilot: subprocess.Popen, ap: Path, rank: int, bound: float) -> str:
    """SIGSTOP ``rank`` (a hung rank, which MPICH's launcher does not see): the pilot ends with 64 within
    ``bound``, naming it, and no rank nor payload is left; returns the pilot's stderr."""
    wait_until_running(ap, 2)
    ranks = rank_processes(pilot)
    segments = shared_segments_of(ranks)
    ranks[rank].suspend()
    stopped = time.monotonic()
    returncode, stderr = finish(pilot, 60)
    assert time.monotonic() - stopped < bound
    assert returncode == 64, stderr[-3000:]
    assert f"rank {rank} not heard from" in stderr
    assert_gone_soon(ranks)  # the silent one too: the launcher SIGKILLs the ranks after MPI_Abort
    assert_no_payload_left()
    assert segments and not any(os.path.exists(segment) for segment in segments), "MPICH's segment left in RAM"
    return stderr


def shared_segments_of(ranks: list[psutil.Process]) -> set[str]:
    return {m.path for rank in ranks for m in rank.memory_maps() if m.path.startswith("/dev/shm/mpich_shm_")}


def assert_no_rank_taken_for_silent(ap: Path, stderr: str) -> None:
    assert "not heard from" not in stderr
    assert not (ap / "kill_worker.json").exists()


def run_to_the_end_under_a_1_s_limit(ap: Path, timeout: float) -> None:
    """The pilot on 2 ranks with a 1 s rank_silence_limit: it exits 0, no rank taken for silent."""
    pilot = start_pilot(ap, 2, env={"HPCPILOT_RANK_SILENCE_LIMIT": "1"})
    returncode, stderr = finish(pilot, timeout)
    assert returncode == 0, stderr[-3000:]
    assert_no_rank_taken_for_silent(ap, stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("silent_rank", [1, 0])
def test_a_rank_gone_silent_aborts_every_rank_with_exit_64(tmp_path: Path, silent_rank: int) -> None:
    """SIGSTOP makes a hung rank that MPICH's launcher does not see: the rank watching it gives up."""
    ap = sleeping_worker(tmp_path)
    assert_aborts_once_silenced(start_pilot(ap, 2, env=SILENCE_ENV), ap, silent_rank, ABORT_BOUND)
    assert f"rank {silent_rank} not heard from" in json.loads((ap / "kill_worker.json").read_text())["reason"]
    # Nothing was declared final for the jobs left: Harvester or a rerun decides.
    assert not {_status(ap, pandaid) for pandaid in JOBS} & {"finished", "failed"}


@pytest.mark.timeout(120)
def test_ranks_busy_or_waiting_for_long_are_not_taken_for_silent(tmp_path: Path) -> None:
    """A limit of 1 s, while rank 1 runs a 5 s payload and rank 0, done early, waits for it: every rank
    still says it is alive, the run ends normally."""
    jobs = {1: job_definition(1, "true"), 2: job_definition(2, "sleep", "5")}  # dealt round-robin: 2 to rank 1
    ap = write_access_point(tmp_path / "ap", jobs)
    run_to_the_end_under_a_1_s_limit(ap, 60)
    for pandaid in jobs:
        assert json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())["jobStatus"] == "finished"


@pytest.mark.timeout(120)
def test_ranks_declaring_many_invalid_jobs_are_not_taken_for_silent(tmp_path: Path) -> None:
    """4000 invalid definitions take each of 2 ranks seconds to declare, far over a 1 s limit: the ranks
    say they are alive between declarations."""
    jobs = {p: job_definition(p, "true", logFile="../escape") for p in range(1, 4001)}  # 1371 each
    ap = write_access_point(tmp_path / "ap", jobs)
    run_to_the_end_under_a_1_s_limit(ap, 90)
    summary = json.loads((ap / "hpcpilot_summary.json").read_text())
    assert (summary["failed"], summary["undeclared"]) == (4000, 0)


@pytest.mark.timeout(120)
def test_a_rank_done_seconds_before_rank_0_is_not_taken_for_silent(tmp_path: Path) -> None:
    """Unreadable definitions are all rank 0's to declare: rank 1, its share of invalid jobs declared seconds
    earlier, says it is alive while its results (one message, too large for MPI to send before rank 0 takes
    it) wait for rank 0. It did not: silent until rank 0 was done, it was taken for dead."""
    jobs = {p: job_definition(p, "true", logFile="../escape") for p in range(1, 4001)}  # 1371 each
    ap = write_access_point(tmp_path / "ap", jobs)
    for pandaid in range(2001, 4001):
        (ap / str(pandaid) / "HPCJobs.json").write_text("{")  # unreadable: rank 0 declares these too
    run_to_the_end_under_a_1_s_limit(ap, 90)
    summary = json.loads((ap / "hpcpilot_summary.json").read_text())
    assert (summary["failed"], summary["undeclared"]) == (4000, 0)


HUNG_KILL_FILE = """\
import time
import hpcpilot.harvester
hpcpilot.harvester.AccessPoint.request_kill = lambda self, reason: time.sleep(3600)  # the filesystem hangs
"""


@pytest.mark.timeout(120)
def test_a_rank_giving_up_aborts_though_the_kill_file_cannot_be_written(tmp_path: Path) -> None:
    """The shared filesystem may hang (perhaps why the peer fell silent): writing kill_worker.json must not keep
    the rank that gives up from aborting (it did: the pilot hung on, holding the allocation)."""
    (tmp_path / "hang").mkdir()
    (tmp_path / "hang" / "sitecustomize.py").write_text(HUNG_KILL_FILE)
    python_path = os.pathsep.join(filter(None, [str(tmp_path / "hang"), os.environ.get("PYTHONPATH")]))
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2, env={**SILENCE_ENV, "PYTHONPATH": python_path})
    stderr = assert_aborts_once_silenced(pilot, ap, 1, ABORT_BOUND + KILL_FILE_WAIT)
    assert "kill_worker.json not written" in stderr


@pytest.mark.timeout(120)
def test_the_whole_job_suspended_and_resumed_is_no_silent_rank(tmp_path: Path) -> None:
    """A batch system may suspend a whole job (SIGSTOP to every task, as Slurm's suspend and gang scheduling do)
    for longer than the limit: on resuming, no rank takes another for dead (every rank did, and aborted)."""
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 4, env=SILENCE_ENV)
    wait_until_running(ap, 4)
    ranks = rank_processes(pilot)
    for rank in ranks:
        rank.suspend()
    time.sleep(2.5 * SILENCE_LIMIT)
    for rank in ranks:
        rank.resume()
    time.sleep(2 * SILENCE_LIMIT)
    assert pilot.poll() is None
    ranks[0].send_signal(signal.SIGTERM)
    returncode, stderr = finish(pilot, 60)
    assert returncode == 143, stderr[-3000:]
    assert_no_rank_taken_for_silent(ap, stderr)
