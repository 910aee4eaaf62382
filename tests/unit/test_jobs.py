"""Parsing and validation of PanDA job definitions (hpcpilot.jobs), PROTOCOL.md section 3."""
from __future__ import annotations

import dataclasses

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs
from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.jobs import (
    MAX_LFN_LENGTH,
    SCRATCH_NAMES,
    Checksum,
    FileSpec,
    JobSpec,
    parse_checksum,
    parse_job,
    parse_pandaid,
    secret_values,
    validate_lfn,
)

PANDAID = 4711
LOG = f"log.{PANDAID}.job.log.tgz"


def definition(**fields):
    """A valid definition as Harvester passes it, with ``fields`` overriding."""
    return job_definition(PANDAID, "Sim_tf.py", "--in EVNT.pool.root.1", **fields)


def three_inputs(**fields):
    raw = definition(
        inFiles="a.root,b.root,c.root",
        GUID="g-a,g-b,g-c",
        fsize="10,20,30",
        checksum="ad:0a1b2c3d,md:0123456789abcdef0123456789abcdef,deadbeef",
        scopeIn="mc15",
        realDatasetsIn="ds.a,NULL,ds.c",
        inFilePaths="/stage/a.root,/stage/b.root,/stage/c.root",
    )
    raw.update(fields)
    return raw


def rejected(raw) -> JobDefinitionError:
    with pytest.raises(JobDefinitionError) as caught:
        parse_job(raw)
    return caught.value


# -- a valid definition --------------------------------------------------------


def test_the_protocol_example_parses_into_a_job_spec():
    raw = {
        "PandaID": "4711", "taskID": "123", "jobsetID": "NULL", "attemptNr": 1,
        "transformation": "Sim_tf.py",
        "jobPars": "--inputEVNTFile EVNT.pool.root.1 --outputHITSFile HITS.pool.root.1",
        "coreCount": 16, "minRamCount": 0, "maxWalltime": "NULL",
        "inFiles": "EVNT.pool.root.1", "GUID": "0b4f", "fsize": "94834717", "checksum": "ad:5d000974",
        "scopeIn": "mc15_13TeV", "outFiles": "HITS.pool.root.1,log.4711.job.log.tgz",
        "scopeOut": "mc15_13TeV", "scopeLog": "mc15_13TeV",
        "logFile": "log.4711.job.log.tgz", "logGUID": "5c0e",
    }
    job = parse_job(raw)
    assert isinstance(job, JobSpec)
    assert job.pandaid == 4711
    assert job.task_id == "123"
    assert job.jobset_id == ""
    assert job.attempt_nr == 1
    assert job.core_count == 16
    assert job.max_walltime is None
    assert job.command == "Sim_tf.py --inputEVNTFile EVNT.pool.root.1 --outputHITSFile HITS.pool.root.1"
    assert job.inputs == (
        FileSpec("EVNT.pool.root.1", guid="0b4f", fsize=94834717,
                 checksum=Checksum("adler32", "5d000974"), scope="mc15_13TeV"),
    )
    assert [f.lfn for f in job.outputs] == ["HITS.pool.root.1"]
    assert job.outputs[0].scope == "mc15_13TeV"
    assert job.log == FileSpec("log.4711.job.log.tgz", guid="5c0e", scope="mc15_13TeV")


def test_job_spec_is_frozen():
    job = parse_job(definition())
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.pandaid = 1  # type: ignore[misc]


def test_integer_fields_accept_strings_and_numbers():
    job = parse_job(definition(coreCount="8", minRamCount=2000, maxDiskCount="500",
                               maxWalltime="3600", attemptNr="3"))
    numbers = (job.core_count, job.min_ram_mb, job.max_disk_mb, job.max_walltime, job.attempt_nr)
    assert numbers == (8, 2000, 500, 3600, 3)


@pytest.mark.parametrize("zero", [0, "0"])
def test_a_zero_core_count_or_walltime_is_unset_as_panda_means_it(zero):
    """PanDA sends 0 for a job without them (Pilot 3 takes a core and no walltime limit): not a bad job."""
    job = parse_job(definition(coreCount=zero, maxWalltime=zero))
    assert (job.core_count, job.max_walltime) == (1, None)


@pytest.mark.parametrize("null", ["NULL", "", None, "None", "  NULL  "])
def test_null_fields_take_their_defaults(null):
    job = parse_job(definition(coreCount=null, minRamCount=null, maxWalltime=null, attemptNr=null,
                               jobPars=null, taskID=null, container_name=null, transferType=null,
                               loopingCheck=null, eventService=null, inFiles=null))
    assert job.core_count == 1
    assert job.min_ram_mb == 0
    assert job.max_walltime is None
    assert job.attempt_nr == 0
    assert job.job_pars == "" and job.command == "Sim_tf.py"
    assert job.task_id == "" and job.container_name == "" and job.transfer_type == ""
    assert job.looping_check is True
    assert job.event_service is False
    assert job.inputs == ()


@pytest.mark.parametrize("word, expected", [("True", True), ("true", True), ("1", True),
                                            ("False", False), ("false", False), ("0", False), ("no", False)])
def test_flags_read_true_and_false_words(word, expected):
    job = parse_job(definition(eventService=word, loopingCheck=word))
    assert job.event_service is expected
    assert job.looping_check is expected


@pytest.mark.parametrize("field", ["eventService", "loopingCheck"])
@pytest.mark.parametrize("word", ["maybe", "2", "ja", "[]"])
def test_a_flag_neither_true_nor_false_makes_the_job_invalid(field, word):
    """Any word but a false one once counted as true: "maybe" made a job an event service job."""
    with pytest.raises(JobDefinitionError, match=f"{field}.*neither true nor false") as caught:
        parse_job(definition(**{field: word}))
    assert caught.value.code == ErrorCode.GENERAL


def test_missing_log_file_gets_the_conventional_name():
    raw = definition()
    del raw["logFile"]
    raw["outFiles"] = "out.root"
    job = parse_job(raw)
    assert job.log is not None and job.log.lfn == LOG
    assert [f.lfn for f in job.outputs] == ["out.root"]


# -- aligned per-file lists ------------------------------------------------------


def test_input_fields_are_aligned_by_position():
    job = parse_job(three_inputs())
    assert [f.lfn for f in job.inputs] == ["a.root", "b.root", "c.root"]
    assert [f.guid for f in job.inputs] == ["g-a", "g-b", "g-c"]
    assert [f.fsize for f in job.inputs] == [10, 20, 30]
    assert [f.source_path for f in job.inputs] == ["/stage/a.root", "/stage/b.root", "/stage/c.root"]


def test_a_per_file_field_given_once_applies_to_every_file():
    job = parse_job(three_inputs(fsize="77", GUID="same-guid"))
    assert [f.scope for f in job.inputs] == ["mc15"] * 3
    assert [f.fsize for f in job.inputs] == [77] * 3
    assert [f.guid for f in job.inputs] == ["same-guid"] * 3


def test_null_inside_an_aligned_list_means_empty_for_that_file():
    job = parse_job(three_inputs(checksum="ad:0a1b2c3d,NULL,NULL", fsize="10,NULL,30"))
    assert [f.dataset for f in job.inputs] == ["ds.a", "", "ds.c"]
    assert [f.checksum for f in job.inputs] == [Checksum("adler32", "0a1b2c3d"), None, None]
    assert [f.fsize for f in job.inputs] == [10, None, 30]


def test_a_null_per_file_field_leaves_every_file_without_it():
    job = parse_job(three_inputs(GUID="NULL", checksum="NULL", fsize="NULL"))
    assert all(f.guid == "" and f.checksum is None and f.fsize is None for f in job.inputs)


def test_spaces_around_list_items_are_ignored():
    job = parse_job(three_inputs(inFiles=" a.root , b.root ,c.root "))
    assert [f.lfn for f in job.inputs] == ["a.root", "b.root", "c.root"]


def test_outputs_exclude_the_log_file_and_keep_their_aligned_fields():
    """As the PanDA server writes a definition: realDatasets has the log's dataset at its place in outFiles,
    scopeOut only the outputs' scopes (the log's is scopeLog), whatever the log's place."""
    raw = definition(outFiles=f"HITS.root,{LOG},AOD.root", scopeOut="s1,s2", scopeLog="slog",
                     realDatasets="d1,dlog,d2")
    job = parse_job(raw)
    assert [(f.lfn, f.scope, f.dataset) for f in job.outputs] == [("HITS.root", "s1", "d1"), ("AOD.root", "s2", "d2")]
    assert job.log is not None and (job.log.lfn, job.log.scope) == (LOG, "slog")


def test_a_scope_out_list_with_the_logs_entry_is_taken_too():
    raw = with_outputs(definition(), ["HITS.root", "AOD.root"])
    raw.update(scopeOut="s1,s2,slog", realDatasets="d1,d2,dlog")
    job = parse_job(raw)
    assert [(f.lfn, f.scope, f.dataset) for f in job.outputs] == [("HITS.root", "s1", "d1"), ("AOD.root", "s2", "d2")]


def test_writer_helpers_produce_a_definition_the_parser_accepts():
    payload = {"x.dat": b"hello", "y.dat": b""}
    raw = with_outputs(with_inputs(definition(), payload), ["z.dat"])
    job = parse_job(raw)
    assert [(f.lfn, f.fsize) for f in job.inputs] == [("x.dat", 5), ("y.dat", 0)]
    assert job.inputs[1].checksum == Checksum("adler32", "00000001")  # adler32 of no bytes


@pytest.mark.parametrize("field, value", [
    ("GUID", "g1,g2"),
    ("fsize", "1,2,3,4"),
    ("checksum", "ad:0a1b2c3d,ad:0a1b2c3d"),
    ("scopeIn", "s1,s2"),
    ("realDatasetsIn", "d1,d2,d3,d4"),
    ("inFilePaths", "/p1,/p2"),
])
def test_unequal_input_lists_are_1312(field, value):
    error = rejected(three_inputs(**{field: value}))
    assert error.code == ErrorCode.LIST_LENGTH_MISMATCH == 1312
    assert field in error.diag


@pytest.mark.parametrize("field, value", [
    ("scopeOut", "s1,s2,s3,s4"),  # two outputs (and the log)
    ("realDatasets", "d1,d2"),  # three files with the log
])
def test_unequal_output_lists_are_1312(field, value):
    raw = with_outputs(definition(), ["a.root", "b.root"])
    raw[field] = value
    error = rejected(raw)
    assert error.code == 1312 and field in error.diag


def test_per_file_values_without_files_are_1312():
    error = rejected(definition(inFiles="NULL", GUID="g1,g2"))
    assert error.code == 1312


# -- checksums -----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("ad:0a1b2c3d", Checksum("adler32", "0a1b2c3d")),
    ("AD:0A1B2C3D", Checksum("adler32", "0a1b2c3d")),
    ("0a1b2c3d", Checksum("adler32", "0a1b2c3d")),
    ("md:0123456789abcdef0123456789ABCDEF", Checksum("md5", "0123456789abcdef0123456789abcdef")),
    # the PanDA server's own form for md5 (its dataservice writes and reads "md5:"): not a type unknown
    ("md5:0123456789abcdef0123456789abcdef", Checksum("md5", "0123456789abcdef0123456789abcdef")),
    (" ad:00000001 ", Checksum("adler32", "00000001")),
    ("NULL", None),
    ("", None),
])
def test_checksum_forms(text, expected):
    assert parse_checksum(text) == expected


@pytest.mark.parametrize("text", [
    "sha256:" + "0" * 64,
    "xx:0a1b2c3d",
    "ad:md:0a1b2c3d",
    "ad:0a1b2c3",  # 7 digits
    "ad:0a1b2c3d0",  # 9 digits
    "ad:zzzzzzzz",
    "md:0123",
    "0123456789abcdef0123456789abcdef",  # a bare value is adler32, and this one is not
])
def test_unknown_or_malformed_checksum_is_1314(text):
    with pytest.raises(JobDefinitionError) as caught:
        parse_checksum(text)
    assert caught.value.code == ErrorCode.UNKNOWN_CHECKSUM_TYPE == 1314


def test_bad_checksum_in_a_definition_is_1314():
    error = rejected(three_inputs(checksum="ad:0a1b2c3d,cksum:1,ad:0a1b2c3d"))
    assert error.code == 1314 and "checksum" in error.diag


# -- file names ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "../etc/passwd", "/abs/path", "dir/file", "nul\0byte", "a/../b"])
def test_a_file_name_that_is_not_a_bare_name_is_1371(name):
    with pytest.raises(JobDefinitionError) as caught:
        validate_lfn(name, "inFiles")
    assert caught.value.code == ErrorCode.BAD_FILE_NAME == 1371
    assert "inFiles" in caught.value.diag


@pytest.mark.parametrize("field, value", [
    ("inFiles", "a.root,../b.root"),
    ("inFiles", "a.root,,b.root"),
    ("inFiles", "a.root,b.root,"),
    ("inFiles", "/eos/a.root"),
    ("outFiles", f"out/x.root,{LOG}"),
    ("outFiles", f"x\0.root,{LOG}"),
    ("outFiles", f"x.root,x.root,{LOG}"),  # the same output twice
    ("inFiles", "a.root,a.root"),  # the same input twice: one name, one file in scratch
    ("logFile", "../log.tgz"),
    ("logFile", ".."),
])
def test_bad_file_names_in_a_definition_are_1371(field, value):
    error = rejected(definition(**{field: value}))
    assert error.code == 1371
    assert field in error.diag


def test_names_up_to_the_limit_are_accepted_and_longer_ones_are_1190():
    assert validate_lfn("x" * MAX_LFN_LENGTH, "outFiles") == "x" * MAX_LFN_LENGTH
    error = rejected(definition(outFiles=f"{'x' * (MAX_LFN_LENGTH + 1)},{LOG}"))
    assert error.code == ErrorCode.LFN_TOO_LONG == 1190


def test_a_name_longer_than_255_bytes_is_1190(tmp_path):
    name = "é" * 200  # 400 bytes in UTF-8
    with pytest.raises(OSError):
        (tmp_path / name).write_bytes(b"")  # the filesystem refuses it ...
    with pytest.raises(JobDefinitionError) as caught:
        validate_lfn(name, "outFiles")  # ... so validation must too
    assert caught.value.code == 1190


# -- other validation failures ------------------------------------------------------


@pytest.mark.parametrize("value", ["", "NULL", None, "   "])
def test_an_empty_transformation_is_rejected(value):
    error = rejected(definition(transformation=value))
    assert error.code == ErrorCode.SETUP_FAILED
    assert "transformation" in error.diag


def test_a_missing_transformation_is_rejected():
    raw = definition()
    del raw["transformation"]
    assert rejected(raw).code == ErrorCode.SETUP_FAILED


@pytest.mark.parametrize("field, value", [
    ("coreCount", "eight"),
    ("coreCount", "-4"),
    ("coreCount", "2.5"),
    ("minRamCount", "-1"),
    ("minRamCount", "lots"),
    ("maxDiskCount", "1e3"),
    ("maxWalltime", "1h"),
    ("attemptNr", "first"),
    ("coreCount", [1]),
    ("coreCount", {"n": 1}),
])
def test_bad_integers_are_1008_naming_the_field(field, value):
    error = rejected(definition(**{field: value}))
    assert error.code == ErrorCode.GENERAL == 1008
    assert field in error.diag


@pytest.mark.parametrize("fsize", ["-5", "12a", "1.0", "0x10"])
def test_a_bad_file_size_is_1008(fsize):
    error = rejected(three_inputs(fsize=fsize))
    assert error.code == 1008 and "fsize" in error.diag


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "NULL", None, "12 34"])
def test_a_bad_pandaid_is_1008(value):
    error = rejected(definition(PandaID=value))
    assert error.code == 1008 and "PandaID" in error.diag


def test_a_missing_pandaid_is_1008():
    raw = definition()
    del raw["PandaID"]
    assert rejected(raw).code == 1008


@pytest.mark.parametrize("value, expected", [("4711", 4711), (4711, 4711), (" 12 ", 12)])
def test_pandaid_as_string_or_number(value, expected):
    assert parse_pandaid(value) == expected


@pytest.mark.parametrize("raw", [None, [], "PandaID=1", 4711])
def test_a_definition_that_is_not_an_object_is_1008(raw):
    assert rejected(raw).code == 1008


def test_pandaid_zero_is_rejected():
    with pytest.raises(JobDefinitionError):
        parse_pandaid("0")


def test_a_superscript_digit_pandaid_is_a_definition_error():
    assert rejected(definition(PandaID="4²")).code == 1008


def test_a_superscript_digit_file_size_is_a_definition_error():
    assert rejected(three_inputs(fsize="1²")).code == 1008


@pytest.mark.parametrize("field", ["PandaID", "fsize"])
def test_a_number_of_5000_digits_is_a_definition_error(field):
    raw = three_inputs(**{field: "9" * 5000})
    assert rejected(raw).code == 1008


def test_the_reserved_scratch_names_are_those_the_pilot_writes():
    """Kept in step by hand: each module names its own file; jobs.SCRATCH_NAMES must hold them all."""
    from hpcpilot import jobreport, memorymonitor, payload, staging
    from hpcpilot.workflow import jobflow
    written = {payload.STDOUT_NAME, payload.STDERR_NAME, staging.POOL_FILE_CATALOG, jobflow.PILOT_LOG_NAME,
               jobreport.PAYLOAD_REPORT_NAME, memorymonitor.TIMESERIES_NAME}
    assert written <= SCRATCH_NAMES


def test_secrets_nested_too_deeply_make_only_that_job_invalid():
    definition = job_definition(4711, "true", pilotSecrets="[" * 100000)
    with pytest.raises(JobDefinitionError, match="pilotSecrets.*nested too deeply"):
        parse_job(definition)


@pytest.mark.parametrize("field, value", [("inFiles", "in\x01.root"), ("outFiles", "out\x7f.root"),
                                          ("GUID", "guid-\x0b-1")])
def test_control_characters_are_refused_where_the_pool_file_catalogue_would_carry_them(field, value):
    definition = with_inputs(job_definition(4711, "true"), {"in.root": b"x"})
    definition[field] = value
    with pytest.raises(JobDefinitionError, match=f"'{field}'.*control character"):
        parse_job(definition)


@pytest.mark.parametrize("value, expected", [
    ("a.root,b.root", {"a.root", "b.root"}),
    (" a.root ", {"a.root"}),
    ("NULL", set()),
    (None, set()),
])
def test_allow_no_output_names_the_outputs_a_job_may_end_without(value, expected):
    fields = {} if value is None else {"allowNoOutput": value}
    assert parse_job(job_definition(4712, "true", **fields)).allow_no_output == expected


@pytest.mark.parametrize("text", ["{'token': 'tok-secret-1', 'nested': ['tok-secret-2']}",
                                  '{"token": "tok-secret-1", "nested": ["tok-secret-2"]}'])
def test_each_value_of_a_secrets_dict_is_a_secret_as_json_and_as_harvester_s_cgi_repr(text):
    """With jobSpecFileFormat cgi Harvester writes a dict-valued secrets field as its Python repr, which is no
    JSON: only the whole text was a secret, and a payload printing one value of it leaked it."""
    found = secret_values({"pilotSecrets": text}, ("pilotSecrets",))
    assert {"tok-secret-1", "tok-secret-2"} <= set(found)


def test_a_secrets_text_that_is_neither_json_nor_a_literal_is_one_secret():
    assert secret_values({"pilotSecrets": "{not: closed"}, ("pilotSecrets",)) == ("{not: closed",)


@pytest.mark.parametrize("fields", [{"jobPars": "--x \ud800"}, {"processingType": "\udcff"},
                                    {"pilotSecrets": {"token": "abcd\udc80"}}, {"\ud83d": "x"}],
                         ids=["jobPars", "surrogate-escape", "nested", "key"])
def test_a_lone_surrogate_in_a_field_is_refused_naming_it(fields):
    """JSON's \\ud800 parses into text that no command line, file name or log can carry: the job failed at its
    launch or stage-out with a traceback."""
    with pytest.raises(JobDefinitionError) as refused:
        parse_job(definition(**fields))
    assert refused.value.code == ErrorCode.GENERAL
    assert "lone surrogate" in refused.value.diag and refused.value.diag.isascii()


def test_characters_beyond_the_basic_plane_are_text():
    assert parse_job(definition(jobPars="--title \U0001f600 caf\u00e9")).job_pars == "--title \U0001f600 caf\u00e9"
