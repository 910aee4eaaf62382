"""The payload's own jobReport.json, read in its scratch: what it may cost the rank to read it."""
from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

from hpcpilot.accesspoint_writer import job_definition
from hpcpilot.errors import ErrorCode, PilotError, storable_diag
from hpcpilot.jobreport import minimal_report, output_guids, payload_report
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.redaction import REDACTED

MB = 1 << 20


def _run_with_report(scratch: Path, content: bytes) -> JobRun:
    (scratch / "jobReport.json").write_bytes(content)
    return JobRun(parse_job(job_definition(4711, "true")), 0, "node", 1, scratch=scratch)


def _peak_memory_of(function, *args):
    """``function(*args)`` and the most memory Python held for it at once."""
    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_report_of_millions_of_tiny_values_does_not_cost_the_rank_hundreds_of_mb(tmp_path: Path) -> None:
    """12 MB of '{},' parse into 4 million objects, 300 MB of the rank's memory (and 64 MB, under the byte
    limit, into 1.7 GB): such a report is not parsed, and the pilot's minimal one stands in."""
    run = _run_with_report(tmp_path, b'{"a":[' + b",".join([b"{}"] * 4_000_000) + b"]}")
    report, peak = _peak_memory_of(payload_report, run)
    assert peak < 60 * MB, f"{peak / MB:.0f} MB"
    assert report is None


def test_a_large_report_of_ordinary_text_is_still_read(tmp_path: Path) -> None:
    """The bound is on values, not bytes: 30 MB of log excerpt, commas and all, is a report like any other."""
    excerpt = "an ordinary line of a log file, with a comma or two, as ATLAS logs have them\n" * 400_000
    content = {"exeErrorCode": 65, "exeErrorDiag": "bad input", "executor": [{"logfileReport": {"x": excerpt}}]}
    report = payload_report(_run_with_report(tmp_path, json.dumps(content).encode()))
    assert report == {**content, "executor": [{"logfileReport": {}}]}  # the excerpt blanked, as any too long


def test_a_report_with_bytes_that_are_not_utf8_is_still_read(tmp_path: Path) -> None:
    """One Latin-1 byte (a payload in another locale, a log excerpt) made the whole report unreadable: its
    output GUIDs were lost (the outputs declared with new ones, not those inside the files) with its error."""
    guid = "6b2b1a5e-2f7e-4c1e-9d3a-0f1e2d3c4b5a"
    content = (b'{"exeErrorCode": 65, "exeErrorDiag": "r\xe9sultat manquant", "files": {"output": [{"subFiles": '
               b'[{"name": "out.root", "file_guid": "' + guid.encode() + b'"}]}]}}')
    report = payload_report(_run_with_report(tmp_path, content))
    assert output_guids(report) == {"out.root": guid}
    assert report["exeErrorDiag"] == "r\ufffdsultat manquant"


def test_every_string_of_a_report_goes_out_as_panda_can_store_it(tmp_path: Path) -> None:
    """A NUL in any string of the report (PostgreSQL refuses it in any text) failed the job's whole update to
    PanDA; a lone surrogate has no UTF-8 form; an ANSI escape reaches whoever shows the report. Each is replaced
    by U+FFFD in keys and values at any depth; tabs, newlines and all else stay."""
    content = (b'{"exitMsg": "bad\\u0000input", "executor": [{"name": "Sim\\u001b[31m", "k\\u0000ey": '
               b'{"deep": ["half \\ud800 pair", "tab\\tand\\nnewline", 7]}}]}')
    report = payload_report(_run_with_report(tmp_path, content))
    assert report == {"exitMsg": "bad\ufffdinput", "executor": [
        {"name": "Sim\ufffd[31m", "k\ufffdey": {"deep": ["half \ufffd pair", "tab\tand\nnewline", 7]}}]}
    json.dumps(report, ensure_ascii=False).encode()  # UTF-8 as a database takes it: no lone surrogate left


def test_the_pilots_own_report_carries_a_diagnostic_as_panda_can_store_it(tmp_path: Path) -> None:
    """A job whose payload wrote no report gets the pilot's, its error's diagnostic as exitMsg: that text (a
    container runtime's error output, say) is cleaned as pilotErrorDiag is."""
    run = JobRun(parse_job(job_definition(4711, "true")), 0, "node", 1, scratch=tmp_path)
    run.fail(PilotError(ErrorCode.SETUP_FAILED, "runtime said \x1b[1mno\x00"))
    assert minimal_report(run)["exitMsg"] == "runtime said \ufffd[1mno\ufffd"


def _calls_of(function, work, *args):
    """``work(*args)``, and how many times it called the Python ``function`` (a profile hook counts them)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call" and frame.f_code is function.__code__

    sys.setprofile(count)
    try:
        return work(*args), calls
    finally:
        sys.setprofile(None)


def test_the_numbers_of_a_report_are_looked_at_only_for_a_job_with_secrets(tmp_path: Path) -> None:
    """Cleaning a string (storable_diag) never changes a number's text: only a secret's digits can. Each number
    was turned into text and cleaned all the same, twice over, for every job: a report of 2 million floats
    (MAX_REPORT_VALUES) took 6 s of the rank's time, 0.8 s without. A job with secrets still has them looked for
    in its numbers."""
    content = json.dumps({"name": "x", "values": [0.25, 123456789, -7e300] * 1000}).encode()
    report, calls = _calls_of(storable_diag, payload_report, _run_with_report(tmp_path, content))
    assert report == json.loads(content)
    assert calls == 3  # its two keys and its one string
    definition = {**job_definition(4712, "true"), "pilotSecrets": "3456789"}
    with_secret = JobRun(parse_job(definition), 0, "node", 1, scratch=tmp_path)
    assert payload_report(with_secret)["values"][:3] == [0.25, REDACTED, -7e300]


def test_a_report_nested_as_deep_as_json_reads_goes_out_whole(tmp_path: Path) -> None:
    """A report the parser reads at any depth is rewritten as deep (each level cleaned in one call, not two: a
    comprehension is a call of its own): one nested 600 deep (300 objects, 300 lists) went out whole before every report was rewritten,
    and then was dropped for the pilot's minimal one (RecursionError), its payload's metadata lost."""
    depth = 300  # pairs of levels: an object and a list
    content = b'{"a": [' * depth + b'"x\\u0000"' + b']}' * depth
    report = payload_report(_run_with_report(tmp_path, content))
    assert report is not None
    for _ in range(depth):
        report = report["a"][0]
    assert report == "x\ufffd"
