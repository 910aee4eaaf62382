"""Payload limits with real processes: each over-limit payload ends declared with its code, its whole
process tree gone, while the other jobs of the worker finish normally."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition, with_outputs, write_access_point

from ..sites.conftest import install_outside_plugin
from .conftest import PilotRun, communicate_or_kill, run_pilot, tarball_members

FAST_LIMITS = {
    "HPCPILOT_LIMITS__CHECK_INTERVAL": "0.2", "HPCPILOT_LIMITS__MEMORY_INTERVAL": "0.5",
    "HPCPILOT_LIMITS__DISK_INTERVAL": "0.5", "HPCPILOT_LIMITS__LOOPING_INTERVAL": "0.5",
    "HPCPILOT_LIMITS__LOOPING_LIMIT": "3", "HPCPILOT_LIMITS__KILL_GRACE": "1",
    "HPCPILOT_LIMITS__MAX_STDOUT_MB": "1", "HPCPILOT_LIMITS__MIN_FREE_SPACE_MB": "1",
}
MARK = uuid.uuid4().hex[:8]  # in every payload command line, to find survivors
WALLTIME, MEMORY, LOOPING, STDOUT, IGNORES_TERM, ORPHAN, NORMAL = 11, 12, 13, 14, 15, 16, 17


def allocate(mb: int, seconds: int) -> str:
    """A payload that holds ``mb`` MB for ``seconds``."""
    return f"{sys.executable} -c 'import time; x = bytearray({mb} * 2**20); time.sleep({seconds})' {MARK}"


ALLOCATE = allocate(300, 60)


def busy(seconds: int) -> str:
    """A payload that keeps touching its work directory (so it is not looping)."""
    return f"for i in $(seq {seconds * 5}); do date > beat; sleep 0.2; done; : {MARK}"


def limit_cases() -> dict[int, dict]:
    return {
        WALLTIME: job_definition(WALLTIME, "bash", f"-c '{busy(60)}'", maxWalltime=2),
        MEMORY: job_definition(MEMORY, ALLOCATE, minRamCount=50),
        LOOPING: job_definition(LOOPING, "sleep", f"60 # {MARK}"),
        STDOUT: job_definition(STDOUT, "bash", f"-c 'head -c 3000000 /dev/zero; {busy(60)}'"),
        IGNORES_TERM: job_definition(IGNORES_TERM, "bash", f"-c 'trap \"\" TERM; {busy(60)}'", maxWalltime=2),
        ORPHAN: with_outputs(job_definition(
            ORPHAN, "bash", f"-c '(setsid bash -c \"sleep 120; : {MARK}\" &); echo ok > out.txt'"), ["out.txt"]),
        NORMAL: with_outputs(job_definition(NORMAL, "bash", f"-c '{busy(4)}; echo done > out.txt'"), ["out.txt"]),
    }


def survivors() -> list[str]:
    return [" ".join(p.info["cmdline"]) for p in psutil.process_iter(["cmdline"])
            if MARK in " ".join(p.info["cmdline"] or []) and "pytest" not in " ".join(p.info["cmdline"])]


@pytest.mark.timeout(180)
def test_each_limit_ends_its_payload_with_its_code(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", limit_cases())
    run = run_pilot(ap, "grid", "--cores-per-rank", "8", env=FAST_LIMITS)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {WALLTIME: (1213, "walltime"), MEMORY: (1235, "PSS"), LOOPING: (1150, "looping"),
                STDOUT: (1106, "stdout"), IGNORES_TERM: (1213, "walltime")}
    for pandaid, (code, word) in expected.items():
        attributes = run.attributes(pandaid)
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", code), attributes
        assert word in attributes["pilotErrorDiag"] and "limit" in attributes["pilotErrorDiag"]
    assert "exceeded limit 100.0 MB (minRamCount)" in run.attributes(MEMORY)["pilotErrorDiag"]
    assert run.attributes(MEMORY)["maxRSS"] > 100 * 1024  # over the limit: how far over depends on the sampling
    for pandaid in (ORPHAN, NORMAL):
        assert run.attributes(pandaid)["jobStatus"] == "finished", run.attributes(pandaid)
    assert survivors() == []


SMALL_NODES = "name: summit\ncores_per_node: 64\nmemory_per_node_mb: 3200\n"  # 50 MB per core


@pytest.mark.timeout(180)
def test_a_job_without_min_ram_is_limited_by_the_sites_ram_per_core(tmp_path: Path) -> None:
    """At a site of 50 MB per core, a 1-core job without minRamCount may use 2 x 50 MB: holding 300 MB it is
    killed with 1235, its job log saying where its limit came from; a job holding less finishes, and so does
    one holding 300 MB whose minRamCount allows it (minRamCount comes first)."""
    (tmp_path / "plugin").mkdir()
    install_outside_plugin(tmp_path / "plugin", "from hpcpilot.sites import Site\n\nclass SummitSite(Site):\n"
                           "    pass\n", SMALL_NODES)
    over, under, own_ram = 41, 42, 43
    ap = write_access_point(tmp_path / "ap", {
        over: job_definition(over, ALLOCATE),
        under: job_definition(under, allocate(20, 3)),
        own_ram: job_definition(own_ram, allocate(300, 3), minRamCount=400),
    })
    repository = Path(__file__).resolve().parents[2]  # this checkout's hpcpilot, beside the outside plugin
    env = {**FAST_LIMITS, "HPCPILOT_LIMITS__LOOPING_LIMIT": "60",  # the quiet payloads are not looping
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugin"), str(repository)])}
    run = run_pilot(ap, "grid", "--site", "summit", "--cores-per-rank", "1", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(over)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1235), attributes
    assert "exceeded limit 100.0 MB (RAM per core of site summit)" in attributes["pilotErrorDiag"]
    for pandaid in (under, own_ram):
        assert run.attributes(pandaid)["jobStatus"] == "finished", run.attributes(pandaid)
    job_log = job_pilot_log(run, over)
    assert job_log.count("memory limit") == 1
    assert "memory limit 100.0 MB PSS: no minRamCount" in job_log and "site summit: 3200 MB / 64 cores" in job_log
    assert "memory limit 800.0 MB PSS: minRamCount 400 MB" in job_pilot_log(run, own_ram)
    assert survivors() == []


def grow(step_mb: int, steps: int, pause: float) -> str:
    """A payload that takes ``step_mb`` MB more every ``pause`` s, ``steps`` times, then holds it all."""
    return (f"{sys.executable} -c 'import time; x = [(bytearray({step_mb} * 2**20), time.sleep({pause})) "
            f"for _ in range({steps})]; time.sleep(60)' {MARK}")


@pytest.mark.timeout(180)
def test_a_job_without_min_ram_in_a_memory_limited_cgroup_gets_1235_not_the_oom_killer(
        tmp_path: Path, memory_cgroup) -> None:
    """The pilot runs in a cgroup of 300 MB: its RAM per core is that over its CPUs, not the machine's, so a
    payload growing to 400 MB is stopped by the pilot (1235, the diagnostic naming the cgroup) before the
    kernel's OOM killer would end it (or the pilot) at the cgroup's limit."""
    cgroup = memory_cgroup(300)
    growing = 51
    ap = write_access_point(tmp_path / "ap", {growing: job_definition(growing, grow(10, 40, 0.2))})
    env = {**FAST_LIMITS, "HPCPILOT_LIMITS__LOOPING_LIMIT": "60", "HPCPILOT_LIMITS__MEMORY_GRACE": "0.5"}
    join_cgroup = ("sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"))
    run = run_pilot(ap, "grid", "--site", "generic", "--cores-per-rank", "1", env=env, prefix=join_cgroup)
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(growing)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1235), attributes
    cpus = len(os.sched_getaffinity(0))
    assert f"exceeded limit {0.5 * 300 / cpus:.1f} MB (RAM per core of cgroup memory.limit_in_bytes)" in \
        attributes["pilotErrorDiag"]
    assert f"cgroup memory.limit_in_bytes 300 MB / {cpus} CPUs (affinity)" in job_pilot_log(run, growing)
    oom_control = dict(line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines())
    assert oom_control["oom_kill"] == "0"  # the kernel's OOM killer ended nothing
    assert survivors() == []


def job_pilot_log(run, pandaid: int) -> str:
    log_entry = next(e for e in run.declared(pandaid) if e["type"] == "log")
    return tarball_members(Path(log_entry["path"]))["pilot.log"].decode()


@pytest.mark.timeout(120)
def test_memory_time_series_is_in_the_log_tarball(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {1: job_definition(1, "bash", f"-c '{busy(2)}'")})
    run = run_pilot(ap, "grid", env=FAST_LIMITS)
    log_entry = next(e for e in run.declared(1) if e["type"] == "log")
    series = tarball_members(Path(log_entry["path"]))["memory_monitor_output.txt"].decode().splitlines()
    assert series[0].split("\t")[:4] == ["Time", "VMEM", "PSS", "RSS"] and len(series) >= 3
    attributes = run.attributes(1)
    assert {"maxRSS", "maxPSS", "avgRSS", "totRCHAR", "rateWBYTES"} <= set(attributes)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.timeout(120)
def test_filling_scratch_fails_with_no_local_space(tmp_path: Path, small_tmpfs: Path) -> None:
    fill = f"-c 'for i in $(seq 40); do head -c 200000 /dev/zero >> fill; sleep 0.1; done; sleep 30 # {MARK}'"
    definitions = {21: job_definition(21, "bash", fill), 22: with_outputs(job_definition(22, "bash", "-c 'echo x > o'"), ["o"])}
    ap = write_access_point(tmp_path / "ap", definitions)
    run = run_pilot(ap, "grid", "--scratch", str(small_tmpfs), env=FAST_LIMITS)
    attributes = run.attributes(21)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1098), attributes
    assert "free space" in attributes["pilotErrorDiag"]
    assert run.attributes(22)["jobStatus"] == "finished"
    assert survivors() == []


@pytest.mark.timeout(120)
def test_a_payload_that_fails_after_outgrowing_the_stdout_limit_fails_for_its_stdout(tmp_path: Path) -> None:
    """Ended before the disk check came round, it gets 1106 as a longer one would, whatever its exit code."""
    ap = write_access_point(tmp_path / "ap", {31: job_definition(31, "bash", "-c 'head -c 3000000 /dev/zero; exit 1'")})
    run = run_pilot(ap, "grid", env={"HPCPILOT_LIMITS__MAX_STDOUT_MB": "1"})
    attributes = run.attributes(31)
    assert (attributes["pilotErrorCode"], attributes["transExitCode"]) == (1106, 1), attributes
    assert "exited with code 1" in attributes["pilotErrorDiag"] and "stdout" in attributes["pilotErrorDiag"]


@pytest.mark.timeout(120)
def test_a_suspended_worker_is_not_taken_for_looping_when_it_resumes(tmp_path: Path) -> None:
    """A batch system's suspend stops the pilot and its payloads for longer than the looping limit (here 3 s);
    the pilot comes back first. Its next looping check must not fail a payload that could not write meanwhile."""
    beats = f"-c 'for i in $(seq 40); do date > beat; sleep 0.25; done; echo done > out.txt; : {MARK}'"
    ap = write_access_point(tmp_path / "ap", {41: with_outputs(job_definition(41, "bash", beats), ["out.txt"])})
    pilot = subprocess.Popen([sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **FAST_LIMITS}, start_new_session=True)
    payload = _wait_for_payload(pilot)
    time.sleep(1)  # a few looping checks have seen it write
    for process in (pilot.pid, payload):
        os.killpg(process, signal.SIGSTOP)
    time.sleep(5)
    os.killpg(pilot.pid, signal.SIGCONT)
    time.sleep(1.5)  # the pilot runs its passes before the payload writes again
    os.killpg(payload, signal.SIGCONT)
    _, stderr = communicate_or_kill(pilot, 60, "hpcpilot")
    run = PilotRun(pilot.returncode, "", stderr, ap)
    assert run.attributes(41)["jobStatus"] == "finished", run.attributes(41)
    assert "the pilot was suspended" in stderr
    assert survivors() == []


def _wait_for_payload(pilot: subprocess.Popen) -> int:
    """The pid of the pilot's payload, once it runs (it leads a session and a process group of its own)."""
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up and pilot.poll() is None:
        for process in psutil.process_iter(["cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            if MARK in line and "beat" in line and _leads_a_session(process.pid):
                return process.pid
        time.sleep(0.05)
    pytest.fail("the payload did not start")


def _leads_a_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False
