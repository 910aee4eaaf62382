"""`hpcpilot sites` and `hpcpilot batch-script` run as the operator runs them: real processes, real pipes."""
from __future__ import annotations

import os
import signal
import stat
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


def write_script(path: Path, *directives: str) -> subprocess.CompletedProcess:
    """``batch-script --output path``, under umask 022; each directive makes the script longer."""
    return hpcpilot(*BATCH_SCRIPT, "--output", str(path), *(f"--directive={text}" for text in directives),
                    stdout=subprocess.PIPE, preexec_fn=lambda: os.umask(0o022))


@pytest.mark.timeout(120)
def test_a_script_that_does_not_fit_on_the_disk_leaves_the_old_one_whole(small_tmpfs):
    """Emptied in place, the old script's block would take 4 KiB of the new one, and sbatch the half script."""
    script = small_tmpfs / "job.sh"
    assert write_script(script).returncode == 0
    script.chmod(0o750)
    old = script.read_bytes()
    with open(small_tmpfs / "filler", "wb") as filler, pytest.raises(OSError):
        filler.write(b"\0" * (2 << 20))
    result = write_script(script, *[f"--comment=line-{number}-{'x' * 60}" for number in range(200)])
    assert result.returncode == 2 and "No space left on device" in result.stderr
    assert script.read_bytes() == old and script.stat().st_mode & 0o777 == 0o750
    assert sorted(path.name for path in small_tmpfs.iterdir()) == ["filler", "job.sh"]


@pytest.mark.timeout(120)
def test_a_script_is_replaced_keeping_its_permissions_and_a_new_one_gets_the_umasks(tmp_path):
    script, link = tmp_path / "job.sh", tmp_path / "link.sh"
    assert write_script(script).returncode == 0
    assert script.stat().st_mode & 0o777 == 0o644
    script.chmod(0o750)
    link.symlink_to(script.name)
    assert write_script(link, "--account=abc").returncode == 0
    assert link.is_symlink() and "#SBATCH --account=abc\n" in script.read_text()
    assert script.stat().st_mode & 0o777 == 0o750
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job.sh", "link.sh"]


@pytest.mark.timeout(120)
def test_a_script_written_to_a_fifo_reaches_its_reader(tmp_path):
    """A FIFO (as /dev/stdout may be) is no file to replace: it is written to, and stays."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-m", "hpcpilot", *BATCH_SCRIPT, "--output", str(fifo)],
                              env=environment)
    try:
        with open(fifo) as reader:
            assert reader.read().startswith("#!/bin/bash")
    finally:
        assert writer.wait(timeout=60) == 0
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.timeout(120)
def test_a_yaml_number_for_a_text_setting_stops_the_pilot_with_65_naming_it(tmp_path):
    (tmp_path / "site.yaml").write_text("site_name: 5\n")
    result = hpcpilot("run", "--config", str(tmp_path / "site.yaml"), "--access-point", str(tmp_path / "ap"),
                      stdout=subprocess.PIPE)
    assert result.returncode == 65 and "Traceback" not in result.stderr
    assert "configuration error: config file" in result.stderr and "site_name: 5 is not a valid str" in result.stderr
