"""The pilot in the environment a batch node may give: odd locales, paths and bytes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


FINISHING, FAILING = 301, 302
OUTPUT = "r\u00e9sultat.txt"
# Non-UTF-8 file names in a directory of its own; output with invalid UTF-8, a NUL and ANSI escapes; as its
# output, the bytes its argument came as.
HOSTILE_PAYLOAD = r"""
import os, sys
os.makedirs(b'd\xff\xfe', exist_ok=True)
open(b'd\xff\xfe/f\xe9\x80', 'wb').write(b'x' * 10)
open(b'name\xc3\x28', 'wb').write(b'y')
for stream in (sys.stdout, sys.stderr):
    stream.buffer.write(b'bad \xff\xfe nul \x00 \x1b[31mred\x1b[0m caf\xc3\xa9\n')
open(os.fsencode(sys.argv[3]), 'wb').write(os.fsencode(sys.argv[2]))
sys.exit(int(sys.argv[1]))
"""


def hostile_job(pandaid: int, script: Path, exit_code: int) -> dict:
    definition = job_definition(pandaid, sys.executable, f"{script} {exit_code} caf\u00e9 {OUTPUT}",
                                processingType="r\u00e9co")
    return with_outputs(definition, [OUTPUT])


def write_raw_utf8_specs(ap: Path, definitions: dict[int, dict]) -> None:
    """Spec files with UTF-8 bytes rather than \\u escapes (any JSON writer but Python's)."""
    for pandaid, definition in definitions.items():
        spec = json.dumps({str(pandaid): definition}, ensure_ascii=False).encode("utf-8")
        (ap / str(pandaid) / "HPCJobs.json").write_bytes(spec)


def latin1_locale(directory: Path) -> list[str]:
    """``LANG`` of a Latin-1 locale made for the test (``LOCPATH``); the test is skipped where none can be."""
    target = directory / "de_DE.ISO-8859-1"
    try:
        said = subprocess.run(["localedef", "-i", "de_DE", "-f", "ISO-8859-1", str(target)], capture_output=True,
                              timeout=60).stderr.decode(errors="replace")
    except OSError as error:  # no localedef
        said = str(error)
    if not target.is_dir():  # (localedef exits 1 also when it made the locale, with warnings)
        pytest.skip(f"no Latin-1 locale can be made here: {said[-300:]}")
    return [f"LOCPATH={directory}", "LANG=de_DE.ISO-8859-1"]


LOCALES = {
    "ascii": lambda directory: ["LC_ALL=C", "PYTHONUTF8=0"],  # Python takes every name for ASCII
    "latin1": latin1_locale,  # LC_ALL unset
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("locale", LOCALES)
def test_a_locale_that_is_not_utf8_runs_jobs_with_non_ascii_commands_and_names(tmp_path: Path, locale: str) -> None:
    """LC_ALL=C with PYTHONUTF8=0 made Python's file names, command lines and environment ASCII: a job whose
    command held a UTF-8 character failed at its launch (1008, a traceback), and so did one with such an output.
    Under a Latin-1 locale, the outputs and log of a non-ASCII access point were declared by paths that do not
    exist (its bytes taken for Latin-1, written to the JSON as UTF-8)."""
    script = tmp_path / "payload.py"
    script.write_text(HOSTILE_PAYLOAD)
    definitions = {FINISHING: hostile_job(FINISHING, script, 0), FAILING: hostile_job(FAILING, script, 3)}
    ap = write_access_point(tmp_path / "ap \u00e9", definitions)
    write_raw_utf8_specs(ap, definitions)
    tmpdir = tmp_path / "tmp dir \u00fc"
    tmpdir.mkdir()
    (tmp_path / "locales").mkdir()
    batch_node = [f"PATH={os.environ['PATH']}", f"PYTHONPATH={os.pathsep.join(sys.path)}", f"TMPDIR={tmpdir}",
                  "HOSTNAME=node$(x);\u00e9", *LOCALES[locale](tmp_path / "locales")]  # and no HOME

    run = run_pilot(ap, "grid", prefix=("env", "-i", *batch_node))

    assert run.returncode == 0, run.stderr[-3000:]
    members = assert_finished_with_its_log(run, FINISHING)
    assert b"bad \xff\xfe nul \x00" in members["payload.stderr"]
    output, = [Path(entry["path"]) for entry in run.declared(FINISHING) if entry["type"] == "output"]
    assert output == run.job_dir(FINISHING) / OUTPUT and output.read_bytes() == "caf\u00e9".encode()
    assert (run.attributes(FAILING)["pilotErrorCode"], run.attributes(FAILING)["transExitCode"]) == (1305, 3)
    assert not list(tmpdir.iterdir())  # every scratch removed, its names that are not UTF-8 too


ODD_HOSTNAME = b"node\x1b[31m\xff\x01x"  # an escape sequence, a byte that is not UTF-8, a control character
SET_HOSTNAME = f"import socket; socket.sethostname({ODD_HOSTNAME!r})"


@pytest.mark.timeout(120)
def test_a_host_name_of_odd_bytes_is_declared_as_panda_can_store_it(tmp_path: Path) -> None:
    """root may name a node (a container's UTS namespace) with any bytes: one not UTF-8 ended the rank in a
    traceback (70) before any job ran, and control characters went as they were into ``node``, the summary
    and every log line."""
    if os.geteuid() != 0:
        pytest.skip("naming the node needs root (unshare --uts)")
    prefix = ("unshare", "--uts", "sh", "-c", f'{sys.executable} -c "{SET_HOSTNAME}" && exec "$@"', "rank")
    run = run_pilot(write_access_point(tmp_path / "ap", {101: job_definition(101, "true")}), prefix=prefix)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_finished_with_its_log(run, 101)
    node = "node\ufffd[31m\ufffd\ufffdx"
    assert run.attributes(101)["node"] == node
    assert node in json.dumps(run.summary(), ensure_ascii=False)
    assert f"@{node}]" in run.stderr and "\x1b" not in run.stderr


@pytest.mark.timeout(120)
def test_an_access_point_reached_through_a_link_whose_name_is_not_utf8_is_declared_by_its_utf8_path(
        tmp_path: Path) -> None:
    """Every declared path went out with the link's byte as a lone surrogate (JSON's \\udcff), which Harvester's
    database cannot store: the outputs were never staged out."""
    ap = write_access_point(tmp_path / "ap", {702: with_outputs(job_definition(702, "echo", "hi > out.txt"),
                                                                ["out.txt"])})
    link = os.path.join(os.fsencode(tmp_path), b"link \xff")
    os.symlink(ap, link)
    run = run_pilot(Path(os.fsdecode(link)), "grid")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_finished_with_its_log(run, 702)
    for entry in run.declared(702):
        assert Path(entry["path"].encode("utf-8").decode()).parent == Path(os.path.realpath(ap / "702")), entry


@pytest.mark.timeout(120)
def test_an_access_point_whose_own_name_is_not_utf8_fails_its_jobs_at_validation_with_1371(tmp_path: Path) -> None:
    """No form of its paths could Harvester store: the jobs went out finished, their outputs undeclarable. They
    are declared failed at once, saying why, and nothing is declared for Harvester to stage out."""
    ap = write_access_point(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"ap \xff"))),
                            {703: with_outputs(job_definition(703, "echo", "hi > out.txt"), ["out.txt"])})
    run = run_pilot(ap, "grid")
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(703)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1371), attributes
    assert "is not UTF-8" in attributes["pilotErrorDiag"] and "ap \\xff" in attributes["pilotErrorDiag"], attributes
    assert not (run.job_dir(703) / "event_status.dump.json").exists()
