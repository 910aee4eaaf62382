"""A real one-node Slurm cluster for tests, run by ``scripts/slurm-local.sh``.

The cluster is started on first use and left running for the rest of the session
(and after it: CI's ``.ci/run`` stops it). Without root or packages the tests are
skipped, except under CI (``CI=true``) where that is a failure.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import psutil
import pytest

log = logging.getLogger(__name__)

SLURM_LOCAL = Path(__file__).resolve().parents[2] / "scripts" / "slurm-local.sh"
STATUS_TIMEOUT = 30
# A first start may install packages with apt-get.
START_TIMEOUT = 600
COMMAND_TIMEOUT = 30
POLL_INTERVAL = 1.0
# Budget pytest-timeout must allow on top of a test's own work, because the
# session fixture starting the cluster counts against the first test's timeout.
STARTUP_ALLOWANCE = START_TIMEOUT
# Variables that would change what sbatch exports to the job (default: the whole environment).
EXPORT_CONTROLS = ("SBATCH_EXPORT", "SLURM_EXPORT_ENV")
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)


@dataclass(frozen=True)
class SlurmCluster:
    node: str
    partition: str


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs a real Slurm cluster (started by scripts/slurm-local.sh)"
    )


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _run_script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SLURM_LOCAL), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _cluster_is_up() -> bool:
    try:
        return _run_script("status", STATUS_TIMEOUT).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _start_cluster() -> str | None:
    """Start the cluster; return why it could not be started, or None."""
    if os.geteuid() != 0:
        return f"starting Slurm needs root ({SLURM_LOCAL} start)"
    try:
        started = _run_script("start", START_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"{SLURM_LOCAL} start did not finish within {START_TIMEOUT}s"
    if started.returncode != 0:
        return f"{SLURM_LOCAL} start failed (exit {started.returncode}):\n{started.stderr[-3000:]}"
    return None


def _describe_cluster() -> SlurmCluster:
    listing = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %P"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=True,
    )
    node, partition = listing.stdout.split()[:2]
    return SlurmCluster(node=node, partition=partition.rstrip("*"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node Slurm cluster; left running after the session."""
    if not _cluster_is_up():
        reason = _start_cluster()
        if reason is not None:
            if _under_ci():
                pytest.fail(f"Slurm is required under CI: {reason}", pytrace=False)
            pytest.skip(f"no Slurm cluster: {reason}")
    yield _describe_cluster()


def slurm_job_record(job_id: str) -> dict[str, str] | None:
    """``scontrol show job`` as a dict (JobState, ExitCode, Reason, ...), or None once purged.

    Without accounting this is the only record of a finished job; the generated
    slurm.conf keeps it for MinJobAge=600 s.
    """
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if shown.returncode != 0 or not shown.stdout.strip():
        return None
    return _parse_oneliner(shown.stdout)


def _parse_oneliner(text: str) -> dict[str, str]:
    record: dict[str, str] = {}
    last_key = None
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key:
            record[key] = value
            last_key = key
        elif last_key is not None:  # a value that contained spaces
            record[last_key] += " " + word
    return record


def _job_in_queue(job_id: str) -> bool:
    """True while squeue lists the job (pending, running, completing, ...)."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--jobs", job_id, "--format", "%i"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    # A job purged from slurmctld makes squeue fail with "Invalid job id".
    return listed.returncode == 0 and bool(listed.stdout.strip())


def _job_forgotten(job_id: str) -> bool:
    """True once slurmctld has purged the job (after MinJobAge)."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--jobs", job_id],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    return listed.returncode != 0 and "invalid job id" in listed.stderr.lower()


def sbatch_and_wait(
    script_path: Path | str,
    cwd: Path | str,
    timeout: float,
    sbatch_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Submit a batch script and wait until Slurm is done with it.

    ``sbatch_args`` go before the script (e.g. ``-D <dir>``); ``env`` is the
    submitting environment, which sbatch hands to the job (default: ours).
    Returns ``(job_id, state)`` with the final ``JobState`` (COMPLETED, FAILED,
    TIMEOUT, CANCELLED, ...), or ``UNKNOWN`` if slurmctld already forgot the job.
    The exit code is in ``slurm_job_record(job_id)["ExitCode"]`` ("code:signal").
    On timeout the job is cancelled and TimeoutError raised.
    """
    submitted = subprocess.run(
        ["sbatch", "--parsable", *sbatch_args, str(script_path)],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    log.info("submitted %s as Slurm job %s", script_path, job_id)
    deadline = time.monotonic() + timeout
    last_state = "UNKNOWN"
    while time.monotonic() < deadline:
        record = slurm_job_record(job_id)
        if record is not None:
            last_state = record.get("JobState", last_state)
        # COMPLETING jobs are still listed by squeue: wait until both agree.
        if last_state in TERMINAL_STATES and not _job_in_queue(job_id):
            return job_id, last_state
        if record is None and _job_forgotten(job_id):
            return job_id, last_state
        time.sleep(POLL_INTERVAL)
    subprocess.run(["scancel", job_id], timeout=COMMAND_TIMEOUT, check=False)
    raise TimeoutError(f"Slurm job {job_id} not finished after {timeout}s (last state {last_state})")


def pilot_bin_dir(scratch: Path) -> Path:
    """A directory whose ``hpcpilot`` runs under this test's interpreter (``sys.executable``).

    That is the interpreter's own bin directory when its console script is
    there (pip install), else ``scratch/bin`` with a small wrapper.
    """
    interpreter_bin = Path(sys.executable).parent
    if os.access(interpreter_bin / "hpcpilot", os.X_OK):
        return interpreter_bin
    wrapper_dir = scratch / "bin"
    wrapper_dir.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper_dir / "hpcpilot"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpcpilot "$@"\n')
    wrapper.chmod(0o755)
    return wrapper_dir


def batch_environment(scratch: Path, **settings: str) -> dict[str, str]:
    """The submitting environment for a pilot job: ours, with this interpreter's hpcpilot first on PATH.

    sbatch exports the whole submitting environment to the job unless told
    otherwise; the variables that tell it otherwise are removed. ``settings``
    are added (e.g. ``HPCPILOT_LIFETIME_MARGIN="10"``).
    """
    environment = {k: v for k, v in os.environ.items() if k not in EXPORT_CONTROLS}
    environment["PATH"] = os.pathsep.join([str(pilot_bin_dir(scratch)), environment.get("PATH", "")])
    environment.update(settings)
    return environment


def _queued_jobs_under(directory: Path) -> list[str]:
    """Ids of queued jobs whose working directory is ``directory`` or below it."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--format", "%i|%Z"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    jobs = []
    for line in listed.stdout.splitlines():
        job_id, _, work_dir = line.partition("|")
        if work_dir and Path(work_dir).is_relative_to(directory):
            jobs.append(job_id.strip())
    return jobs


@pytest.fixture
def jobs_cancelled_after(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``; at teardown every Slurm job working under it is cancelled and waited for."""
    yield tmp_path
    leftovers = _queued_jobs_under(tmp_path)
    if not leftovers:
        return
    log.warning("cancelling Slurm jobs left behind: %s", leftovers)
    subprocess.run(["scancel", *leftovers], timeout=COMMAND_TIMEOUT, check=False)
    deadline = time.monotonic() + 60
    while any(_job_in_queue(job_id) for job_id in leftovers) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)


def slurm_task(access_point: Path, rank: int) -> psutil.Process | None:
    """The pilot process Slurm started as task ``rank`` on ``access_point``, if there is one now."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            if (str(access_point) in (process.info["cmdline"] or [])
                    and process.environ().get("SLURM_PROCID") == str(rank)):
                return process
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return None
