"""Rank discovery under a real srun: tasks whose MPI is not wired to srun (its --mpi plugin) are not each taken
for a whole worker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from tests.e2e.conftest import communicate_or_kill

from .conftest import COMMAND_TIMEOUT, STARTUP_ALLOWANCE, SlurmCluster

pytestmark = pytest.mark.slurm


@pytest.mark.timeout(STARTUP_ALLOWANCE + 120)
def test_tasks_mpi_sees_as_singletons_stop_before_touching_the_access_point(slurm_cluster: SlurmCluster,
                                                                             tmp_path: Path) -> None:
    """srun --mpi=none: each task was a one-rank pilot; the run lock stopped the second (64), --kill-on-bad-exit
    then ended the first, and every job was declared failed with 1201."""
    ap = write_access_point(tmp_path / "ap", {p: job_definition(p, "sleep", "2") for p in range(1, 7)})
    name = f"hpcpilot-singletons-{os.getpid()}"
    command = ["srun", "-J", name, "-n", "2", "--overcommit", "--mpi=none", "--kill-on-bad-exit=1",
               sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap)]
    srun = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = communicate_or_kill(srun, 60, "srun --mpi=none")
    finally:
        subprocess.run(["scancel", "-n", name], timeout=COMMAND_TIMEOUT, check=False)
    assert srun.returncode == 65, stderr[-3000:]
    assert stderr.count("the launcher started 2 tasks, but MPI sees 1 rank(s)") == 2
    assert "srun --mpi=pmi2" in stderr and "Traceback" not in stderr
    assert not (ap / ".hpcpilot").exists() and not any(ap.glob("*/worker_attributes.json"))
