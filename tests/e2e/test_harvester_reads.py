"""The files a real run leaves, taken as Harvester's shared-file messenger takes them (tests/harvester_reader)."""
from __future__ import annotations

import json
import re

import pytest

from hpcpilot.demo import make_demo
from tests.harvester_reader import acknowledge, adler32_as_harvester_computes, final_status, take_declarations, \
    work_attributes

from .conftest import run_pilot

FAILING = {5000014: 1171, 5000015: 1305}  # the demo's two jobs that fail on purpose


@pytest.mark.timeout(240)
def test_harvester_takes_every_declaration_of_the_demo_worker(tmp_path):
    ap = make_demo(tmp_path / "ap")
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    for pandaid in json.loads((ap / "worker_pandaids.json").read_text()):
        job_dir = ap / str(pandaid)  # get_access_point of a MultiJobs worker
        definition = json.loads((job_dir / "HPCJobs.json").read_text())[str(pandaid)]
        attributes = work_attributes(job_dir)
        assert final_status(attributes) == ("failed" if pandaid in FAILING else "finished")
        assert attributes.get("pilotErrorCode", 0) == FAILING.get(pandaid, 0)
        assert isinstance(attributes["metaData"], dict)
        taken = take_declarations(job_dir)
        assert taken is not None and taken.errors == [] and taken.events == {}
        assert list(taken.files) == [pandaid]
        expected = {definition["logFile"]} if pandaid in FAILING else set(definition["outFiles"].split(","))
        assert set(taken.files[pandaid]) == expected
        for lfn, (declared,) in taken.files[pandaid].items():
            assert declared["path"] == str(job_dir / lfn)  # absolute, where the job's files are
            assert isinstance(declared["fsize"], int) and declared["fsize"] == (job_dir / lfn).stat().st_size
            assert re.fullmatch("[0-9a-f]{8}", declared["chksum"])  # no "ad:": Harvester passes it on as is
            assert declared["chksum"] == adler32_as_harvester_computes(declared["path"])
            assert declared["isZip"] == 0
        log_entry = taken.files[pandaid][definition["logFile"]][0]
        assert (log_entry["type"], log_entry["guid"]) == ("log", definition["logGUID"])
        acknowledge(job_dir)
        assert take_declarations(job_dir) is None  # everything came in one dump: nothing left behind
