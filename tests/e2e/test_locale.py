"""The pilot in the environment a batch node may give: odd locales, paths and bytes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_outputs, write_access_point

from .conftest import assert_declared_file_matches, run_pilot, tarball_members


def assert_finished_with_its_log(run, pandaid: int) -> dict[str, bytes]:
    """Finished, its files what Harvester's json.load reads (UTF-8 JSON), its log tarball declared; its members."""
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    attributes = run.attributes(pandaid)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("finished", 0), attributes
    for name in ("worker_attributes.json", "jobReport.json", "event_status.dump.json"):
        json.loads((run.job_dir(pandaid) / name).read_bytes().decode("utf-8"))
    log_entry, = [entry for entry in run.declared(pandaid) if entry["type"] == "log"]
    assert_declared_file_matches(log_entry)
    return tarball_members(Path(log_entry["path"]))


@pytest.mark.timeout(120)
def test_a_scratch_path_that_is_not_utf8_fails_no_job(tmp_path: Path) -> None:
    """A TMPDIR with a byte that is not UTF-8 put a lone surrogate in every job's log: encoding the log failed
    each job's stage-out, and every finished job was declared failed with 1008."""
    tmpdir = os.path.join(os.fsencode(tmp_path), b"tmp \xff")
    os.mkdir(tmpdir)
    ap = write_access_point(tmp_path / "ap", {701: with_outputs(job_definition(701, "echo", "hi > out.txt"),
                                                                ["out.txt"])})
    run = run_pilot(ap, "grid", env={"TMPDIR": os.fsdecode(tmpdir)})
    assert run.returncode == 0, run.stderr[-3000:]
    members = assert_finished_with_its_log(run, 701)
    assert b"tmp \\udcff" in members["pilot.log"]
    assert not os.listdir(tmpdir)  # the scratch removed
