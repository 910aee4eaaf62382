"""hpcpilot.staging as other programs call it: misuse is a clear error, never a quiet other behaviour."""
from __future__ import annotations

from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, write_access_point
from hpcpilot.jobs import parse_job
from hpcpilot.staging import stage_in, stagein_mode


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
    assert stage_in(parse_job(definition), ap / "5002", scratch, "copy") == 4
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
