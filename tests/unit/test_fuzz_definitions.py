"""Fuzzing job definitions: whatever arrives, the parser answers with a JobSpec or a PanDA error code.

A definition comes from outside the node; a crash in the parser would end the
whole worker instead of failing one job. Random and mutated definitions and
random spec file bytes must give JobSpec, InvalidJob or JobDefinitionError,
always with a code in ErrorCode.
"""
from __future__ import annotations

import json
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point
from hpcpilot.config import HarvesterFiles
from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.harvester import AccessPoint
from hpcpilot.jobs import InvalidJob, JobSpec, parse_job, validate_lfn

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PANDAID = 5001

FIELDS = [
    "PandaID", "jobsetID", "taskID", "jobDefinitionID", "attemptNr", "prodSourceLabel", "transformation",
    "jobPars", "container_name", "coreCount", "minRamCount", "maxDiskCount", "maxWalltime", "loopingCheck",
    "transferType", "inFiles", "GUID", "fsize", "checksum", "scopeIn", "realDatasetsIn", "inFilePaths",
    "outFiles", "scopeOut", "realDatasets", "logFile", "logGUID", "scopeLog", "eventService",
]
# Values a careless or hostile definition may carry, in ASCII (see the last test for the rest of Unicode).
NASTY = [
    "", " ", "NULL", "None", "null", ",", ",,", "a,b", "a,,b", "a,b,c", "1,2,3", "1,2", ".", "..", "/", "a/b",
    "../x", "x\0y", "x" * 256, "x" * 255, "ad:0a1b2c3d", "md:0123456789abcdef0123456789abcdef", "ad:zz",
    "sha1:00", "0a1b2c3d", "-1", "0", "1", "1.5", "1e3", "0x10", "True", "False", "99999999999999999999",
    "a.root,b.root", "log.5001.job.log.tgz",
]
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=24)
scalars = st.one_of(ascii_text, st.sampled_from(NASTY), st.integers(), st.floats(), st.booleans(), st.none())
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(ascii_text, scalars, max_size=3))
keys = st.one_of(st.sampled_from(FIELDS), ascii_text)


def valid_definition() -> dict[str, Any]:
    raw = job_definition(PANDAID, "run.sh", "--fast", coreCount="4", maxWalltime="600")
    raw = with_inputs(raw, {"a.root": b"alpha", "b.root": b"beta", "c.root": b""})
    return with_outputs(raw, ["out1.root", "out2.root"])


def check_job_spec(job: JobSpec) -> None:
    """A JobSpec that came out of the parser holds only values the pilot can use as they are."""
    assert isinstance(job.pandaid, int)
    assert job.transformation and job.core_count >= 1
    assert job.max_walltime is None or job.max_walltime >= 1
    for spec in (*job.inputs, *job.outputs, job.log):
        assert spec is not None and validate_lfn(spec.lfn, "lfn") == spec.lfn
        assert spec.fsize is None or (isinstance(spec.fsize, int) and spec.fsize >= 0)
        assert spec.checksum is None or spec.checksum.kind in ("adler32", "md5")
    output_names = [spec.lfn for spec in job.outputs]
    assert len(set(output_names)) == len(output_names) and job.log.lfn not in output_names


def check_outcome(raw: Any) -> JobSpec | JobDefinitionError:
    """parse_job either returns a sound JobSpec or raises JobDefinitionError with a known code."""
    try:
        job = parse_job(raw)
    except JobDefinitionError as error:
        assert isinstance(error.code, ErrorCode) and error.code != ErrorCode.OK
        assert error.diag
        return error
    check_job_spec(job)
    return job


def check_read(jobs: Any, expected_pandaid: int | None) -> None:
    assert isinstance(jobs, list)
    for job in jobs:
        assert isinstance(job, (JobSpec, InvalidJob))
        if isinstance(job, InvalidJob):
            assert isinstance(job.code, ErrorCode) and job.code != ErrorCode.OK and job.diag
        else:
            check_job_spec(job)
        if expected_pandaid is not None:
            assert job.pandaid == expected_pandaid


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- definitions as mappings ---------------------------------------------------------------


@FUZZ
@given(raw=st.dictionaries(keys, values, max_size=15))
def test_random_definitions_give_a_job_or_a_coded_error(raw):
    check_outcome(raw)


@FUZZ
@given(fields=st.fixed_dictionaries({field: values for field in ("PandaID", "transformation")}),
       extra=st.dictionaries(st.sampled_from(FIELDS), values, max_size=10))
def test_random_definitions_with_identity_give_a_job_or_a_coded_error(fields, extra):
    check_outcome({**extra, **fields})


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.just(None), values), min_size=1, max_size=5))
def test_mutated_valid_definitions_give_a_job_or_a_coded_error(changes):
    raw = valid_definition()
    for field, value in changes.items():
        if value is None:
            raw.pop(field, None)  # a deleted field
        else:
            raw[field] = value
    check_outcome(raw)


@FUZZ
@given(field=st.sampled_from(["inFiles", "GUID", "fsize", "checksum", "scopeIn", "outFiles", "scopeOut"]),
       items=st.lists(st.one_of(ascii_text, st.sampled_from(NASTY)), min_size=0, max_size=6))
def test_mutated_per_file_lists_give_a_job_or_a_coded_error(field, items):
    raw = valid_definition()
    raw[field] = joined = ",".join(items)
    outcome = check_outcome(raw)
    if isinstance(outcome, JobSpec) and field == "inFiles":
        null = joined.strip() in ("", "NULL", "None")
        assert len(outcome.inputs) == (0 if null else joined.count(",") + 1)


def test_the_unmutated_definition_is_valid():
    job = check_outcome(valid_definition())
    assert isinstance(job, JobSpec) and len(job.inputs) == 3 and len(job.outputs) == 2


# -- spec files on disk -------------------------------------------------------------------------


def read_spec(scratch: Path, content: bytes, spec_format: str, many_to_one: bool) -> None:
    files = HarvesterFiles(job_spec_format=spec_format)
    root = Path(tempfile.mkdtemp(dir=scratch))
    write_access_point(root, {PANDAID: job_definition(PANDAID, "run.sh")}, files=files, many_to_one=many_to_one)
    spec = root / (str(PANDAID) if many_to_one else "") / files.job_spec
    spec.write_bytes(content)
    check_read(AccessPoint(root, files).read_jobs(), PANDAID if many_to_one else None)


@FUZZ
@given(content=st.binary(max_size=512), spec_format=st.sampled_from(["json", "cgi"]), many_to_one=st.booleans())
@example(content=b"\xff\xfe\x00", spec_format="json", many_to_one=True)
@example(content=b"PandaID=5001&transformation=%ZZ&fsize=%FF", spec_format="cgi", many_to_one=True)
def test_random_bytes_as_spec_file_give_jobs_or_invalid_jobs(scratch, content, spec_format, many_to_one):
    read_spec(scratch, content, spec_format, many_to_one)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=8),
       spec_format=st.sampled_from(["json", "cgi"]))
def test_mutated_spec_files_give_jobs_or_invalid_jobs(scratch, changes, spec_format):
    raw = {**valid_definition(), **changes}
    if spec_format == "cgi":
        content = urllib.parse.urlencode({k: str(v) for k, v in raw.items()}).encode()
    else:
        content = json.dumps({str(PANDAID): raw}).encode()
    read_spec(scratch, content, spec_format, many_to_one=True)


@FUZZ
@given(content=st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=300))
def test_random_text_as_json_spec_file_gives_jobs_or_invalid_jobs(scratch, content):
    read_spec(scratch, content.encode(), "json", many_to_one=True)


# -- the rest of Unicode ------------------------------------------------------------------------


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=12), max_size=6))
@example(changes={"fsize": "1²"})
def test_unicode_values_give_a_job_or_a_coded_error(changes):
    check_outcome({**valid_definition(), **changes})
