"""The pilot under a real Slurm: scripts from ``hpcpilot batch-script``, submitted with ``sbatch``.

The BNL site's script (Slurm + ``srun``) is rendered for this one-node cluster
(``--cores-per-node 2``) and pointed at an access point laid out as Harvester
lays it. Case 1 runs a 12-job worker to the end on 2 ranks; case 2 lets Slurm
send SIGUSR1 before a short time limit; case 3 repeats case 2 through the
Harvester template, rendered and submitted the way Harvester's Slurm
submitter does it; case 4 SIGKILLs a rank, which ends the job step at once.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point

from .conftest import (
    COMMAND_TIMEOUT,
    STARTUP_ALLOWANCE,
    SlurmCluster,
    batch_environment,
    pilot_bin_dir,
    sbatch_and_wait,
    slurm_job_record,
    slurm_task,
)

pytestmark = pytest.mark.slurm

SITE = "bnl"
CORES_PER_NODE = 2  # this cluster's node; the site's own 36 would not fit --cpus-per-task
RANKS_PER_NODE = 2
JOBS = list(range(4001, 4013))

FULL_RUN_TIMEOUT = 180
# Case 2: a 3-minute limit and SIGUSR1 90 s before it. Slurm handles such
# events on a coarse timer and "may send the signal up to 60 seconds earlier
# than specified" (sbatch(1)): it comes 30-90 s into the job, after the pilot
# has started its payloads, and at least 90 s before the limit. The time
# limit itself is enforced on the same timer, so it may come a little late.
TIME_LIMIT = "00:03:00"
TIME_LIMIT_SECONDS = 180
SIGNAL_MARGIN = 90
# The pilot's own deadline (batch end minus lifetime_margin, 180 s by default)
# would already have passed in a 3-minute job: make it later than the signal
# so that it is Slurm's SIGUSR1 that stops the pilot.
LIFETIME_MARGIN = "10"
# The time limit, Slurm's KillWait (10 s), its coarse timer and the queue.
SIGNAL_RUN_TIMEOUT = TIME_LIMIT_SECONDS + 90
SIGUSR1_EXIT = 138
SIGUSR1_ERROR = 1207


# -- access points and scripts ---------------------------------------------


def _input_bytes(pandaid: int) -> bytes:
    return f"input of job {pandaid}\n".encode() * (pandaid % 5 + 1)


def copy_worker(access_point: Path) -> Path:
    """Twelve jobs, each turning its input into an upper-cased output (real bytes to check)."""
    definitions, inputs = {}, {}
    for pandaid in JOBS:
        inputs[pandaid] = {f"in.{pandaid}": _input_bytes(pandaid)}
        definition = job_definition(pandaid, "tr", f"a-z A-Z < in.{pandaid} > out.{pandaid}")
        definitions[pandaid] = with_outputs(with_inputs(definition, inputs[pandaid]), [f"out.{pandaid}"])
    return write_access_point(access_point, definitions, inputs)


def sleeping_worker(access_point: Path, seconds: str) -> Path:
    """Twelve jobs that would outlive the batch job by far."""
    return write_access_point(access_point, {pandaid: job_definition(pandaid, "sleep", seconds) for pandaid in JOBS})


def long_sleep() -> str:
    """``sleep 600``, with a unique fraction to find this test's payloads among the machine's processes."""
    return f"{600 + random.random():.9f}"


def batch_script(*arguments: str) -> str:
    """``hpcpilot batch-script --site bnl ...`` run as a command, as an admin would."""
    rendered = subprocess.run(
        [sys.executable, "-m", "hpcpilot", "batch-script", "--site", SITE,
         "--ranks-per-node", str(RANKS_PER_NODE), *arguments],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    return rendered.stdout


def concrete_script(tmp_path: Path, access_point: Path, walltime: str, *arguments: str) -> Path:
    script = tmp_path / "pilot.sbatch"
    script.write_text(batch_script("--nodes", "1", "--walltime", walltime, "--access-point", str(access_point),
                                   "--cores-per-node", str(CORES_PER_NODE), *arguments))
    return script


class HarvesterPlaceholders(dict):
    """Harvester's SafeDict: placeholders it has no value for stay as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def harvester_values(access_point: Path, n_core_total: int, walltime_seconds: int,
                     queue: str) -> HarvesterPlaceholders:
    """What Harvester's Slurm submitter puts in for one worker."""
    ram_per_core = 1000
    return HarvesterPlaceholders({
        "nNode": math.ceil(n_core_total / CORES_PER_NODE), "nCorePerNode": CORES_PER_NODE,
        "nCoreTotal": n_core_total, "requestRam": ram_per_core * n_core_total,
        "requestRamPerCore": ram_per_core, "requestDisk": 1024, "requestWalltime": walltime_seconds,
        "requestWalltimeMinute": math.ceil(walltime_seconds / 60), "accessPoint": str(access_point),
        "workerID": 4242, "harvesterID": "harvester-test", "computingSite": "BNL_TEST",
        "pandaQueueName": "BNL_TEST_MCORE", "localQueueName": queue,
        "logDir": str(access_point.parent / "harvester-logs"),
        "logSubDir": str(access_point.parent / "harvester-logs" / "4242"),
    })


# -- what the access point says ----------------------------------------------


def attributes(access_point: Path, pandaid: int) -> dict:
    return json.loads((access_point / str(pandaid) / "worker_attributes.json").read_text())


def declared(access_point: Path, pandaid: int) -> list[dict]:
    content = json.loads((access_point / str(pandaid) / "event_status.dump.json").read_text())
    assert list(content) == [str(pandaid)]
    return content[str(pandaid)]


def declared_bytes(entry: dict) -> bytes:
    """The declared file's bytes, after checking its size and adler32 against the declaration."""
    path = Path(entry["path"])
    assert path.is_absolute(), entry
    data = path.read_bytes()
    assert entry["fsize"] == len(data), entry
    assert entry["chksum"] == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", entry
    return data


def pilot_logs(access_point: Path, job_id: str) -> str:
    """The batch job's .out and .err (the script sends both into the access point)."""
    return "\n".join(path.read_text() for path in sorted(access_point.glob(f"hpcpilot-{job_id}.*")))


def assert_stopped_by_sigusr1(access_point: Path, job_id: str, state: str) -> None:
    """The pilot stopped on Slurm's SIGUSR1, declared every job with 1207 and exited 138, before the limit."""
    logs = pilot_logs(access_point, job_id)
    record = slurm_job_record(job_id)
    assert record is not None, f"job {job_id} forgotten by slurmctld; logs:\n{logs[-3000:]}"
    # TIMEOUT would mean Slurm killed the job at its limit: the signal came too late or was ignored.
    assert (state, record["ExitCode"]) == ("FAILED", f"{SIGUSR1_EXIT}:0"), logs[-3000:]
    assert f"exit code {SIGUSR1_EXIT}" in logs
    assert "SIGUSR1 received" in logs
    for pandaid in JOBS:
        job = attributes(access_point, pandaid)
        assert (job["jobStatus"], job["pilotErrorCode"]) == ("failed", SIGUSR1_ERROR), job
        assert "SIGUSR1" in job["pilotErrorDiag"], job
    summary = json.loads((access_point / "hpcpilot_summary.json").read_text())
    assert summary["failed"] == len(JOBS) and summary["ranks"] == RANKS_PER_NODE, summary


def assert_no_payload_left(marker: str) -> None:
    survivors = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    assert survivors == [], f"payloads outlived the batch job: {survivors}"


# -- the tests -----------------------------------------------------------------


def test_batch_path_finds_this_interpreters_hpcpilot(tmp_path: Path) -> None:
    found = shutil.which("hpcpilot", path=batch_environment(tmp_path)["PATH"])
    assert found is not None and Path(found).parent == pilot_bin_dir(tmp_path)
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                             env=batch_environment(tmp_path), check=True)
    assert version.stdout.startswith("hpcpilot ")


@pytest.mark.timeout(STARTUP_ALLOWANCE + FULL_RUN_TIMEOUT + 60)
def test_twelve_jobs_on_two_ranks_complete_and_are_declared(
    slurm_cluster: SlurmCluster, jobs_cancelled_after: Path
) -> None:
    tmp_path = jobs_cancelled_after
    access_point = copy_worker(tmp_path / "ap")
    script = concrete_script(tmp_path, access_point, "00:10:00")

    job_id, state = sbatch_and_wait(script, cwd=access_point, timeout=FULL_RUN_TIMEOUT,
                                    env=batch_environment(tmp_path))

    logs = pilot_logs(access_point, job_id)
    assert state == "COMPLETED", logs[-3000:]
    record = slurm_job_record(job_id)
    assert record is not None and record["ExitCode"] == "0:0"
    for pandaid in JOBS:
        job = attributes(access_point, pandaid)
        assert (job["jobStatus"], job["pilotErrorCode"]) == ("finished", 0), job
        entries = {entry["type"]: entry for entry in declared(access_point, pandaid)}
        assert set(entries) == {"output", "log"}
        assert declared_bytes(entries["output"]) == _input_bytes(pandaid).upper()
        declared_bytes(entries["log"])
    summary = json.loads((access_point / "hpcpilot_summary.json").read_text())
    assert summary["finished"] == len(JOBS) and summary["ranks"] == RANKS_PER_NODE, summary
    # srun started both ranks, and the jobs were shared between them.
    assert {job["rank"] for job in summary["jobs"]} == set(range(RANKS_PER_NODE))


@pytest.mark.timeout(STARTUP_ALLOWANCE + SIGNAL_RUN_TIMEOUT + 60)
def test_sigusr1_before_the_time_limit_stops_the_pilot_gracefully(
    slurm_cluster: SlurmCluster, jobs_cancelled_after: Path
) -> None:
    tmp_path = jobs_cancelled_after
    seconds = long_sleep()
    access_point = sleeping_worker(tmp_path / "ap", seconds)
    script = concrete_script(tmp_path, access_point, TIME_LIMIT, "--signal-margin", str(SIGNAL_MARGIN))
    assert f"#SBATCH --signal=SIGUSR1@{SIGNAL_MARGIN}" in script.read_text()

    job_id, state = sbatch_and_wait(script, cwd=access_point, timeout=SIGNAL_RUN_TIMEOUT,
                                    env=batch_environment(tmp_path, HPCPILOT_LIFETIME_MARGIN=LIFETIME_MARGIN))

    assert_stopped_by_sigusr1(access_point, job_id, state)
    assert_no_payload_left(seconds)


@pytest.mark.timeout(STARTUP_ALLOWANCE + SIGNAL_RUN_TIMEOUT + 60)
def test_harvester_rendered_template_stops_gracefully_on_sigusr1(
    slurm_cluster: SlurmCluster, jobs_cancelled_after: Path
) -> None:
    tmp_path = jobs_cancelled_after
    seconds = long_sleep()
    access_point = sleeping_worker(tmp_path / "ap", seconds)
    template = batch_script("--harvester-template", "--signal-margin", str(SIGNAL_MARGIN))
    # Harvester: the admin's template file, format_map with its values, a script file, sbatch -D <accessPoint>.
    values = harvester_values(access_point, CORES_PER_NODE, TIME_LIMIT_SECONDS, slurm_cluster.partition)
    script = access_point / "harvester_submit.sh"
    script.write_text(template.format_map(values))

    job_id, state = sbatch_and_wait(script, cwd=tmp_path, timeout=SIGNAL_RUN_TIMEOUT,
                                    sbatch_args=["-D", str(access_point)],
                                    env=batch_environment(tmp_path, HPCPILOT_LIFETIME_MARGIN=LIFETIME_MARGIN))

    record = slurm_job_record(job_id)
    assert record is not None and Path(record["WorkDir"]) == access_point
    assert record["TimeLimit"] == TIME_LIMIT and record["NumNodes"] == "1"
    assert_stopped_by_sigusr1(access_point, job_id, state)
    assert_no_payload_left(seconds)


@pytest.mark.timeout(STARTUP_ALLOWANCE + FULL_RUN_TIMEOUT + 60)
def test_a_rank_killed_ends_the_job_step_at_once(slurm_cluster: SlurmCluster, jobs_cancelled_after: Path) -> None:
    """The script's srun has --kill-on-bad-exit: Slurm ends the step as soon as a rank dies, long before the
    pilot's own rank_silence_limit (600 s by default) would; each rank's guard ends its payloads."""
    tmp_path = jobs_cancelled_after
    seconds = long_sleep()
    access_point = sleeping_worker(tmp_path / "ap", seconds)
    script = concrete_script(tmp_path, access_point, "00:10:00")
    outcome: dict[str, tuple[str, str]] = {}
    batch = threading.Thread(target=lambda: outcome.update(job=sbatch_and_wait(
        script, cwd=access_point, timeout=FULL_RUN_TIMEOUT, env=batch_environment(tmp_path))))
    batch.start()
    try:
        _wait_for_rank_with_payloads(access_point, rank=1, timeout=FULL_RUN_TIMEOUT / 2).kill()
        killed = time.monotonic()
    finally:
        batch.join(FULL_RUN_TIMEOUT)
    assert "job" in outcome, f"the batch job did not end within {FULL_RUN_TIMEOUT} s of a rank's death"
    job_id, state = outcome["job"]
    assert time.monotonic() - killed < 60, pilot_logs(access_point, job_id)[-3000:]
    assert state in ("FAILED", "CANCELLED"), pilot_logs(access_point, job_id)[-3000:]
    assert_no_payload_left(seconds)


def _wait_for_rank_with_payloads(access_point: Path, rank: int, timeout: float) -> psutil.Process:
    """Slurm's task ``rank`` of the pilot on ``access_point``, once it has payloads running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = slurm_task(access_point, rank)
        try:
            if task is not None and any("sleep" in child.name() for child in task.children(recursive=True)):
                return task
        except psutil.Error:  # gone meanwhile
            pass
        time.sleep(0.5)
    pytest.fail(f"task {rank} of the pilot never ran payloads")
