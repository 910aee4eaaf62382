"""srun leaves the other ranks running when one dies (Slurm's default WaitTime=0, no --kill-on-bad-exit):
the pilot itself notices and ends the step, instead of holding the allocation until its time limit."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multirank.test_graceful_stop import finish, sleeping_worker, wait_until_running
from tests.multirank.test_lost_rank import ABORT_BOUND, SILENCE_ENV, assert_no_payload_left

from .conftest import COMMAND_TIMEOUT, STARTUP_ALLOWANCE, SlurmCluster, slurm_task

pytestmark = pytest.mark.slurm


@pytest.mark.timeout(STARTUP_ALLOWANCE + 120)
def test_a_rank_killed_under_srun_ends_the_step_within_the_silence_limit(slurm_cluster: SlurmCluster,
                                                                          tmp_path: Path) -> None:
    ap = sleeping_worker(tmp_path)
    name = f"hpcpilot-lost-rank-{os.getpid()}"
    command = ["srun", "-J", name, "-n", "2", "--mpi=pmi2", sys.executable, "-m", "hpcpilot", "run",
               "--access-point", str(ap), "--cores-per-rank", "2"]
    env = {**os.environ, **SILENCE_ENV, "HPCPILOT_DECLARE_RUNNING_AFTER": "0"}
    pilot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        wait_until_running(ap, 2)
        task = slurm_task(ap, 1)
        assert task is not None, f"no task 1 of the pilot on {ap}"
        task.kill()
        killed = time.monotonic()
        returncode, stderr = finish(pilot, 60)
    finally:  # killing srun does not end its step: a step left hanging would hold the node
        subprocess.run(["scancel", "-n", name], timeout=COMMAND_TIMEOUT, check=False)
    assert time.monotonic() - killed < ABORT_BOUND, stderr[-3000:]
    assert returncode != 0
    assert "rank 1 not heard from" in stderr
    assert (ap / "kill_worker.json").exists()  # Harvester cancels the batch job, should a rank hang on
    assert_no_payload_left()
