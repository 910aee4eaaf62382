"""scripts/bare_loop.py, the bench's reference for the least a pilot does per job, does that work for real:
a baseline that skipped a file would make the pilot look dearer than it is."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_outputs, write_access_point
from tests.e2e.conftest import communicate_or_kill
from tests.harvester_reader import adler32_as_harvester_computes, final_status, take_declarations, work_attributes

BARE_LOOP = Path(__file__).resolve().parents[2] / "scripts" / "bare_loop.py"
TIMEOUT = 60


def run_bare_loop(access_point: Path, scratch: Path, processes: int) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(BARE_LOOP), str(access_point), str(scratch), str(processes)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    stdout, stderr = communicate_or_kill(process, TIMEOUT, "bare_loop.py")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def access_point_of(root: Path, payloads: dict[int, str]) -> Path:
    definitions = {pandaid: with_outputs(job_definition(pandaid, line), ["out.txt"]) for pandaid, line in payloads.items()}
    return write_access_point(root / "ap", definitions, {})


@pytest.mark.timeout(TIMEOUT + 10)
def test_every_job_is_run_and_declared_as_harvester_reads_it(tmp_path):
    pandaids = range(7001, 7008)
    access_point = access_point_of(tmp_path, {pandaid: f"echo {pandaid} > out.txt" for pandaid in pandaids})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = run_bare_loop(access_point, scratch, processes=2)
    assert done.returncode == 0, done.stderr
    for pandaid in pandaids:
        job_dir = access_point / str(pandaid)
        attributes = work_attributes(job_dir)
        assert final_status(attributes) == "finished"
        assert attributes["metaData"] == {"exitCode": 0}
        taken = take_declarations(job_dir)
        assert taken is not None and not taken.errors
        declared = {lfn: files[0] for lfn, files in taken.files[pandaid].items()}
        assert (job_dir / "out.txt").read_text() == f"{pandaid}\n"
        for lfn, entry in declared.items():
            assert entry["chksum"] == adler32_as_harvester_computes(str(job_dir / lfn))
        with tarfile.open(job_dir / f"log.{pandaid}.job.log.tgz") as tarball:
            assert tarball.getnames() == ["payload.stdout"]
    assert list(scratch.iterdir()) == []
    assert not list(access_point.rglob("*.tmp"))


@pytest.mark.timeout(TIMEOUT + 10)
def test_a_job_it_cannot_finish_makes_it_exit_non_zero(tmp_path):
    access_point = access_point_of(tmp_path, {7101: "echo x > out.txt", 7102: "true"})  # 7102 writes no output
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = run_bare_loop(access_point, scratch, processes=2)
    assert done.returncode == 1
    assert "FileNotFoundError" in done.stderr
