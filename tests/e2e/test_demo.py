"""The README's demo command: ``hpcpilot demo`` writes a Harvester-style access point and runs it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import LAUNCHES, communicate_or_kill, read_terminal_until, start_on_a_terminal


def run_demo(cwd: Path, *options: str, launch: str = "mpi2") -> subprocess.CompletedProcess:
    command = [*LAUNCHES[launch], sys.executable, "-m", "hpcpilot", "demo", "--progress-interval", "1", *options]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    stdout, stderr = communicate_or_kill(process, 180, "hpcpilot demo")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.timeout(200)
def test_the_demo_in_a_relative_directory_runs_its_jobs(tmp_path: Path) -> None:
    """Two of the 16 jobs fail on purpose; the input links resolve although --dir is relative."""
    run = run_demo(tmp_path, "--dir", "demo")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"14 finished, 2 failed; access point: {tmp_path / 'demo'}" in run.stdout
    assert (run.stdout + run.stderr).count("PandaID status") == 1  # the table of jobs, in the log alone


@pytest.mark.timeout(60)
def test_a_demo_directory_that_cannot_be_written_is_a_message_and_66(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    run = run_demo(tmp_path, "--dir", "file/demo")
    assert run.returncode == 66 and "cannot write the demo access point" in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("used", ["demo", "demo-replicas"])
def test_a_demo_directory_with_files_in_it_is_refused_and_left_as_it_was(tmp_path: Path, used: str) -> None:
    """It may be a real worker's access point (or its replicas): the demo would overwrite its jobs."""
    (tmp_path / used).mkdir()
    (tmp_path / used / "worker_pandaids.json").write_text("[4711]")
    run = run_demo(tmp_path, "--dir", "demo", launch="grid")
    assert run.returncode == 66, run.stderr[-3000:]
    assert "not empty" in run.stderr and "choose another with --dir" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == [used, "worker_pandaids.json"]
    assert (tmp_path / used / "worker_pandaids.json").read_text() == "[4711]"


@pytest.mark.timeout(60)
def test_an_empty_demo_directory_option_is_refused_not_taken_for_the_current_directory(tmp_path: Path) -> None:
    run = run_demo(tmp_path, "--dir", "", launch="grid")
    assert run.returncode == 2 and "--dir: empty; give a directory" in run.stderr, run.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_demo_of_no_jobs_is_refused_by_the_command_line(tmp_path: Path) -> None:
    run = run_demo(tmp_path, "--jobs", "0", launch="grid")
    assert run.returncode == 2 and "--jobs: 0: must be at least 1" in run.stderr


@pytest.mark.timeout(200)
def test_the_demo_is_written_with_the_job_spec_name_and_format_the_pilot_reads(tmp_path: Path) -> None:
    """A site set up for the messenger's pandaJobData.out in cgi must get a demo its pilot can read."""
    (tmp_path / "site.yaml").write_text("files:\n  job_spec: pandaJobData.out\n  job_spec_format: cgi\n")
    run = run_demo(tmp_path, "--dir", "demo", "--jobs", "2", "--config", "site.yaml", launch="grid")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 finished, 0 failed" in run.stdout, run.stdout[-3000:]
    assert (tmp_path / "demo" / "5000001" / "pandaJobData.out").is_file()


@pytest.mark.timeout(200)
def test_more_cores_per_rank_than_the_rank_may_use_runs_with_a_warning(tmp_path: Path) -> None:
    run = run_demo(tmp_path, "--dir", "demo", "--jobs", "2", "--cores-per-rank", "4096", launch="grid")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cores_per_rank 4096 is more than the" in run.stderr and "its payloads will share them" in run.stderr


@pytest.mark.timeout(200)
def test_a_cores_per_rank_far_beyond_any_node_costs_no_thread_per_core(tmp_path: Path) -> None:
    """A typo's extra zeros: the rank had started a thread per core it could run a payload on, and a billion
    of them ended the run with 'can't start new thread' (exit 70) after seconds of making threads."""
    run = run_demo(tmp_path, "--dir", "demo", "--jobs", "2", "--cores-per-rank", str(10 ** 9), launch="grid")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 finished, 0 failed" in run.stdout, run.stdout[-3000:]


@pytest.mark.timeout(200)
def test_a_demo_whose_reader_left_runs_its_jobs_and_ends_as_a_unix_tool_would(tmp_path: Path) -> None:
    """``hpcpilot demo | head -0``: its outcome cannot be printed. The jobs run and are declared all the same,
    and the demo ends as the other commands do, 128+SIGPIPE without a traceback (it ended in 'uncaught error'
    and 70)."""
    returncode, stderr = run_demo_without_reader(tmp_path)
    assert returncode == 128 + signal.SIGPIPE, stderr[-3000:]
    assert "Traceback" not in stderr
    assert json.loads((tmp_path / "demo" / "hpcpilot_summary.json").read_text())["finished"] == 1


@pytest.mark.timeout(200)
def test_a_demo_whose_reader_left_keeps_the_exit_code_of_a_run_that_stopped_early(tmp_path: Path) -> None:
    """A lifetime too short for any job: the run's 81 says what went wrong with the jobs, and stands (it was
    replaced by 141, which says only that the outcome went unread)."""
    returncode, stderr = run_demo_without_reader(tmp_path, "--lifetime", "5")
    assert returncode == 81, stderr[-3000:]
    assert "Traceback" not in stderr
    assert json.loads((tmp_path / "demo" / "hpcpilot_summary.json").read_text())["failed"] == 1


@pytest.mark.timeout(200)
def test_a_demo_whose_terminal_hung_up_is_stopped_and_says_so_by_its_exit_code(tmp_path: Path) -> None:
    """``hpcpilot demo`` in an ssh session that goes away: the hangup stops the run (129) and its outcome, printed
    on the hung-up terminal, fails with EIO, which ended the demo in 'uncaught error' and 70."""
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        demo, master = start_on_a_terminal(["env", "--default-signal=HUP", sys.executable, "-m", "hpcpilot", "demo",
                                            "--dir", "demo"], cwd=tmp_path, stderr=stderr)
    try:
        read_terminal_until(master, lambda: any((tmp_path / "demo").glob("*/worker_attributes.json")), demo)
    finally:
        os.close(master)  # the terminal hangs up
    communicate_or_kill(demo, 180, "hpcpilot demo")
    assert demo.returncode == 128 + signal.SIGHUP, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    summary = json.loads((tmp_path / "demo" / "hpcpilot_summary.json").read_text())
    assert summary["finished"] + summary["failed"] == 16


AN_OUTCOME_THE_DISK_FAILS_TO_READ = """
from hpcpilot import cli
with cli._quiet_when_reader_leaves():
    print("outcome:", flush=True)
    open("/proc/self/mem", "rb").read(1)  # EIO as a failing disk gives: address 0 is never mapped
"""


@pytest.mark.timeout(120)
def test_a_read_error_as_the_outcome_is_printed_on_a_live_terminal_is_no_hangup(tmp_path: Path) -> None:
    """Any EIO was taken for a hung-up terminal when standard output was one: a summary a failing disk could
    not read ended the demo quietly with 129 ("its terminal hung up"), the error unsaid. It is raised."""
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        process, master = start_on_a_terminal([sys.executable, "-c", AN_OUTCOME_THE_DISK_FAILS_TO_READ],
                                              stderr=stderr)
    try:
        read_terminal_until(master, lambda: False, process)  # until it ends
        communicate_or_kill(process, 60, "the printing process")
    finally:
        os.close(master)
    assert process.returncode == 1 and "Input/output error" in log.read_text(), log.read_text()[-3000:]


def run_demo_without_reader(cwd: Path, *options: str) -> tuple[int, str]:
    """``hpcpilot demo ... | head -0`` of one job in grid mode: its exit code and its log."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader gone before the demo prints anything
    command = [sys.executable, "-m", "hpcpilot", "demo", "--jobs", "1", "--dir", "demo", *options]
    process = subprocess.Popen(command, cwd=cwd, stdout=write_end, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    os.close(write_end)
    _, stderr = communicate_or_kill(process, 180, "hpcpilot demo")
    return process.returncode, stderr
