"""hpcpilot.staging as other programs call it: misuse is a clear error, never a quiet other behaviour."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import adler32_hex, job_definition, with_inputs, with_outputs, write_access_point
from hpcpilot.config import Limits
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.jobs import JobSpec, parse_job
from hpcpilot.staging import MAX_OUTPUT_BYTES, stage_in, stage_out_outputs, stagein_mode


@pytest.mark.parametrize("mode", ["COPY", "bogus", ""])
def test_an_unknown_stagein_mode_is_refused_before_anything_is_staged(tmp_path: Path, mode: str) -> None:
    definition = with_inputs(job_definition(5001, "true"), {"in.dat": b"data"})
    ap = write_access_point(tmp_path / "ap", {5001: definition}, {5001: {"in.dat": b"data"}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ValueError, match="choose one of copy, link, direct"):
        stage_in(parse_job(definition), ap / "5001", scratch, mode)
    assert list(scratch.iterdir()) == []


def test_a_known_mode_stages_the_input(tmp_path: Path) -> None:
    definition = with_inputs(job_definition(5002, "true"), {"in.dat": b"data"})
    ap = write_access_point(tmp_path / "ap", {5002: definition}, {5002: {"in.dat": b"data"}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert stage_in(parse_job(definition), ap / "5002", scratch, "copy").size == 4
    assert (scratch / "in.dat").read_bytes() == b"data"


@pytest.mark.parametrize("fields, configured", [({"transferType": "direct"}, "copy"), ({}, "link"), ({}, "direct")])
def test_a_job_in_a_container_gets_copies_it_can_see(tmp_path: Path, fields: dict, configured: str) -> None:
    """A container sees its scratch only: a link would lead to the access point, outside it."""
    definition = with_inputs(job_definition(5003, "true", container_name="docker://busybox", **fields),
                             {"in.dat": b"data"})
    ap = write_access_point(tmp_path / "ap", {5003: definition}, {5003: {"in.dat": b"data"}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    job = parse_job(definition)
    stage_in(job, ap / "5003", scratch, stagein_mode(job, configured))
    assert not (scratch / "in.dat").is_symlink() and (scratch / "in.dat").read_bytes() == b"data"


def test_an_output_over_500_gb_fails_the_job_with_1124_before_it_is_copied(tmp_path: Path) -> None:
    """PROTOCOL.md, section 5: any output over 500 GB -> 1124. A sparse file has the size at no cost."""
    job = parse_job(with_outputs(job_definition(501, "true"), ["huge.root"]))
    scratch, job_dir = tmp_path / "scratch", tmp_path / "job"
    scratch.mkdir(), job_dir.mkdir()
    with open(scratch / "huge.root", "wb") as handle:
        handle.truncate(MAX_OUTPUT_BYTES + 1)
    with pytest.raises(PilotError) as failure:
        stage_out_outputs(job, scratch, job_dir)
    assert failure.value.code == ErrorCode.OUTPUT_TOO_LARGE and "huge.root" in failure.value.diag
    assert not (job_dir / "huge.root").exists()


TINY_LIMITS = Limits(transfer_timeout_base=1, transfer_timeout_per_mb=0.001)  # 1 GiB: about 2 s


@pytest.mark.timeout(60)
def test_an_output_copy_past_its_time_limit_fails_the_job_with_1152(tmp_path: Path, slow_file) -> None:
    """An output on a slow filesystem (FUSE: minutes for the whole file) is cancelled at its limit, and
    nothing is left under its name in the job directory."""
    source = slow_file(1 << 30)  # scratch is the slow filesystem, the output its one file
    job = parse_job(with_outputs(job_definition(502, "true"), [source.name]))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    started = time.monotonic()
    with pytest.raises(PilotError) as failure:
        stage_out_outputs(job, source.parent, job_dir, time_limit=TINY_LIMITS.transfer_timeout)
    assert time.monotonic() - started < 15
    assert failure.value.code == ErrorCode.STAGEOUT_TIMEOUT, failure.value.diag
    assert source.name in failure.value.diag and "limit of 2 s" in failure.value.diag
    assert list(job_dir.iterdir()) == []


@pytest.mark.timeout(60)
def test_an_output_copy_within_its_time_limit_is_staged_out(tmp_path: Path, slow_file) -> None:
    source = slow_file(6 << 20, delay=0.01)  # over one chunk: the copier thread and the checksummer both run
    job = parse_job(with_outputs(job_definition(503, "true"), [source.name]))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    [declared] = stage_out_outputs(job, source.parent, job_dir, time_limit=TINY_LIMITS.transfer_timeout)
    assert declared["fsize"] == 6 << 20 and (job_dir / source.name).read_bytes() == source.read_bytes()


def allow_no_output_job(tmp_path: Path, outputs: list[str], allowed: str) -> tuple[JobSpec, Path, Path]:
    """A job with ``outputs`` of which allowNoOutput lists ``allowed``, with its scratch and job directory."""
    job = parse_job({**with_outputs(job_definition(502, "true"), outputs), "allowNoOutput": allowed})
    scratch, job_dir = tmp_path / "scratch", tmp_path / "job"
    scratch.mkdir(), job_dir.mkdir()
    return job, scratch, job_dir


def test_an_output_panda_allows_to_be_missing_is_left_out_not_failed(tmp_path: Path) -> None:
    """PanDA's allowNoOutput lists the outputs a job may end without (Pilot 3 drops them from stage-out)."""
    job, scratch, job_dir = allow_no_output_job(tmp_path, ["made.root", "maybe.root"], "maybe.root")
    (scratch / "made.root").write_bytes(b"events")
    declared = stage_out_outputs(job, scratch, job_dir)
    assert [Path(entry["path"]).name for entry in declared] == ["made.root"]
    assert not (job_dir / "maybe.root").exists()


def test_an_allowed_missing_output_left_as_a_symlink_loop_fails_the_job_not_the_pilot(tmp_path: Path) -> None:
    """allowNoOutput's check of the name met ELOOP, which escaped stage-out as the pilot's own error."""
    job, scratch, job_dir = allow_no_output_job(tmp_path, ["loop.root"], "loop.root")
    (scratch / "loop.root").symlink_to("loop.root")
    with pytest.raises(PilotError) as failure:
        stage_out_outputs(job, scratch, job_dir)
    assert failure.value.code == ErrorCode.FILE_HANDLING and "loop.root" in failure.value.diag


def test_an_output_not_allowed_to_be_missing_still_fails_with_1165(tmp_path: Path) -> None:
    job, scratch, job_dir = allow_no_output_job(tmp_path, ["made.root", "maybe.root"], "other.root")
    (scratch / "made.root").write_bytes(b"events")
    with pytest.raises(PilotError) as failure:
        stage_out_outputs(job, scratch, job_dir)
    assert failure.value.code == ErrorCode.MISSING_OUTPUT and "maybe.root" in failure.value.diag


# A process the payload left running: writes its output, empties it, and again, until it is killed.
WRITE_AND_EMPTY = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
while True:
    os.pwrite(fd, b"event" * 20000, 0)
    os.ftruncate(fd, 0)
"""


@pytest.mark.timeout(120)
def test_an_output_emptied_between_its_size_check_and_its_copy_fails_the_job_with_1350(tmp_path: Path) -> None:
    """What is declared is what was copied: an output a leftover process empties after the pilot read its size
    is failed as any empty output (1350), nothing left under its name, never declared with size 0. Staged out
    again and again until that race has been seen once; every output declared meanwhile is the file published."""
    job = parse_job(with_outputs(job_definition(504, "true"), ["out.root"]))
    scratch, job_dir = tmp_path / "scratch", tmp_path / "job"
    scratch.mkdir(), job_dir.mkdir()
    (scratch / "out.root").write_bytes(b"event")  # there before the first stage-out
    leftover = subprocess.Popen([sys.executable, "-c", WRITE_AND_EMPTY, str(scratch / "out.root")])
    try:
        emptied_after_the_check = False
        while not emptied_after_the_check:
            try:
                [declared] = stage_out_outputs(job, scratch, job_dir)
            except PilotError as failure:
                assert failure.code == ErrorCode.EMPTY_OUTPUT, failure.diag
                assert not (job_dir / "out.root").exists()
                emptied_after_the_check = "emptied" in failure.diag
                continue
            published = (job_dir / "out.root").read_bytes()
            assert declared["fsize"] == len(published) > 0
            assert declared["chksum"] == adler32_hex(published)
            (job_dir / "out.root").unlink()  # the next round's failure must leave nothing there
    finally:
        leftover.kill()
        leftover.wait()
