"""The local Slurm cluster does what the pilot relies on: PMI2 MPI launch and batch signals."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import STARTUP_ALLOWANCE, SlurmCluster, sbatch_and_wait, slurm_job_record

pytestmark = pytest.mark.slurm

SRUN_TIMEOUT = 120
# -t 1 ends the job after 60 s (plus KillWait); the signal comes before that.
SIGNAL_JOB_TIMEOUT = 150
SHORT_JOB_TIMEOUT = 60

REPORT_RANK_AND_SIZE = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.Get_rank(), c.Get_size(), flush=True)"
)

USR1_BATCH_SCRIPT = """\
#!/bin/bash
#SBATCH -t 1
#SBATCH --signal=B:USR1@10
#SBATCH --output=signal-job.out
on_usr1() {{
    echo "USR1 after $SECONDS s" > {marker}
    kill "$sleeper" 2>/dev/null
    exit 0
}}
trap on_usr1 USR1
# bash runs a trap only between commands: sleep in the background and wait.
sleep 300 &
sleeper=$!
wait "$sleeper"
echo "no USR1 before the sleep ended" > {marker}.missed
"""


@pytest.mark.timeout(STARTUP_ALLOWANCE + SRUN_TIMEOUT)
def test_srun_pmi2_starts_two_mpi_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    launched = subprocess.run(
        ["srun", "-n", "2", "--mpi=pmi2", sys.executable, "-c", REPORT_RANK_AND_SIZE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SRUN_TIMEOUT,
        check=False,
    )
    assert launched.returncode == 0, launched.stderr
    reports = sorted(tuple(map(int, line.split())) for line in launched.stdout.splitlines())
    assert reports == [(0, 2), (1, 2)]


@pytest.mark.timeout(STARTUP_ALLOWANCE + SIGNAL_JOB_TIMEOUT)
def test_batch_shell_gets_usr1_before_time_limit(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    marker = tmp_path / "got-usr1"
    script = tmp_path / "signal-job.sh"
    script.write_text(USR1_BATCH_SCRIPT.format(marker=marker))

    job_id, state = sbatch_and_wait(script, cwd=tmp_path, timeout=SIGNAL_JOB_TIMEOUT)

    output = tmp_path / "signal-job.out"
    job_output = output.read_text() if output.exists() else ""
    assert marker.exists(), f"job {job_id} ended {state} without USR1; output: {job_output!r}"
    assert marker.read_text().startswith("USR1 after")
    assert state == "COMPLETED"


@pytest.mark.timeout(STARTUP_ALLOWANCE + SHORT_JOB_TIMEOUT)
def test_sbatch_and_wait_reports_failed_job_and_exit_code(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    script = tmp_path / "fails.sh"
    script.write_text("#!/bin/bash\nexit 3\n")

    job_id, state = sbatch_and_wait(script, cwd=tmp_path, timeout=SHORT_JOB_TIMEOUT)

    assert state == "FAILED"
    record = slurm_job_record(job_id)
    assert record is not None
    assert record["ExitCode"] == "3:0"
