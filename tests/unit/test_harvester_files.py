"""The Harvester shared-file protocol (hpcpilot.harvester) on access points laid out like Harvester does.

Reading: ManyToOne / OneToOne layouts, JSON and cgi spec formats, every way a
job or a worker can be broken. Writing: the declaration files and the
never-overwrite hand-off of ``event_status.dump.json`` (PROTOCOL.md section 2).
"""
from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable

import pytest

from hpcpilot.staging import pool_file_catalog
from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point
from hpcpilot.atomicfile import TEMP_PREFIX
from hpcpilot.config import HarvesterFiles
from hpcpilot.errors import ErrorCode, ExitCode, PilotError, WorkerError
from hpcpilot import harvester
from hpcpilot.eventstatus import EventStatusPublisher
from hpcpilot.harvester import AccessPoint
from hpcpilot.jobreport import output_guids, payload_error
from hpcpilot.jobs import InvalidJob, JobSpec, parse_job
from hpcpilot.jobstate import JobRun, invalid_job_attributes, worker_attributes

FILES = HarvesterFiles()
CGI_FILES = HarvesterFiles(job_spec="pandaJobData.out", job_spec_format="cgi")
TRICKY_ARGS = "--preExec 'a=1&b=2' --x \"%20 + ; #\" --url=https://h/p?q=1&r=ü"


def definitions(*pandaids: int) -> dict[int, dict]:
    return {p: job_definition(p, "run.sh", f"--job {p}") for p in pandaids}


def read(root: Path, files: HarvesterFiles = FILES) -> list[JobSpec | InvalidJob]:
    return AccessPoint(root, files).read_jobs()


def spec_path(root: Path, pandaid: int, files: HarvesterFiles = FILES) -> Path:
    return root / str(pandaid) / files.job_spec


def leftover_temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- running a check as an unprivileged user -------------------------------------
# Root reads everything, so permission tests drop to 'nobody' in a forked child.


def unprivileged_outcome(check: Callable[[], object], timeout: float = 30.0) -> str:
    """Run ``check`` in a forked child (as 'nobody' when we are root); its repr or 'raised Type: message'."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 0
        try:
            os.close(reader)
            _drop_privileges()
            try:
                outcome = repr(check())
            except BaseException as error:  # report whatever escapes, that is the point
                outcome = f"raised {type(error).__name__}: {error}"
            os.write(writer, outcome.encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    try:
        ready, _, _ = select.select([reader], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the unprivileged check did not finish in {timeout} s")
        chunks = []
        while chunk := os.read(reader, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(reader)
        os.waitpid(pid, 0)


def _drop_privileges() -> None:
    if os.geteuid() != 0:
        return
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


@pytest.fixture
def world_tmp():
    """A directory 'nobody' can traverse (pytest's tmp_path lives under a 0700 directory)."""
    directory = Path(tempfile.mkdtemp(prefix="hpcpilot-test-"))
    directory.chmod(0o755)
    yield directory
    directory.chmod(0o755)
    for parent, subdirectories, _ in os.walk(directory):  # top-down: unlock before descending
        for name in subdirectories:
            os.chmod(os.path.join(parent, name), 0o755)
    shutil.rmtree(directory)


# -- reading: layouts and formats ---------------------------------------------------


def test_many_to_one_reads_every_job_in_the_listed_order(tmp_path):
    defs = definitions(1003, 1001, 1002)
    root = write_access_point(tmp_path / "ap", defs)
    access_point = AccessPoint(root, FILES)
    assert access_point.many_to_one
    assert access_point.job_dir(1001) == root / "1001"
    jobs = access_point.read_jobs()
    assert [job.pandaid for job in jobs] == [1003, 1001, 1002]
    assert jobs == [parse_job(defs[p]) for p in (1003, 1001, 1002)]


@pytest.mark.timeout(60)
def test_each_job_definition_takes_one_read_on_a_local_filesystem(tmp_path):
    """A shared filesystem pays for every call: a short first read of a spec file on a filesystem that fills
    its reads is the whole file, with no second read to find the end (the /proc case reads on: see
    test_atomicfile)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed (apt-get install -y strace)")
    root = write_access_point(tmp_path / "ap", definitions(1001, 1002, 1003))
    trace = tmp_path / "trace"
    script = "import sys; from hpcpilot.harvester import AccessPoint; from hpcpilot.config import HarvesterFiles; " \
             "AccessPoint(sys.argv[1], HarvesterFiles()).read_jobs()"
    subprocess.run([strace, "-f", "-y", "-qq", "-e", "trace=read", "-o", str(trace), sys.executable, "-c", script,
                    str(root)], check=True, timeout=50)
    spec_reads = [line for line in trace.read_text().splitlines() if f"/{FILES.job_spec}>" in line]
    assert len(spec_reads) == 3, spec_reads


def test_job_directory_paths_kept_do_not_grow_with_the_jobs_done(tmp_path, monkeypatch):
    """Kept to spare making a path several times per job, they must not pile up one per job of a long run."""
    monkeypatch.setattr(harvester, "JOB_DIR_CACHE", 10, raising=False)
    root = write_access_point(tmp_path / "ap", definitions(1001))
    access_point = AccessPoint(root, FILES)
    for pandaid in range(1, 1000):
        assert access_point.job_dir(pandaid) == root / str(pandaid)
    assert len(access_point._job_dirs) <= 10
    assert access_point.job_dir(999) is access_point.job_dir(999)  # still made once while in use


def test_many_to_one_layout_links_inputs_and_catalogues_them(tmp_path):
    payload = {"EVNT.pool.root.1": b"event data", "EVNT.pool.root.2": b""}
    defs = {1001: with_outputs(with_inputs(job_definition(1001, "sim.sh"), payload), ["HITS.root"])}
    root = write_access_point(tmp_path / "ap", defs, inputs={1001: payload})
    (job,) = read(root)
    assert isinstance(job, JobSpec)
    assert [(f.lfn, f.fsize) for f in job.inputs] == [("EVNT.pool.root.1", 10), ("EVNT.pool.root.2", 0)]
    for name, data in payload.items():
        link = root / "1001" / name
        assert link.is_symlink() and link.read_bytes() == data
    catalogue = ElementTree.parse(root / "1001" / FILES.pool_file_catalog).getroot()
    entries = {f.find("logical/lfn").get("name"): f.get("ID") for f in catalogue.iter("File")}
    assert entries == {"EVNT.pool.root.1": "1001-guid-0", "EVNT.pool.root.2": "1001-guid-1"}


def test_many_to_one_cgi_format_reads_the_same_jobs_as_json(tmp_path):
    defs = {p: job_definition(p, "run.sh", TRICKY_ARGS, jobsetID="NULL") for p in (2001, 2002)}
    root = write_access_point(tmp_path / "ap", defs, files=CGI_FILES)
    text = spec_path(root, 2001, CGI_FILES).read_text()
    assert not text.lstrip().startswith("{") and "PandaID=2001" in text
    jobs = read(root, CGI_FILES)
    assert jobs == [parse_job(defs[2001]), parse_job(defs[2002])]
    assert jobs[0].job_pars == TRICKY_ARGS


@pytest.mark.parametrize("files", [FILES, CGI_FILES], ids=["json", "cgi"])
def test_one_to_one_reads_the_job_at_the_top(tmp_path, files):
    defs = definitions(3001)
    root = write_access_point(tmp_path / "ap", defs, files=files, many_to_one=False)
    access_point = AccessPoint(root, files)
    assert not access_point.many_to_one
    assert access_point.job_dir(3001) == root.absolute()
    assert access_point.read_jobs() == [parse_job(defs[3001])]


@pytest.mark.parametrize("files", [FILES, CGI_FILES], ids=["json", "cgi"])
def test_one_to_one_as_harvester_feeds_it_has_worker_pandaids_too(tmp_path, files):
    """Harvester's feed_jobs writes worker_pandaids.json for every layout; OneToOne puts the job spec (and
    everything else of the job) at the top, with no <PandaID>/ directory."""
    definition = job_definition(3001, "run.sh", "--one")
    (tmp_path / files.worker_pandaids).write_text("[3001]")
    text = json.dumps({"3001": definition}) if files.job_spec_format == "json" else urllib.parse.urlencode(definition)
    (tmp_path / files.job_spec).write_text(text)
    access_point = AccessPoint(tmp_path, files)
    assert not access_point.many_to_one
    assert access_point.job_dir(3001) == tmp_path
    assert access_point.read_jobs() == [parse_job(definition)]


def test_one_to_one_spec_with_several_definitions_is_refused(tmp_path):
    """OneToOne: the job's files are the access point's own; two jobs would share one worker_attributes.json,
    and a crashed one would pass for final on the next run."""
    defs = definitions(3001, 3002)
    (tmp_path / FILES.job_spec).write_text(json.dumps({str(p): d for p, d in defs.items()}))
    with pytest.raises(WorkerError, match="holds 2 job definitions") as caught:
        read(tmp_path)
    assert caught.value.exit_code == 77


def test_a_bare_definition_without_the_pandaid_key_is_read(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).write_text(json.dumps(job_definition(1001, "run.sh")))
    assert read(root) == [parse_job(job_definition(1001, "run.sh"))]


def test_file_names_are_taken_from_the_settings(tmp_path):
    files = HarvesterFiles(worker_pandaids="ids.json", job_spec="pandaJobData.out")
    root = write_access_point(tmp_path / "ap", definitions(1001), files=files)
    assert (root / "ids.json").exists() and spec_path(root, 1001, files).exists()
    assert [job.pandaid for job in read(root, files)] == [1001]
    assert not AccessPoint(root, FILES).many_to_one  # the default names find nothing there


@pytest.mark.parametrize("name", [
    "event_status.dump.json.read",  # Harvester reads a dump it has not acknowledged under this name
    "worker_updateevents.json",  # Harvester writes it in the job directory (and reads it back as .read)
    "worker_updateevents.json.read",
    "event_status.dump.json.new",
    "post_process_job_attrs.json",  # Harvester merges it into the job's attributes
    "task_workdir_path.txt",  # Harvester declares the outputs listed in the directory it names
])
def test_names_harvester_keeps_in_a_job_directory_are_refused_as_outputs(tmp_path, name):
    """As outputs they would be read by Harvester as its own files: forged declarations or attributes."""
    definition = job_definition(1001, "run.sh", outFiles=f"{name},log.1001.job.log.tgz")
    (job,) = read(write_access_point(tmp_path / "ap", {1001: definition}))
    assert isinstance(job, InvalidJob) and job.code == ErrorCode.BAD_FILE_NAME, job
    assert "keeps for itself" in job.diag


def test_harvester_s_event_update_file_is_a_setting_and_its_name_is_refused(tmp_path):
    files = HarvesterFiles(update_events="updates.json")
    definition = job_definition(1001, "run.sh", outFiles="updates.json,log.1001.job.log.tgz")
    (job,) = read(write_access_point(tmp_path / "ap", {1001: definition}, files=files), files)
    assert isinstance(job, InvalidJob) and job.code == ErrorCode.BAD_FILE_NAME, job


# -- reading: broken jobs become InvalidJob, never dropped ----------------------------


def test_a_missing_job_directory_is_1103_and_the_other_jobs_still_run(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001, 1002))
    shutil.rmtree(root / "1001")
    missing, present = read(root)
    assert missing == InvalidJob(1001, ErrorCode.NO_SUCH_FILE, missing.diag)
    assert missing.code == 1103 and FILES.job_spec in missing.diag
    assert isinstance(present, JobSpec) and present.pandaid == 1002


def test_a_missing_spec_file_is_1103(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).unlink()
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, 1103)


@pytest.mark.parametrize("content", ['{"1001": {"PandaID": "1001",', "", "not json", "{'1001': {}}"])
def test_corrupt_json_is_an_invalid_job(tmp_path, content):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).write_text(content)
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.GENERAL)
    assert "JSON" in job.diag


@pytest.mark.parametrize("content", ["[]", '"text"', "42", "null", '{"1001": "run.sh"}', '{"1001": null}'])
def test_json_that_is_not_a_definition_is_an_invalid_job(tmp_path, content):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).write_text(content)
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.GENERAL)


def test_a_cgi_spec_read_as_json_is_an_invalid_job(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001), files=CGI_FILES)
    (job,) = read(root, HarvesterFiles(job_spec=CGI_FILES.job_spec))
    assert isinstance(job, InvalidJob) and job.pandaid == 1001


def test_a_spec_that_is_not_utf8_is_1303(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).write_bytes(b'{"1001": {"PandaID": "\xff\xfe"}}')
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.FILE_HANDLING)


def test_a_spec_that_is_a_directory_is_1303(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).unlink()
    spec_path(root, 1001).mkdir()
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, 1303)


@pytest.mark.timeout(60)
def test_an_unreadable_spec_is_1303(world_tmp):
    root = write_access_point(world_tmp / "ap", definitions(1001))
    spec_path(root, 1001).chmod(0)
    outcome = unprivileged_outcome(lambda: [(j.pandaid, int(j.code)) for j in read(root)])
    assert outcome == "[(1001, 1303)]"


def test_an_invalid_definition_keeps_its_pandaid_and_code(tmp_path):
    defs = definitions(1001, 1002)
    defs[1001]["inFiles"] = "../../etc/passwd"
    root = write_access_point(tmp_path / "ap", defs)
    bad, good = read(root)
    assert isinstance(bad, InvalidJob) and (bad.pandaid, bad.code) == (1001, ErrorCode.BAD_FILE_NAME)
    assert isinstance(good, JobSpec)


@pytest.mark.parametrize("files", [FILES, CGI_FILES], ids=["json", "cgi"])
def test_a_pandaid_field_that_differs_from_its_key_is_an_invalid_job(tmp_path, files):
    defs = definitions(1001)
    defs[1001]["PandaID"] = "1002"
    root = write_access_point(tmp_path / "ap", defs, files=files)
    (job,) = read(root, files)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.GENERAL)
    assert "PandaID" in job.diag


def test_a_definition_for_another_job_in_a_job_directory_is_an_invalid_job(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).write_text(json.dumps({"1002": job_definition(1002, "run.sh")}))
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.GENERAL)


def test_a_job_directory_without_its_own_definition_is_an_invalid_job(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    others = {str(p): job_definition(p, "run.sh") for p in (1002, 1003)}
    spec_path(root, 1001).write_text(json.dumps(others))
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.GENERAL)


def test_one_to_one_key_and_field_mismatch_is_an_invalid_job(tmp_path):
    (tmp_path / FILES.job_spec).write_text(json.dumps({"3001": job_definition(3002, "run.sh")}))
    (job,) = read(tmp_path)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (3001, ErrorCode.GENERAL)


def test_a_cgi_definition_without_pandaid_is_an_invalid_job(tmp_path):
    defs = definitions(1001)
    del defs[1001]["PandaID"]
    root = write_access_point(tmp_path / "ap", defs, files=CGI_FILES)
    (job,) = read(root, CGI_FILES)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.GENERAL)


@pytest.mark.timeout(60)
def test_deeply_nested_json_is_an_invalid_job(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    spec_path(root, 1001).write_text("[" * 100_000)
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and job.pandaid == 1001


# -- reading: worker_pandaids.json and the access point itself -------------------------


def test_duplicate_pandaids_run_once_each_in_first_seen_order(tmp_path, caplog):
    root = write_access_point(tmp_path / "ap", definitions(1001, 1002))
    (root / FILES.worker_pandaids).write_text("[1002, 1001, 1002, 1001, 1001]")
    assert [job.pandaid for job in read(root)] == [1002, 1001]
    assert "more than once" in caplog.text


def test_pandaids_may_be_strings(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    (root / FILES.worker_pandaids).write_text('["1001"]')
    assert [job.pandaid for job in read(root)] == [1001]


def test_an_empty_pandaid_list_is_no_jobs(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    (root / FILES.worker_pandaids).write_text("[]")
    with pytest.raises(WorkerError) as caught:
        read(root)
    assert caught.value.exit_code == ExitCode.NO_JOBS == 82


@pytest.mark.parametrize("content", ["", "[1001,", '["abc"]', "[1.5]", "[null]", "42", "[-1]"])
def test_a_malformed_pandaid_list_is_a_worker_error(tmp_path, content):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    (root / FILES.worker_pandaids).write_text(content)
    with pytest.raises(WorkerError) as caught:
        read(root)
    assert caught.value.exit_code == ExitCode.MISSING_INPUT
    assert FILES.worker_pandaids in str(caught.value)


@pytest.mark.parametrize("content", ['"1001"', '{"1001": {}}'])
def test_a_pandaid_file_that_is_not_a_list_is_a_worker_error(tmp_path, content):
    root = write_access_point(tmp_path / "ap", definitions(1001))
    (root / FILES.worker_pandaids).write_text(content)
    with pytest.raises(WorkerError):
        read(root)


def test_an_access_point_without_any_job_file_is_no_jobs(tmp_path):
    with pytest.raises(WorkerError) as caught:
        read(tmp_path)
    assert caught.value.exit_code == ExitCode.NO_JOBS


def test_an_empty_one_to_one_spec_is_no_jobs(tmp_path):
    (tmp_path / FILES.job_spec).write_text("{}")
    with pytest.raises(WorkerError) as caught:
        read(tmp_path)
    assert caught.value.exit_code == ExitCode.NO_JOBS


def test_a_missing_access_point_is_a_worker_error(tmp_path):
    with pytest.raises(WorkerError) as caught:
        read(tmp_path / "nowhere")
    assert caught.value.exit_code == ExitCode.MISSING_INPUT


def test_an_access_point_that_is_a_file_is_a_worker_error(tmp_path):
    (tmp_path / "ap").write_text("")
    with pytest.raises(WorkerError):
        read(tmp_path / "ap")


@pytest.mark.timeout(60)
def test_an_unprivileged_reader_reads_a_readable_access_point(world_tmp):
    root = write_access_point(world_tmp / "ap", definitions(1001))
    assert unprivileged_outcome(lambda: [j.pandaid for j in read(root)]) == "[1001]"


@pytest.mark.timeout(60)
def test_an_unreadable_pandaid_list_is_a_worker_error(world_tmp):
    root = write_access_point(world_tmp / "ap", definitions(1001))
    (root / FILES.worker_pandaids).chmod(0)
    outcome = unprivileged_outcome(lambda: read(root))
    assert outcome.startswith("raised WorkerError") and FILES.worker_pandaids in outcome


@pytest.mark.timeout(60)
@pytest.mark.parametrize("locked", ["access point", "its parent"])
def test_an_unreadable_access_point_is_a_worker_error(world_tmp, locked):
    root = write_access_point(world_tmp / "parent" / "ap", definitions(1001))
    (root if locked == "access point" else root.parent).chmod(0)

    def check():
        try:
            return read(root)
        except WorkerError as error:
            return f"WorkerError {int(error.exit_code)}"

    assert unprivileged_outcome(check) == repr(f"WorkerError {int(ExitCode.MISSING_INPUT)}")


# -- writing declarations -------------------------------------------------------------


@pytest.mark.parametrize("many_to_one", [True, False], ids=["ManyToOne", "OneToOne"])
def test_declarations_land_where_harvester_reads_them(tmp_path, many_to_one):
    root = write_access_point(tmp_path / "ap", definitions(1001), many_to_one=many_to_one)
    access_point = AccessPoint(root, FILES)
    job_dir = root / "1001" if many_to_one else root
    attributes = {"jobStatus": "finished", "pilotErrorCode": 0, "node": "nid001", "startTime": "2024-01-01 00:00:00"}
    report = {"exitCode": 0, "executor": [{"name": "sim"}]}
    access_point.write_attributes(1001, attributes)
    access_point.write_job_report(1001, report)
    access_point.write_summary({"jobs": 1})
    assert json.loads((job_dir / "worker_attributes.json").read_text()) == attributes
    assert json.loads((job_dir / "jobReport.json").read_text()) == report
    assert json.loads((root / FILES.summary).read_text()) == {"jobs": 1}
    assert leftover_temp_files(root) == []


def test_attributes_are_rewritten_whole(tmp_path):
    access_point = AccessPoint(write_access_point(tmp_path / "ap", definitions(1001)), FILES)
    access_point.write_attributes(1001, {"jobStatus": "running", "node": "n1"})
    access_point.write_attributes(1001, {"jobStatus": "finished"})
    assert json.loads(access_point.path(1001, FILES.worker_attributes).read_text()) == {"jobStatus": "finished"}


def test_declaration_file_names_are_taken_from_the_settings(tmp_path):
    files = HarvesterFiles(worker_attributes="attrs.json", job_report="report.json", summary="sum.json",
                           heartbeat="beat.json")
    root = write_access_point(tmp_path / "ap", definitions(1001), files=files)
    access_point = AccessPoint(root, files)
    access_point.write_attributes(1001, {"jobStatus": "failed"})
    access_point.write_job_report(1001, {})
    access_point.write_summary({})
    access_point.touch_heartbeat()
    assert {p.name for p in (root / "1001").iterdir()} >= {"attrs.json", "report.json"}
    assert {p.name for p in root.iterdir()} >= {"sum.json", "beat.json"}


def test_the_heartbeat_is_refreshed(tmp_path):
    access_point = AccessPoint(write_access_point(tmp_path / "ap", definitions(1001)), FILES)
    heartbeat = access_point.root / "worker_heartbeat.json"
    access_point.touch_heartbeat()
    json.loads(heartbeat.read_text())
    os.utime(heartbeat, (1_000_000, 1_000_000))
    access_point.touch_heartbeat()
    assert heartbeat.stat().st_mtime > 1_000_000


# -- event_status.dump.json: the never-overwrite hand-off --------------------------------


OUTPUT = {"type": "output", "path": "/ap/1001/out.root", "fsize": 1234, "chksum": "0a1b2c3d", "guid": "u-1"}
LOG_ENTRY = {"type": "log", "path": "/ap/1001/log.1001.job.log.tgz", "fsize": 99, "chksum": "00000001", "guid": "u-2"}
EVENT = {"eventRangeID": "T-J-F-11-20", "eventStatus": "failed"}


def dump_of(access_point: AccessPoint, pandaid: int) -> Path:
    return access_point.path(pandaid, "event_status.dump.json")


def harvester_takes(dump: Path) -> dict:
    """What Harvester does: rename the dump to ``.read``, then read it."""
    taken = dump.with_name(dump.name + ".read")
    dump.rename(taken)
    return json.loads(taken.read_text())


@pytest.fixture
def access_point(tmp_path) -> AccessPoint:
    return AccessPoint(write_access_point(tmp_path / "ap", definitions(1001, 1002)), FILES)


def test_a_declaration_is_keyed_by_the_pandaid_string(access_point):
    publisher = EventStatusPublisher(access_point)
    assert publisher.declare(1001, [OUTPUT, LOG_ENTRY]) is True
    dump = dump_of(access_point, 1001)
    assert dump.parent == access_point.root / "1001"
    content = json.loads(dump.read_text())
    assert content == {"1001": [OUTPUT, LOG_ENTRY]}
    assert all("filetype" not in entry for entry in content["1001"])
    assert publisher.waiting == set()
    assert leftover_temp_files(access_point.root) == []


def test_one_to_one_declares_at_the_top(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(3001), many_to_one=False)
    access_point = AccessPoint(root, FILES)
    assert EventStatusPublisher(access_point).declare(3001, [OUTPUT])
    assert json.loads((root / "event_status.dump.json").read_text()) == {"3001": [OUTPUT]}


def taken_path(publisher: EventStatusPublisher, pandaid: int) -> Path:
    journal = publisher.journal_path(pandaid)
    return journal.with_name(journal.name + ".taken")


def test_an_unconsumed_dump_is_taken_back_never_written_and_its_entries_go_out_again_first(access_point):
    publisher = EventStatusPublisher(access_point)
    publisher.declare(1001, [OUTPUT])
    dump = dump_of(access_point, 1001)
    with open(dump, "rb") as reading:  # Harvester may hold the old file open: it is never written to
        assert publisher.declare(1001, [LOG_ENTRY]) is True
        assert json.loads(reading.read()) == {"1001": [OUTPUT]}
    assert harvester_takes(dump) == {"1001": [OUTPUT, LOG_ENTRY]}
    assert publisher.waiting == set() and publisher.flush() == 0
    assert not dump.exists()  # nothing is handed over twice
    hidden = [p.name for p in dump.parent.iterdir() if p.name.startswith(".")]
    assert hidden == [], "neither journal nor taken-back dump is left"


def test_each_entry_reaches_harvester_once_whatever_the_dump_s_state(access_point):
    publisher = EventStatusPublisher(access_point)
    publisher.declare(1001, [OUTPUT])
    first = harvester_takes(dump_of(access_point, 1001))
    publisher.declare(1001, [LOG_ENTRY])
    publisher.declare(1001, [EVENT])
    assert [first, harvester_takes(dump_of(access_point, 1001))] == [{"1001": [OUTPUT]},
                                                                       {"1001": [LOG_ENTRY, EVENT]}]


@pytest.mark.timeout(120)
def test_a_harvester_reading_all_the_while_gets_every_entry_exactly_once_in_order(access_point, rename_path):
    """Harvester's rename to .read and the pilot's take-back race for the same dump: exactly one of the two
    renames wins, so no entry is read twice or lost. Real renames in two threads, many rounds."""
    import threading

    dump, entries = dump_of(access_point, 1001), [{"eventRangeID": f"T-J-F-{i}-{i}", "eventStatus": "failed"}
                                                   for i in range(1000)]
    read: list[dict] = []
    done = threading.Event()

    def harvester() -> None:
        while not done.is_set() or dump.exists():
            try:
                read.extend(harvester_takes(dump)["1001"])
            except FileNotFoundError:  # not there, or the pilot took it back first: Harvester logs, goes on
                pass
            taken = dump.with_name(dump.name + ".read")
            if taken.exists():
                taken.rename(dump.with_name(f"{dump.name}.read.{len(read)}"))  # acknowledged

    reader = threading.Thread(target=harvester)
    reader.start()
    publisher = EventStatusPublisher(access_point)
    try:
        for entry in entries:
            assert publisher.declare(1001, [entry]) is True
    finally:
        done.set()
        reader.join(timeout=60)
    assert not reader.is_alive()
    assert read == entries


@pytest.mark.timeout(60)
def test_taking_over_from_an_earlier_run_looks_twice_at_a_job_that_left_nothing(tmp_path):
    """A rerun takes over every final job of the earlier one: on Lustre each look is a metadata server call,
    so a job with no journal and no taken-back dump costs two (the journal, the taken dump), not more."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed (apt-get install -y strace)")
    pandaids = range(1001, 1011)
    root = write_access_point(tmp_path / "ap", definitions(*pandaids))
    trace = tmp_path / "trace"
    script = "import sys; from hpcpilot.harvester import AccessPoint; from hpcpilot.eventstatus import " \
             "EventStatusPublisher; " \
             "from hpcpilot.config import HarvesterFiles; " \
             "EventStatusPublisher(AccessPoint(sys.argv[1], HarvesterFiles())).adopt(range(1001, 1011))"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=%file,read", "-o", str(trace), sys.executable, "-c", script,
                    str(root)], check=True, timeout=50)
    looks = [line for line in trace.read_text().splitlines() if f'"{root}/10' in line]
    assert len(looks) == 2 * len(pandaids), looks


def test_a_take_back_by_hard_link_interrupted_by_a_crash_leaves_the_dump_to_harvester(access_point):
    publisher = EventStatusPublisher(access_point)
    publisher.declare(1001, [OUTPUT])
    publisher.stage(1001, [LOG_ENTRY])
    dump = dump_of(access_point, 1001)
    os.link(dump, taken_path(publisher, 1001))  # killed between the link and the unlink
    restarted = EventStatusPublisher(access_point)
    restarted.adopt([1001])
    assert not taken_path(publisher, 1001).exists()
    assert harvester_takes(dump) == {"1001": [OUTPUT]}
    assert restarted.flush() == 0
    assert harvester_takes(dump) == {"1001": [LOG_ENTRY]}


def test_a_take_back_interrupted_by_a_crash_is_completed_by_the_next_run(access_point):
    """Killed after the dump was renamed away, or after its entries were added to the journal but before the
    taken file went: either way the next run publishes each entry once."""
    for journal_content in ([LOG_ENTRY], [OUTPUT, LOG_ENTRY]):
        publisher = EventStatusPublisher(access_point)
        publisher.stage(1001, [OUTPUT])
        taken = taken_path(publisher, 1001)
        publisher.journal_path(1001).rename(taken)  # what the take-back makes of the published dump
        publisher.journal_path(1001).write_text(json.dumps({"1001": journal_content}))
        restarted = EventStatusPublisher(access_point)
        restarted.adopt([1001])
        assert not taken.exists() and restarted.waiting == {1001}
        assert restarted.flush() == 0
        assert harvester_takes(dump_of(access_point, 1001)) == {"1001": [OUTPUT, LOG_ENTRY]}


@pytest.mark.parametrize("content", ["not json", '["a list"]', '{"1001": {"not": "a list"}}'])
def test_a_dump_that_is_not_the_pilot_s_is_left_for_harvester_and_the_entries_wait(access_point, content, caplog):
    dump = dump_of(access_point, 1001)
    dump.write_text(content)
    publisher = EventStatusPublisher(access_point)
    assert publisher.declare(1001, [OUTPUT]) is False
    assert publisher.declare(1001, [LOG_ENTRY]) is False  # not taken back again
    assert dump.read_text() == content and publisher.waiting == {1001}
    assert caplog.text.count("no dump of declarations") == 1
    dump.rename(dump.with_name(dump.name + ".read"))
    assert publisher.flush() == 0
    assert publisher.declare(1001, [EVENT]) is True, "the pilot's own dump is taken back again"
    assert harvester_takes(dump) == {"1001": [OUTPUT, LOG_ENTRY, EVENT]}


def test_a_dump_whose_entries_cannot_be_added_is_put_back_as_it_was(access_point, caplog):
    publisher = EventStatusPublisher(access_point)
    publisher.declare(1001, [OUTPUT])
    publisher.stage(1001, [LOG_ENTRY])
    journal = publisher.journal_path(1001)
    journal.unlink()
    journal.mkdir()  # the journal cannot be replaced: as on a full or read-only filesystem
    assert publisher.publish(1001) is False
    assert json.loads(dump_of(access_point, 1001).read_text()) == {"1001": [OUTPUT]}
    assert not taken_path(publisher, 1001).exists() and "cannot add its entries" in caplog.text


def test_a_taken_back_dump_that_cannot_be_removed_holds_its_entries_back_never_twice(access_point, monkeypatch):
    publisher = EventStatusPublisher(access_point)
    publisher.declare(1001, [OUTPUT])
    taken, real_unlink = taken_path(publisher, 1001), Path.unlink

    def failing_once(path: Path, *args, **kwargs):
        if path == taken and not getattr(failing_once, "failed", False):
            failing_once.failed = True
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", failing_once)
    assert publisher.declare(1001, [LOG_ENTRY]) is False  # the journal holds both entries, the taken file one
    assert not dump_of(access_point, 1001).exists()
    assert publisher.flush() == 0
    assert harvester_takes(dump_of(access_point, 1001)) == {"1001": [OUTPUT, LOG_ENTRY]}
    assert publisher.flush() == 0 and not dump_of(access_point, 1001).exists() and not taken.exists()


def test_staged_entries_wait_for_their_publish_not_for_a_flush(access_point):
    """Staged before the job's final state is written: a flush from another thread (the supervisor's) must
    not show Harvester the outputs of a job it does not yet, or may never, see final."""
    publisher = EventStatusPublisher(access_point)
    publisher.stage(1001, [OUTPUT])
    assert publisher.flush() == 0 and not dump_of(access_point, 1001).exists()
    publisher.stage(1001, [LOG_ENTRY])
    assert publisher.publish(1001) is True
    assert json.loads(dump_of(access_point, 1001).read_text()) == {"1001": [OUTPUT, LOG_ENTRY]}


def test_a_blocked_job_does_not_hold_back_another(access_point):
    dump_of(access_point, 1001).write_text("not the pilot's")
    publisher = EventStatusPublisher(access_point)
    publisher.declare(1001, [EVENT])
    assert publisher.declare(1002, [LOG_ENTRY]) is True
    assert json.loads(dump_of(access_point, 1002).read_text()) == {"1002": [LOG_ENTRY]}
    assert publisher.waiting == {1001}


def test_the_journal_and_a_taken_back_dump_are_hidden_from_harvester(access_point):
    publisher = EventStatusPublisher(access_point)
    publisher.stage(1001, [OUTPUT])
    assert publisher.journal_path(1001).name.startswith(".")
    assert taken_path(publisher, 1001).name.startswith(".")
    assert access_point.is_reserved(taken_path(publisher, 1001).name)
    renamed = AccessPoint(access_point.root, HarvesterFiles(pending_declarations="pending.json"))
    assert renamed.is_reserved("pending.json.taken"), "a payload's output must not pass for a taken-back dump"


def test_the_journal_survives_a_restart(access_point):
    EventStatusPublisher(access_point).stage(1001, [OUTPUT])  # a final job whose entries were not yet published
    restarted = EventStatusPublisher(AccessPoint(access_point.root, FILES))
    restarted.adopt([1001, 1002])
    assert restarted.waiting == {1001}
    assert restarted.flush() == 0
    assert harvester_takes(dump_of(access_point, 1001)) == {"1001": [OUTPUT]}
    assert EventStatusPublisher(access_point).waiting == set()


def test_a_temp_file_left_beside_the_journal_does_not_break_a_restart(access_point):
    EventStatusPublisher(access_point).stage(1001, [OUTPUT])
    (access_point.root / "1001" / f"{TEMP_PREFIX}k3j2l1.1001.json").write_text("[")
    restarted = EventStatusPublisher(access_point)
    restarted.adopt([1001])
    assert restarted.waiting == {1001}


@pytest.mark.parametrize("dump_there", [False, True], ids=["dump-free", "dump-not-yet-taken"])
@pytest.mark.parametrize("torn", ["", '{"1001": [{"type": "outp'])
def test_a_journal_a_kill_left_half_written_is_dropped_at_a_restart(access_point, dump_there, torn, caplog):
    """Killed between the journal's creation and the end of its writing (an event service job stages every few
    seconds): the next run must neither hand Harvester the half-written file nor stop on it when it takes back
    the dump; the entries it held were never counted declared (their ranges run again)."""
    dump = dump_of(access_point, 1001)
    if dump_there:
        EventStatusPublisher(access_point).declare(1001, [OUTPUT])
    journal = EventStatusPublisher(access_point).journal_path(1001)
    journal.write_text(torn)
    restarted = EventStatusPublisher(access_point)
    restarted.adopt([1001])
    assert restarted.flush() == 0
    if dump_there:
        assert harvester_takes(dump) == {"1001": [OUTPUT]}
    assert not dump.exists() and not journal.exists()
    assert "half-written" in caplog.text


def test_a_journal_published_just_before_a_crash_is_not_published_again(access_point):
    publisher = EventStatusPublisher(access_point)
    publisher.stage(1001, [OUTPUT])
    os.link(publisher.journal_path(1001), dump_of(access_point, 1001))  # crash before the journal is cleared
    harvester_takes(dump_of(access_point, 1001))
    restarted = EventStatusPublisher(access_point)
    restarted.adopt([1001])
    assert restarted.waiting == set() and not publisher.journal_path(1001).exists()


# -- resuming ---------------------------------------------------------------------------------


def test_only_the_first_run_finds_the_access_point_fresh(access_point):
    assert access_point.note_run() is False
    assert access_point.note_run() is True
    assert access_point.state_dir.name.startswith(".")  # hidden from Harvester


def test_resuming_forgets_entries_an_attempt_staged_before_declaring_anything(access_point):
    """An attempt killed between staging its entries and its final state left a journal and no
    worker_attributes.json: the job runs again, and those entries are never published."""
    from hpcpilot.workflow.resume import split_declared

    EventStatusPublisher(access_point).stage(1001, [OUTPUT])
    to_run, declared = split_declared(access_point, access_point.read_jobs())
    assert sorted(job.pandaid for job in to_run) == [1001, 1002] and declared == []
    assert not EventStatusPublisher(access_point).journal_path(1001).exists()


@pytest.mark.parametrize("attributes", ['{"jobStatus": "failed", "pilotErrorCode": "E42"}',
                                        '{"jobStatus": ' + "[" * 50000], ids=["code-not-a-number", "deep"])
def test_resuming_survives_a_worker_attributes_file_that_is_not_the_pilot_s(access_point, attributes):
    """A final state with a code that is no number is kept (with the general code); one that cannot be read
    is no final state: the job runs again. Either way the worker goes on."""
    from hpcpilot.workflow.resume import split_declared

    (access_point.job_dir(1001) / "worker_attributes.json").write_text(attributes)
    to_run, declared = split_declared(access_point, access_point.read_jobs())
    assert sorted(job.pandaid for job in [*to_run, *declared]) == [1001, 1002]
    assert all(result.code == 1008 for result in declared)


def test_resuming_never_runs_a_job_whose_state_cannot_be_read(access_point):
    """An earlier run may have declared it final: running it again would make its outputs twice. It is
    reported failed (1303) and undeclared (a site problem: exit 64) in the pilot's own summary, and nothing in
    its directory is touched."""
    from hpcpilot.workflow.resume import split_declared

    (access_point.job_dir(1001) / "worker_attributes.json").mkdir()  # reads fail with EISDIR, as with EIO
    EventStatusPublisher(access_point).stage(1001, [OUTPUT])
    to_run, declared = split_declared(access_point, access_point.read_jobs())
    assert [job.pandaid for job in to_run] == [1002]
    (result,) = declared
    assert (result.pandaid, result.status, result.code, result.declared) == (1001, "failed", 1303, False)
    assert "worker_attributes.json cannot be read" in result.diag and "not run again" in result.diag
    assert EventStatusPublisher(access_point).journal_path(1001).exists()


# -- PoolFileCatalog.xml -------------------------------------------------------------------------------


def test_pool_file_catalog_has_pool_s_layout():
    assert pool_file_catalog([("0b4f-1", "EVNT.pool.root.1", "EVNT.pool.root.1")]) == (
        '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n<POOLFILECATALOG>\n'
        '  <File ID="0b4f-1">\n    <physical><pfn filetype="ROOT_All" name="EVNT.pool.root.1"/></physical>\n'
        '    <logical><lfn name="EVNT.pool.root.1"/></logical>\n  </File>\n</POOLFILECATALOG>\n')


def test_pool_file_catalog_escapes_what_the_definition_brings():
    """A GUID or an LFN is any string Harvester passes on: it must not break (or inject into) the XML."""
    odd = ('x" evil="1', "a&b<c>'d\"", "in.<1>&.root")
    root = ElementTree.fromstring(pool_file_catalog([odd]))
    (entry,) = root.findall("File")
    assert (entry.get("ID"), entry.find("physical/pfn").get("name"), entry.find("logical/lfn").get("name")) == odd
    assert entry.get("evil") is None


@pytest.mark.parametrize("report, guids", [
    ({"files": {"output": [{"subFiles": [{"name": "a.root", "file_guid": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}]}]}},
     {"a.root": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}),
    ({"files": {"output": [{"subFiles": [{"name": "a.root", "file_guid": "../../etc"}]}]}}, {}),
    ({"files": {"output": "odd"}}, {}),
    ({"files": [1, 2]}, {}),
    ([], {}),
    (None, {}),
    ({"files": {"output": [None, {"subFiles": [7, {"name": 3, "file_guid": "x"}]}]}}, {}),
])
def test_output_guids_come_from_the_payload_report_of_any_shape(report, guids):
    assert output_guids(report) == guids


@pytest.mark.parametrize("report, error", [
    ({"exitCode": 65, "exitMsg": "TRF_EXEC_FAIL"}, {"exeErrorCode": 65, "exeErrorDiag": "TRF_EXEC_FAIL"}),
    ({"exitCode": 0, "exitMsg": "OK"}, {}),
    ({"exeErrorCode": 8, "exeErrorDiag": "athena crashed", "exitCode": 1, "exitMsg": "x"},
     {"exeErrorCode": 8, "exeErrorDiag": "athena crashed"}),
    ({"exeErrorCode": 8}, {"exeErrorCode": 8, "exeErrorDiag": ""}),
    ({"exitCode": 65, "exitMsg": "x" * 2000}, {"exeErrorCode": 65, "exeErrorDiag": "x" * 500}),
    ({"exitCode": "65", "exitMsg": "text code"}, {}),
    ({"exitCode": True, "exitMsg": "a bool"}, {}),
    ({"exeErrorCode": 2 ** 31, "exeErrorDiag": "too large for PanDA"}, {}),
    ({"exeErrorCode": -2 ** 31, "exeErrorDiag": "the smallest"}, {"exeErrorCode": -2 ** 31,
                                                                  "exeErrorDiag": "the smallest"}),
    ({"exeErrorCode": int("9" * 4000), "exeErrorDiag": "thousands of digits"}, {}),
    ({"exitCode": 65}, {}),
    ({"exeErrorCode": 1, "exeErrorDiag": "nul \x00 \x1b[31mred\x1b[0m \ud800\udcff\tcaf\u00e9\n\U0001f600"},
     {"exeErrorCode": 1, "exeErrorDiag": "nul \ufffd \ufffd[31mred\ufffd[0m \ufffd\ufffd\tcaf\u00e9\n\U0001f600"}),
    ([], {}),
    (None, {}),
])
def test_the_payloads_error_is_taken_from_its_report_of_any_shape(report, error):
    assert payload_error(report) == error


@pytest.mark.timeout(60)
def test_a_utf8_spec_is_read_alike_under_an_ascii_locale(tmp_path):
    """A batch node's LC_ALL=C (with PYTHONUTF8=0) made the spec ASCII to Python: a UTF-8 field failed the job."""
    root = write_access_point(tmp_path / "ap", {})
    write_raw_utf8_spec(root, 1001)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path), "LC_ALL": "C", "PYTHONUTF8": "0"}
    reading = ("import sys; from hpcpilot.harvester import AccessPoint; from hpcpilot.config import HarvesterFiles; "
               "(job,) = AccessPoint(sys.argv[1], HarvesterFiles()).read_jobs(); print(ascii(job.job_pars))")
    printed = subprocess.run([sys.executable, "-c", reading, str(root)], env=env, capture_output=True, text=True,
                             timeout=50)
    assert printed.stdout.strip() == ascii(TRICKY_ARGS), printed.stderr


@pytest.mark.parametrize("spec_format", ["json", "cgi"])
def test_a_spec_with_a_byte_order_mark_and_crlf_line_ends_is_read(tmp_path, spec_format):
    files = CGI_FILES if spec_format == "cgi" else FILES
    root = write_access_point(tmp_path / "ap", {1001: job_definition(1001, "run.sh", TRICKY_ARGS)}, files=files)
    spec = spec_path(root, 1001, files)
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")
    (job,) = read(root, files)
    assert isinstance(job, JobSpec) and job.job_pars == TRICKY_ARGS, job


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_spec_in_another_encoding_is_1303_naming_the_byte(tmp_path, encoding):
    root = write_access_point(tmp_path / "ap", {})
    spec = write_raw_utf8_spec(root, 1001)
    spec.write_bytes(spec.read_text(encoding="utf-8").encode(encoding))
    (job,) = read(root)
    assert isinstance(job, InvalidJob) and (job.pandaid, job.code) == (1001, ErrorCode.FILE_HANDLING)
    assert "is not UTF-8 text: byte 0x" in job.diag, job.diag


def write_raw_utf8_spec(root: Path, pandaid: int) -> Path:
    """A spec whose non-ASCII characters are UTF-8 bytes, not \\u escapes (any JSON writer but Python's)."""
    (root / str(pandaid)).mkdir()
    (root / FILES.worker_pandaids).write_text(json.dumps([pandaid]))
    spec = spec_path(root, pandaid)
    definition = {str(pandaid): job_definition(pandaid, "run.sh", TRICKY_ARGS)}
    spec.write_bytes(json.dumps(definition, ensure_ascii=False).encode("utf-8"))
    return spec


HOSTILE_DIAG = "container said: nul \x00 \x1b[31mred\x1b[0m, scratch /tmp/x\udcff\tcaf\u00e9"
STORED_DIAG = "container said: nul \ufffd \ufffd[31mred\ufffd[0m, scratch /tmp/x\ufffd\tcaf\u00e9"


def test_a_diagnostic_is_declared_without_what_panda_cannot_store(tmp_path):
    """A NUL fails the job's whole update in PostgreSQL, a lone surrogate has no UTF-8 form (strict JSON readers
    refuse its \\u escape), ANSI colours are noise: the job's diagnostic came through with them all."""
    ap = AccessPoint(write_access_point(tmp_path / "ap", definitions(1001, 1002)), FILES)
    run = JobRun(parse_job(definitions(1001)[1001]), 0, "node", 1)
    run.fail(PilotError(ErrorCode.SETUP_FAILED, HOSTILE_DIAG))
    ap.write_attributes(1001, worker_attributes(run))
    ap.write_attributes(1002, invalid_job_attributes(InvalidJob(1002, ErrorCode.GENERAL, HOSTILE_DIAG), "node"))
    for pandaid in (1001, 1002):
        written = ap.path(pandaid, FILES.worker_attributes).read_bytes()
        assert json.loads(written.decode("utf-8"))["pilotErrorDiag"] == STORED_DIAG
        assert b"\\ud" not in written and b"\\u0000" not in written
