"""A graceful stop while inputs are copied from a slow filesystem (a real one: FUSE, tests/slowfs.py) ends the
copies within a chunk: the pilot stops in seconds, not when the gigabytes are in, and every job is declared."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from tests.multirank.test_graceful_stop import finish, rank_processes, start_pilot

SIZE = 1 << 30  # at 128 KiB per 0.05 s read, minutes to copy
STOP_WITHIN = 15  # seconds: the copies end within a chunk, the rest is the usual stop
JOBS = list(range(1, 7))  # on 2 ranks, two jobs copy on each (PREFETCH) while one waits
ES_JOB = 7001


def with_slow_input(definition: dict, replica: Path) -> dict:
    """The job's one input, the large file of the slow filesystem (Harvester's inFilePaths)."""
    return {**definition, "inFiles": replica.name, "inFilePaths": str(replica), "fsize": str(SIZE),
            "GUID": f"guid-{definition['PandaID']}", "scopeIn": "hpcpilot"}


def partial_copies(scratch: Path) -> list[Path]:
    return list(scratch.rglob("big.root"))


def wait_for_copies(scratch: Path, pilot: subprocess.Popen, count: int) -> None:
    """Until ``count`` copies have begun (bytes landed in scratch)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pilot.poll() is None:
        if sum(path.stat().st_size > 0 for path in partial_copies(scratch)) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"{count} input copies never began: {partial_copies(scratch)}, pilot exit {pilot.poll()}")


def stop_one_rank(pilot: subprocess.Popen) -> float:
    """SIGTERM to the last rank (the others hear of it from that rank); when it was sent."""
    ranks = rank_processes(pilot)
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGTERM)
    return time.monotonic()


def assert_stopped_quickly(pilot: subprocess.Popen, signalled: float, scratch: Path) -> None:
    returncode, stderr = finish(pilot, STOP_WITHIN)
    assert time.monotonic() - signalled < STOP_WITHIN
    assert returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert partial_copies(scratch) == []


def assert_declared_not_started(ap: Path, pandaid: int) -> None:
    attributes = json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1201), attributes
    assert attributes["pilotErrorDiag"].startswith("not started: SIGTERM"), attributes


@pytest.mark.timeout(120)
def test_a_stop_ends_the_input_copies_of_every_rank(tmp_path: Path, slow_file) -> None:
    replica = slow_file(SIZE)
    ap = write_access_point(tmp_path / "ap", {p: with_slow_input(job_definition(p, "true"), replica) for p in JOBS})
    scratch = tmp_path / "scratch"
    pilot = start_pilot(ap, 2, "--scratch", str(scratch))
    wait_for_copies(scratch, pilot, count=4)
    signalled = stop_one_rank(pilot)
    assert_stopped_quickly(pilot, signalled, scratch)
    for pandaid in JOBS:
        assert_declared_not_started(ap, pandaid)


@pytest.mark.timeout(120)
def test_a_stop_ends_an_event_service_jobs_input_copies(tmp_path: Path, slow_file) -> None:
    """Every rank copies the job's inputs while it keeps the others told it lives: the stop must be looked
    for meanwhile (only the copy's end was), and reach the rank that did not get the signal."""
    replica = slow_file(SIZE)
    definition = job_definition(ES_JOB, sys.executable, "-m hpcpilot.eventservice.reference_payload",
                                eventService="True")
    ap = write_access_point(tmp_path / "ap", {ES_JOB: with_slow_input(definition, replica)})
    scratch = tmp_path / "scratch"
    pilot = start_pilot(ap, 2, "--scratch", str(scratch))
    wait_for_copies(scratch, pilot, count=2)
    signalled = stop_one_rank(pilot)
    assert_stopped_quickly(pilot, signalled, scratch)
    assert_declared_not_started(ap, ES_JOB)
