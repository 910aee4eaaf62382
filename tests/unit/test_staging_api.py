"""hpcpilot.staging as other programs call it: misuse is a clear error, never a quiet other behaviour."""
from __future__ import annotations

from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, write_access_point
from hpcpilot.jobs import parse_job
from hpcpilot.staging import stage_in


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
