"""A stop on one rank (signal or stop file) stops every rank gracefully, with every job declared."""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from tests.e2e.conftest import communicate_or_kill, read_terminal_until, start_on_a_terminal
from tests.sites.conftest import install_outside_plugin

STOP_BOUND = 45
LONG_SLEEP = f"{299 + random.random():.9f}"  # unique, to find this run's payloads among the machine's processes
JOBS = list(range(1, 13))


HPCPILOT = (sys.executable, "-m", "hpcpilot")


def start_pilot(ap: Path, ranks: int, *options: str, env: dict | None = None, under: tuple[str, ...] = (),
                python: tuple[str, ...] = HPCPILOT) -> subprocess.Popen:
    """``under``: a command that starts mpiexec (e.g. env --ignore-signal=HUP, as nohup would); ``python``: what
    runs hpcpilot's command line in each rank."""
    return subprocess.Popen([*under, "mpiexec", "-n", str(ranks), *pilot_command(ap, *options, python=python)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**PILOT_ENV, **(env or {})}, start_new_session=True)


def pilot_command(ap: Path, *options: str, python: tuple[str, ...] = HPCPILOT) -> list[str]:
    return [*python, "run", "--access-point", str(ap), "--cores-per-rank", "2",
            "--progress-interval", "1", *options]


# the tests wait for jobs declared running
PILOT_ENV = {**os.environ, "HPCPILOT_LIMITS__CHECK_INTERVAL": "0.5", "HPCPILOT_LIMITS__KILL_GRACE": "3",
             "HPCPILOT_DECLARE_RUNNING_AFTER": "0"}


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    _, stderr = communicate_or_kill(process, timeout, "the stopping pilot")
    return process.returncode, stderr


def rank_processes(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The ranks: the launcher's proxies' children (not a payload caught between fork and exec)."""
    return [p for p in psutil.Process(launcher.pid).children(recursive=True)
            if p.parent() and p.parent().name().startswith("hydra_pmi_proxy")]


def wait_until_running(ap: Path, ranks: int, timeout: float = 60) -> None:
    """Until every rank runs a payload (jobs are dealt round-robin: rank r has JOBS[r::ranks])."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [_status(ap, pandaid) for pandaid in JOBS]
        if all("running" in states[rank::ranks] for rank in range(ranks)):
            return
        time.sleep(0.2)
    pytest.fail(f"payloads never started on every rank: {states}")


def _status(ap: Path, pandaid: int) -> str | None:
    try:
        return json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())["jobStatus"]
    except FileNotFoundError:
        return None


def rank_1_waiting_for_rank_0(ap: Path, pilot: subprocess.Popen) -> psutil.Process:
    """Rank 1 once its job 2 has finished while rank 0's job 1 runs on: it is past its last job."""
    deadline = time.monotonic() + 60
    while (_status(ap, 1), _status(ap, 2)) != ("running", "finished") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (_status(ap, 1), _status(ap, 2)) == ("running", "finished")
    time.sleep(1)  # rank 1 is past its last job, waiting for rank 0
    return rank_processes(pilot)[1]


def sleeping_worker(tmp_path: Path) -> Path:
    return write_access_point(tmp_path / "ap", {p: job_definition(p, "sleep", LONG_SLEEP) for p in JOBS})


def assert_all_declared(ap: Path, code: int) -> None:
    for pandaid in JOBS:
        attributes = json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", code), attributes
    leftovers = [p for p in ap.rglob("*") if p.name.startswith(".hpcpilot-tmp-")]
    assert leftovers == []
    for path in ap.rglob("*.json"):
        json.loads(path.read_text())
    assert not any(LONG_SLEEP in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("signum, code, exit_code", [(signal.SIGTERM, 1201, 143), (signal.SIGUSR1, 1207, 138),
                                                     (signal.SIGHUP, 1200, 129)])
def test_signal_to_one_rank_stops_every_rank(tmp_path: Path, ranks: int, signum: int, code: int,
                                             exit_code: int) -> None:
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, ranks)
    wait_until_running(ap, ranks)
    ranks_found = rank_processes(pilot)
    assert len(ranks_found) == ranks
    signalled = time.monotonic()
    ranks_found[-1].send_signal(signum)
    returncode, stderr = finish(pilot, STOP_BOUND)
    assert time.monotonic() - signalled < STOP_BOUND
    assert returncode == exit_code, stderr[-3000:]
    assert_all_declared(ap, code)


@pytest.mark.timeout(150)
def test_a_signal_during_start_up_is_a_graceful_stop_too(tmp_path: Path) -> None:
    """SIGTERM to every rank while it starts (here: a site plugin slow to detect its site, after MPI has
    started): a stop like any other, 143 and every job declared, never a rank killed by the signal."""
    marker = tmp_path / "detecting"
    install_outside_plugin(tmp_path, f"""
        import pathlib, time
        from hpcpilot.sites import Site

        class SummitSite(Site):
            def detect(self, environ):
                pathlib.Path({str(marker)!r}).touch()
                time.sleep(3)
                return False
        """, "name: summit\n")
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2, env={"PYTHONPATH": str(tmp_path)})
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for rank in rank_processes(pilot):
        rank.send_signal(signal.SIGTERM)
    returncode, stderr = finish(pilot, STOP_BOUND)
    assert returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert_all_declared(ap, 1201)


def wait_until_running_on_a_terminal(ap: Path, pilot: subprocess.Popen, master: int) -> None:
    read_terminal_until(master, lambda: _status(ap, JOBS[0]) == "running", pilot)
    assert _status(ap, JOBS[0]) == "running", f"the pilot's exit code: {pilot.poll()}"


def exit_code_within(pilot: subprocess.Popen, timeout: float) -> int | None:
    try:
        return pilot.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pilot.pid, signal.SIGKILL)  # the session's leader: its process group is the pilot's
        pilot.wait()
        return None


@pytest.mark.timeout(150)
def test_a_pilot_whose_terminal_goes_away_stops_gracefully(tmp_path: Path) -> None:
    """The hangup's SIGHUP killed the pilot on the spot (exit -1): jobs in flight stayed 'running' for
    Harvester. It is a stop like SIGTERM's: jobs declared with 1200 (killed by a signal), exit 129. Started with
    SIGHUP at its default, whatever the test runner was started with."""
    ap = sleeping_worker(tmp_path)
    pilot, master = start_on_a_terminal(["env", "--default-signal=HUP", *pilot_command(ap)], env=PILOT_ENV)
    wait_until_running_on_a_terminal(ap, pilot, master)
    os.close(master)  # the terminal hangs up
    assert exit_code_within(pilot, STOP_BOUND) == 129
    assert_all_declared(ap, 1200)


@pytest.mark.timeout(150)
def test_a_pilot_started_under_nohup_runs_on_when_its_terminal_goes_away(tmp_path: Path) -> None:
    """nohup asks for no stop at a hangup: the pilot must not catch the SIGHUP it was started ignoring. A
    SIGTERM after the hangup is then the stop that counts (143 and 1201, not 129 and 1200)."""
    ap = sleeping_worker(tmp_path)
    pilot, master = start_on_a_terminal(["nohup", *pilot_command(ap)], env=PILOT_ENV, cwd=tmp_path)  # to nohup.out
    wait_until_running_on_a_terminal(ap, pilot, master)
    os.close(master)  # the terminal hangs up
    pilot.send_signal(signal.SIGTERM)
    assert exit_code_within(pilot, STOP_BOUND) == 143, (tmp_path / "nohup.out").read_text()[-3000:]
    assert_all_declared(ap, 1201)


@pytest.mark.timeout(150)
def test_ranks_started_ignoring_sighup_keep_ignoring_it_once_mpi_has_started(tmp_path: Path) -> None:
    """MPI's start (UCX) takes SIGHUP for its own: a rank of a pilot under nohup that a hangup reached then had
    UCX's debug log on, its every call written to the pilot's standard error, for the rest of the run. The
    SIGTERM after it is the stop that counts (143 and 1201, not 129 and 1200)."""
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2, under=("env", "--ignore-signal=HUP"))
    wait_until_running(ap, 2)
    ranks = rank_processes(pilot)
    for rank in ranks:
        rank.send_signal(signal.SIGHUP)
    for rank in ranks:
        rank.send_signal(signal.SIGTERM)
    stdout, stderr = communicate_or_kill(pilot, STOP_BOUND, "the stopping pilot")
    assert pilot.returncode == 143, stderr[-3000:]
    assert "UCX" not in stdout + stderr, stdout[-3000:]  # UCX logs to standard output
    assert_all_declared(ap, 1201)


HUNG_UP_AS_MPI_STARTS = """
import os, signal, sys
from hpcpilot import cli
started = cli.world

def hung_up_as_mpi_starts(**options):
    comm = started(**options)
    os.kill(os.getpid(), signal.SIGHUP)  # the terminal goes away before the pilot's handlers are back
    return comm

cli.world = hung_up_as_mpi_starts
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.timeout(150)
def test_a_hangup_as_mpi_starts_is_a_graceful_stop(tmp_path: Path) -> None:
    """A SIGHUP between MPI's start (UCX takes SIGHUP) and the pilot's handlers' re-install went to UCX's: lost,
    the jobs ran on as if no stop had come. It waits for the pilot's handlers: 129, every job declared 1200."""
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2, under=("env", "--default-signal=HUP"),
                        python=(sys.executable, "-c", HUNG_UP_AS_MPI_STARTS))
    returncode, stderr = finish(pilot, STOP_BOUND)
    assert returncode == 129, stderr[-3000:]
    assert_all_declared(ap, 1200)


@pytest.mark.timeout(150)
def test_stop_file_stops_the_worker(tmp_path: Path) -> None:
    ap = sleeping_worker(tmp_path)
    pilot = start_pilot(ap, 2)
    wait_until_running(ap, 2)
    (ap / "hpcpilot_stop").touch()
    returncode, stderr = finish(pilot, STOP_BOUND)
    assert returncode == 143, stderr[-3000:]
    assert "stop file" in stderr
    assert_all_declared(ap, 1201)


@pytest.mark.timeout(150)
def test_a_stop_file_there_at_the_start_stops_the_run_and_says_to_remove_the_file(tmp_path: Path) -> None:
    """Left by an earlier stop, it stops a rerun at once (as it may be meant to): the diagnostic must not say it
    appeared, but that it was there from the start, and how to run the jobs."""
    ap = sleeping_worker(tmp_path)
    (ap / "hpcpilot_stop").touch()
    returncode, stderr = finish(start_pilot(ap, 2), STOP_BOUND)
    assert returncode == 143, stderr[-3000:]
    assert "was there when the jobs were to start" in stderr and "remove it to run them" in stderr
    assert "appeared" not in stderr
    assert_all_declared(ap, 1201)


@pytest.mark.timeout(120)
def test_a_stop_every_rank_sees_itself_leaves_no_shared_memory_behind(tmp_path: Path) -> None:
    """The lifetime ends on every rank at once, so each announces the stop to the others. Every notice must
    be received: MPICH leaves its /dev/shm segment behind otherwise. Run with a /dev/shm of its own."""
    ap = sleeping_worker(tmp_path)
    printed, stderr = run_with_own_dev_shm(["mpiexec", "-n", "2", sys.executable, "-m", "hpcpilot", "run",
                                            "--access-point", str(ap), "--lifetime", "183"])  # 3 s before the margin
    assert printed == ["rc=81"], (printed, stderr[-3000:])
    assert_all_declared(ap, 1213)


LATE_SIGNAL = """
import atexit, os, signal, sys
from mpi4py import MPI  # it finalizes MPI at exit: the hook below, registered later, runs before that
from hpcpilot.cli import main
atexit.register(os.kill, os.getpid(), signal.SIGXCPU)
sys.exit(main())
"""


@pytest.mark.timeout(120)
def test_a_stop_signal_after_the_command_returned_kills_no_rank_in_mpi_finalize(tmp_path: Path) -> None:
    """SIGXCPU to every rank as it exits, every job declared, MPI not yet finalized: the signal finds nothing
    left to stop, so no rank dies of it (which left MPICH's segment in /dev/shm and made mpiexec exit 24)."""
    ap = write_access_point(tmp_path / "ap", {pandaid: job_definition(pandaid, "true") for pandaid in JOBS})
    printed, stderr = run_with_own_dev_shm(["mpiexec", "-n", "2", sys.executable, "-c", LATE_SIGNAL, "run",
                                            "--access-point", str(ap)])
    assert printed == ["rc=0"], (printed, stderr[-3000:])
    assert all(json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())["jobStatus"] == "finished"
               for pandaid in JOBS)


def run_with_own_dev_shm(command: list[str]) -> tuple[list[str], str]:
    """``command`` run with a /dev/shm of its own: (its output, its exit code as rc=N and what it left in
    /dev/shm, as words; its stderr). Skips where that cannot be had."""
    script = f"mount -t tmpfs tmpfs /dev/shm || exit 99; {shlex.join(command)}; echo rc=$?; ls -A /dev/shm"
    process = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = communicate_or_kill(process, 90, "the pilot in its own /dev/shm")
    if process.returncode == 99 or "unshare:" in stderr:
        pytest.skip(f"cannot give the pilot a /dev/shm of its own: {stderr[-300:]}")
    return stdout.split(), stderr


@pytest.mark.timeout(120)
def test_lifetime_margin_stops_and_keeps_long_jobs_from_starting(tmp_path: Path) -> None:
    definitions = {1: job_definition(1, "sleep", LONG_SLEEP), 2: job_definition(2, "true", maxWalltime=3600),
                   3: job_definition(3, "true", maxWalltime=2)}
    ap = write_access_point(tmp_path / "ap", definitions)
    pilot = start_pilot(ap, 2, "--lifetime", "188")  # 8 s before the 180 s margin
    returncode, stderr = finish(pilot, 60)
    attributes = {p: json.loads((ap / str(p) / "worker_attributes.json").read_text()) for p in definitions}
    assert returncode == 81, stderr[-3000:]
    assert attributes[1]["pilotErrorCode"] == 1213 and "lifetime" in attributes[1]["pilotErrorDiag"]
    assert attributes[2]["pilotErrorCode"] == 1213 and "does not fit" in attributes[2]["pilotErrorDiag"]
    assert "transExitCode" not in attributes[2]
    assert attributes[3]["jobStatus"] == "finished"


@pytest.mark.timeout(150)
def test_a_signal_to_a_rank_done_with_its_share_stops_the_others(tmp_path: Path) -> None:
    """Rank 1 has run its one short job and waits for rank 0, whose job runs on: a SIGTERM to rank 1 alone
    still stops the worker (it was ignored: rank 0's job ran to its end, and the pilot exited 0)."""
    ap = write_access_point(tmp_path / "ap", {1: job_definition(1, "sleep", LONG_SLEEP), 2: job_definition(2, "true")})
    pilot = start_pilot(ap, 2)
    rank_1_waiting_for_rank_0(ap, pilot).send_signal(signal.SIGTERM)
    returncode, stderr = finish(pilot, STOP_BOUND)
    assert returncode == 143, stderr[-3000:]
    attributes = json.loads((ap / "1" / "worker_attributes.json").read_text())
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1201), attributes
    assert _status(ap, 2) == "finished"
    assert not any(LONG_SLEEP in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


@pytest.mark.timeout(150)
def test_ranks_waiting_for_the_event_service_jobs_sleep_and_take_a_stop(tmp_path: Path) -> None:
    """With an event service job after the others, rank 1 done with its share waits for rank 0 to begin it:
    it must wait asleep (it spun in a blocking broadcast, a core's worth of CPU) and still act on a SIGTERM
    sent to it alone (seen only once rank 0's job had run to its end)."""
    definitions = {1: job_definition(1, "sleep", LONG_SLEEP), 2: job_definition(2, "true"),
                   3: job_definition(3, sys.executable, "-m hpcpilot.eventservice.reference_payload",
                                     eventService="True")}
    ap = write_access_point(tmp_path / "ap", definitions)
    pilot = start_pilot(ap, 2)
    rank_1 = rank_1_waiting_for_rank_0(ap, pilot)
    before = sum(rank_1.cpu_times()[:2])
    time.sleep(3)
    cpu = sum(rank_1.cpu_times()[:2]) - before
    rank_1.send_signal(signal.SIGTERM)
    returncode, stderr = finish(pilot, STOP_BOUND)
    assert cpu < 0.6, f"rank 1 used {cpu:.2f} s of CPU in 3 s waiting"
    assert returncode == 143, stderr[-3000:]
    assert _status(ap, 2) == "finished"
    for pandaid in (1, 3):
        attributes = json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1201), attributes
