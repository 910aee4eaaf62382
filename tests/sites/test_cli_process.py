"""`hpcpilot sites` and `hpcpilot batch-script` run as the operator runs them: real processes, real pipes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BATCH_SCRIPT = ("batch-script", "--site", "bnl", "--nodes", "2", "--walltime", "01:00:00", "--access-point", "/ap")


def hpcpilot(*argv: str, unbuffered: bool = True, **options) -> subprocess.CompletedProcess:
    """``python -m hpcpilot ARGV`` from this checkout, its standard error captured."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1" if unbuffered else ""}
    return subprocess.run([sys.executable, "-m", "hpcpilot", *argv], env=environment, stderr=subprocess.PIPE,
                          text=True, timeout=60, **options)


def with_reader_gone(*argv: str, unbuffered: bool) -> subprocess.CompletedProcess:
    """Run with standard output a pipe nobody reads any more: ``| head -1`` once head has its line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return hpcpilot(*argv, unbuffered=unbuffered, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("argv", [("sites",), BATCH_SCRIPT, ("run", "--help")], ids=["sites", "batch-script", "help"])
def test_a_command_whose_reader_left_ends_quietly_as_sigpipe_would(argv, unbuffered):
    """No traceback; 128+SIGPIPE as cat would give, except where argparse itself drops help it cannot write."""
    result = with_reader_gone(*argv, unbuffered=unbuffered)
    assert result.stderr == ""
    quietly_dropped = argv == ("run", "--help") and unbuffered
    assert result.returncode == (0 if quietly_dropped else 128 + signal.SIGPIPE)


@pytest.mark.timeout(120)
def test_a_command_whose_reader_stays_prints_everything_and_exits_0():
    result = hpcpilot(*BATCH_SCRIPT, stdout=subprocess.PIPE)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("#!/bin/bash") and result.stdout.rstrip().endswith("--site bnl")


def batch_script(nodes: str, walltime: str) -> subprocess.CompletedProcess:
    return hpcpilot("batch-script", "--site", "bnl", "--nodes", nodes, "--walltime", walltime, "--access-point", "/ap",
                    stdout=subprocess.PIPE)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nodes, walltime, allowed", [
    ("1000000000", "01:00:00", "nodes 1000000000: must be from 1 to 1,000,000"),
    ("1000001", "01:00:00", "nodes 1000001: must be from 1 to 1,000,000"),
    ("0", "01:00:00", "nodes 0: must be from 1 to 1,000,000"),
    ("-3", "01:00:00", "nodes -3: must be from 1 to 1,000,000"),
    ("2", "99999:00:00", "walltime '99999:00:00': must be from 00:00:01 to 8760:00:00 (365 days)"),
    ("2", "8760:00:01", "walltime '8760:00:01': must be from 00:00:01 to 8760:00:00 (365 days)"),
    ("2", "0:00:00", "walltime '0:00:00': must be from 00:00:01 to 8760:00:00 (365 days)"),
])
def test_an_allocation_no_scheduler_grants_is_refused_saying_what_is_allowed(nodes, walltime, allowed):
    result = batch_script(nodes, walltime)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"hpcpilot batch-script: {allowed}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nodes, walltime, minutes", [("20000", "168:00:00", 10080), ("1000000", "8760:00:00", 525600)])
def test_large_allocations_that_exist_are_written(nodes, walltime, minutes):
    result = batch_script(nodes, walltime)
    assert (result.returncode, result.stderr) == (0, "")
    assert f"#SBATCH --nodes={nodes}\n" in result.stdout and f"#SBATCH --time={minutes}\n" in result.stdout
