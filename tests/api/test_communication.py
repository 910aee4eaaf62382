"""hpcpilot.api.communication on access points laid out as Harvester does, read back as Harvester reads them."""
from __future__ import annotations

import json
import os
import threading
import time
import zlib
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.api.communication import AccessPointClient, EventRange, HarvesterFiles, InvalidJob, JobSpec, WorkerError
from hpcpilot.api.data import Transfer, stage_out
from hpcpilot.atomicfile import TEMP_PREFIX
from hpcpilot.errors import ExitCode
from tests.threadless import run_without_threads

DUMP = "event_status.dump.json"


def definitions(*pandaids: int, **fields) -> dict[int, dict]:
    return {p: job_definition(p, "run.sh", f"--job {p}", **fields) for p in pandaids}


def harvester_dir(root: Path, pandaid: int, many_to_one: bool) -> Path:
    """Where Harvester's messenger looks for a job's files (get_access_point: MultiJobs has a sub-directory)."""
    return root / str(pandaid) if many_to_one else root


def harvester_takes(job_dir: Path) -> list[dict] | None:
    """Harvester's hand-off of event_status.dump.json (get_files_to_stage_out, acknowledge_events_files):
    take a ``.read`` left from before, else rename the dump to ``.read``; read it; rename it to
    ``.read.<timestamp>``. None when there was nothing to take."""
    dump, taken = job_dir / DUMP, job_dir / (DUMP + ".read")
    if not taken.exists():
        if not dump.exists():
            return None
        dump.rename(taken)
    content = json.loads(taken.read_text())
    taken.rename(taken.with_name(f"{taken.name}.{time.strftime('%Y-%m-%d_%H_%M_%S')}.{time.monotonic_ns()}"))
    return [entry for entries in content.values() for entry in entries]


def write_output(client: AccessPointClient, pandaid: int, name: str, data: bytes) -> Path:
    path = client.job_dir(pandaid) / name
    path.write_bytes(data)
    return path


@pytest.fixture
def client(tmp_path: Path) -> AccessPointClient:
    return AccessPointClient(write_access_point(tmp_path / "ap", definitions(1001, 1002)))


# -- reading -------------------------------------------------------------------------------------------------


def test_jobs_are_validated_and_an_invalid_one_says_why(tmp_path):
    jobs = definitions(1001, 1002)
    jobs[1002]["coreCount"] = "many"
    client = AccessPointClient(write_access_point(tmp_path / "ap", jobs))
    valid, invalid = sorted(client.jobs(), key=lambda job: job.pandaid)
    assert isinstance(valid, JobSpec) and valid.command == "run.sh --job 1001"
    assert isinstance(invalid, InvalidJob) and invalid.pandaid == 1002
    assert "coreCount" in invalid.diag
    assert client.pandaids() == [1001, 1002]


def test_an_access_point_without_jobs_is_a_worker_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkerError, match="no jobs"):
        AccessPointClient(tmp_path / "empty").jobs()


# -- both layouts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("many_to_one", [True, False], ids=["ManyToOne", "OneToOne"])
def test_each_file_lands_where_harvester_reads_it(tmp_path, many_to_one):
    root = write_access_point(tmp_path / "ap", definitions(2001), many_to_one=many_to_one)
    client = AccessPointClient(root)
    assert client.many_to_one is many_to_one
    job_dir = harvester_dir(root, 2001, many_to_one)
    assert client.job_dir(2001) == job_dir

    client.set_state(2001, "running", node="nid001", coreCount=8)
    assert json.loads((job_dir / "worker_attributes.json").read_text()) == {
        "jobStatus": "running", "node": "nid001", "coreCount": 8}
    client.write_job_report(2001, {"exitCode": 0})
    assert json.loads((job_dir / "jobReport.json").read_text()) == {"exitCode": 0}
    entry = client.file_declaration(write_output(client, 2001, "out.root", b"payload output"))
    assert client.declare_files(2001, [entry]) is True
    assert json.loads((job_dir / DUMP).read_text()) == {"2001": [entry]}
    client.heartbeat()
    client.request_kill("gave up")
    assert (root / "worker_heartbeat.json").is_file()
    assert json.loads((root / "kill_worker.json").read_text())["reason"] == "gave up"
    assert [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)] == []


@pytest.mark.parametrize("root", ["", "/ap\0x"])
def test_an_empty_access_point_is_refused_not_taken_for_the_current_directory(tmp_path, monkeypatch, root):
    monkeypatch.chdir(write_access_point(tmp_path / "ap", definitions(1001)))
    with pytest.raises(ValueError, match="is not a path"):
        AccessPointClient(root)


def test_the_file_names_setting_is_part_of_the_api():
    """What the constructor takes is named by the API (the rest of hpcpilot is internal and may change)."""
    import hpcpilot.api.communication as communication
    assert "HarvesterFiles" in communication.__all__


def test_configured_file_names_are_used(tmp_path):
    files = HarvesterFiles(job_spec="pandaJobData.out", worker_attributes="attrs.json", event_status="dump.json")
    root = write_access_point(tmp_path / "ap", definitions(1001), files=files)
    client = AccessPointClient(root, files)
    client.set_state(1001, "starting")
    client.declare_files(1001, [{"eventRangeID": "1-2-3-4-5", "eventStatus": "failed"}])
    assert json.loads((root / "1001" / "attrs.json").read_text()) == {"jobStatus": "starting"}
    assert (root / "1001" / "dump.json").is_file()
    assert not (root / "1001" / "worker_attributes.json").exists()


def test_unusable_file_names_are_refused_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match="files.event_status"):
        AccessPointClient(tmp_path, HarvesterFiles(event_status="../dump.json"))


# -- worker_attributes.json ------------------------------------------------------------------------------------


def test_a_final_state_carries_what_the_passing_one_said(client):
    """Harvester reads on its own cycle and may never see "running": its node and start time must reach it."""
    client.set_state(1001, "running", node="nid001", startTime="2026-01-01 00:00:00", pilotErrorCode=0)
    client.set_state(1002, "running", node="nid002")
    client.set_state(1001, "failed", pilotErrorCode=1305, endTime="2026-01-01 01:00:00")
    attributes = json.loads((client.root / "1001" / "worker_attributes.json").read_text())
    assert attributes == {"jobStatus": "failed", "node": "nid001", "startTime": "2026-01-01 00:00:00",
                          "pilotErrorCode": 1305, "endTime": "2026-01-01 01:00:00"}


def test_an_unknown_status_is_refused_naming_the_four(client):
    with pytest.raises(ValueError, match="starting, running, finished, failed"):
        client.set_state(1001, "done")
    assert not (client.root / "1001" / "worker_attributes.json").exists()


@pytest.mark.parametrize("value", [{1, 2}, {"nested": 1}, [1, 2], b"bytes", float("nan")])
def test_an_attribute_that_is_no_flat_json_value_is_refused_before_anything_is_written(client, value):
    client.set_state(1001, "running")
    attributes = client.root / "1001" / "worker_attributes.json"
    before = attributes.read_bytes()
    with pytest.raises((TypeError, ValueError), match="attribute maxRSS"):
        client.set_state(1001, "failed", pilotErrorCode=1008, maxRSS=value)
    assert attributes.read_bytes() == before


def test_the_status_is_not_given_twice(client):
    with pytest.raises(ValueError, match="'status' argument"):
        client.set_state(1001, "running", jobStatus="finished")


@pytest.mark.parametrize("name", ["xml", "metaData"])
def test_attributes_harvester_takes_for_something_else_are_refused(client, name):
    """Harvester's JobSpec.set_attributes takes 'xml' as the output file report it sends PanDA in place of the
    declared files, and 'metaData' as the job report: neither is a job attribute (Pilot 3 drops 'xml')."""
    with pytest.raises(ValueError, match=f"attribute {name}"):
        client.set_state(1001, "finished", **{name: "<POOLFILECATALOG/>"})
    assert not (client.root / "1001" / "worker_attributes.json").exists()


def test_a_job_report_that_is_no_json_is_refused(client):
    with pytest.raises(TypeError, match="job report of job 1001"):
        client.write_job_report(1001, {"files": {Path("a")}})
    assert not (client.root / "1001" / "jobReport.json").exists()


def test_a_pandaid_not_in_the_access_point_is_refused_naming_its_jobs(client):
    """Harvester reads only its jobs' files: whatever is written for another PandaID is lost."""
    for write in (lambda: client.set_state(9999, "running"), lambda: client.write_job_report(9999, {}),
                  lambda: client.declare_files(9999, []), lambda: client.event_ranges(9999)):
        with pytest.raises(ValueError, match=r"PandaID 9999 .* \(its jobs: 1001, 1002\)"):
            write()
    assert not (client.root / "9999").exists()


def test_an_invalid_job_can_be_declared_failed_even_without_its_directory(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(1001, 1002))
    for name in ("HPCJobs.json", "PoolFileCatalog_H.xml"):
        (root / "1002" / name).unlink()
    (root / "1002").rmdir()
    client = AccessPointClient(root)
    (invalid,) = [job for job in client.jobs() if isinstance(job, InvalidJob)]
    client.set_state(invalid.pandaid, "failed", pilotErrorCode=int(invalid.code), pilotErrorDiag=invalid.diag)
    assert json.loads((root / "1002" / "worker_attributes.json").read_text())["jobStatus"] == "failed"


# -- event_status.dump.json --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["output", "log"])
def test_a_file_declaration_carries_what_harvester_would_otherwise_read_the_file_for(client, kind):
    data = b"x" * 100_000
    path = write_output(client, 1001, "out.root", data)
    entry = client.file_declaration(path, kind, guid="g-1")
    assert entry == {"type": kind, "path": str(path), "fsize": len(data),
                     "chksum": f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", "guid": "g-1"}
    assert client.file_declaration(path)["guid"]  # one is made when not given


def test_a_job_report_is_written_with_large_log_excerpts_blanked_as_the_pilot_does(client):
    """Harvester stores the report in a database: megabytes of an executor's logfileReport are blanked."""
    report = {"exitCode": 0, "executor": [{"name": "EVNTtoHITS", "logfileReport": {"details": "x" * 20_000}},
                                          {"name": "small", "logfileReport": {"countSummary": {"ERROR": 0}}}]}
    client.write_job_report(1001, report)
    written = json.loads((client.job_dir(1001) / "jobReport.json").read_text())
    assert written["executor"] == [{"name": "EVNTtoHITS", "logfileReport": {}},
                                   {"name": "small", "logfileReport": {"countSummary": {"ERROR": 0}}}]
    assert len(report["executor"][0]["logfileReport"]["details"]) == 20_000  # the caller's own is left alone


def test_a_file_just_staged_out_is_declared_from_its_transfer_without_reading_it_again(client, tmp_path):
    local = tmp_path / "local.root"
    local.write_bytes(b"y" * 70_000)
    (result,) = stage_out([Transfer(local, client.job_dir(1001) / "out.root")])
    with open(result.transfer.destination, "ab") as grown:  # read again, it would declare 70,001 bytes
        grown.write(b"!")
    entry = client.transferred_declaration(result, guid="g-2")
    assert entry == {"type": "output", "path": str(client.job_dir(1001) / "out.root"), "fsize": 70_000,
                     "chksum": f"{zlib.adler32(local.read_bytes()) & 0xFFFFFFFF:08x}", "guid": "g-2"}
    (failed,) = stage_out([Transfer(tmp_path / "missing.root", client.job_dir(1001) / "none.root")])
    with pytest.raises(ValueError, match="nothing to declare"):
        client.transferred_declaration(failed)


def test_a_file_declaration_refuses_other_kinds_missing_files_and_files_outside(client, tmp_path):
    path = write_output(client, 1001, "out.root", b"data")
    with pytest.raises(ValueError, match="choose output or log"):
        client.file_declaration(path, "checkpoint")
    with pytest.raises(FileNotFoundError, match="no such regular file"):
        client.file_declaration(client.job_dir(1001) / "missing.root")
    outside = tmp_path / "scratch.root"
    outside.write_bytes(b"node-local")
    with pytest.raises(ValueError, match="outside the access point"):
        client.file_declaration(outside)
    (client.job_dir(1001) / "link.root").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the access point"):
        client.file_declaration(client.job_dir(1001) / "link.root")


def test_a_file_reached_by_a_path_that_is_not_utf8_is_never_declared_in_that_form(tmp_path):
    """A wrapper that takes the access point by a link of odd name (its $ACCESS_POINT) gives paths with the
    link's byte, a lone surrogate in JSON that Harvester's database cannot store: the output would never be
    staged out. Refused, saying why; by the client's own root the same file is declared."""
    client = AccessPointClient(write_access_point(tmp_path / "ap", definitions(1001)))
    link = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"link \xff")))
    link.symlink_to(client.root)
    write_output(client, 1001, "out.root", b"data")
    odd = link / "1001" / "out.root"
    with pytest.raises(ValueError, match="is not UTF-8"):
        client.file_declaration(odd)
    with pytest.raises(ValueError, match="is not UTF-8"):
        client.declare_files(1001, [{"type": "output", "path": str(odd)}])
    assert not (client.job_dir(1001) / DUMP).exists()
    declared = client.file_declaration(client.job_dir(1001) / "out.root")
    assert declared["path"] == str(tmp_path / "ap" / "1001" / "out.root")


@pytest.mark.parametrize("name", ["HPCJobs.json", "worker_attributes.json", "PoolFileCatalog_H.xml",
                                  ".hpcpilot-pending.json"])
def test_a_file_harvester_or_the_pilot_keeps_is_never_declared_for_staging_out(client, name):
    """The job spec, secrets and all, would otherwise go to storage as an output: refused by name, by a link to
    it, and as an entry."""
    job_dir = client.job_dir(1001)
    (job_dir / name).write_text("{}")
    (job_dir / "out.root").symlink_to(job_dir / name)
    for path in (job_dir / name, job_dir / "out.root", job_dir / "sub" / ".." / name):
        with pytest.raises(ValueError, match="keeps for itself"):
            client.file_declaration(path)
    with pytest.raises(ValueError, match="keeps for itself"):
        client.declare_files(1001, [{"type": "output", "path": str(job_dir / name)}])
    assert not (job_dir / DUMP).exists()


@pytest.mark.parametrize("entry, problem", [
    ({"filetype": "output", "path": "/ap/1001/x"}, "Harvester reads the key 'type'"),
    ({"type": "input", "path": "{job_dir}/x"}, "'type' 'input': choose one of output, log"),
    ({"type": "output", "path": "x"}, "absolute path"),
    ({"type": "output", "path": "/elsewhere/x"}, "outside the access point"),
    ({"type": "output", "path": "{job_dir}/x", "chksum": "ad:0a1b2c3d"}, "without 'ad:'"),
    ({"type": "output", "path": "{job_dir}/x", "fsize": "12"}, "'fsize'"),
    ({"type": "es_output", "path": "{job_dir}/x"}, "needs 'eventRangeID' and 'eventStatus'"),
    ({"eventRangeID": "1-2-3-4-5"}, "needs 'eventStatus'"),
    ({"type": "output", "path": "{job_dir}/x", "guid": {1}}, "not JSON-serialisable"),
    ("output", "must be a dict"),
])
def test_a_bad_entry_is_refused_and_nothing_is_declared(client, entry, problem):
    if isinstance(entry, dict) and "path" in entry:
        entry = {**entry, "path": entry["path"].format(job_dir=client.job_dir(1001))}
    good = {"eventRangeID": "1-2-3-4-5", "eventStatus": "finished"}
    with pytest.raises((ValueError, TypeError), match=problem) as error:
        client.declare_files(1001, [good, entry])
    assert "entry 1" in str(error.value)
    assert not (client.job_dir(1001) / DUMP).exists()
    assert client.waiting == set()


def test_entries_go_out_at_once_even_while_harvester_has_not_taken_the_dump_and_each_is_read_once(client):
    """Plays Harvester: a dump it has not renamed yet is never written to; it is taken back and its entries
    go out again with the new ones."""
    job_dir = client.job_dir(1001)
    first = [client.file_declaration(write_output(client, 1001, "a.root", b"a"))]
    second = [client.file_declaration(write_output(client, 1001, "b.root", b"b")),
              *client.ranges_failed(["7-1-1-1-1"])]
    third = [client.file_declaration(write_output(client, 1001, "log.tgz", b"log"), "log")]

    assert client.declare_files(1001, first) is True
    assert client.declare_files(1001, second) is True  # Harvester has not taken the first dump
    read = harvester_takes(job_dir)
    assert client.declare_files(1001, third) is True
    read += harvester_takes(job_dir)
    assert harvester_takes(job_dir) is None
    assert client.flush() == 0 and client.waiting == set()
    assert read == [*first, *second, *third]


def test_a_dump_not_the_clients_holds_entries_back_until_harvester_takes_it(client):
    foreign = client.job_dir(1001) / DUMP
    foreign.write_text("not JSON")
    entry = {"eventRangeID": "1-2-3-4-5", "eventStatus": "failed"}
    assert client.declare_files(1001, [entry]) is False
    assert client.flush() == 1 and client.waiting == {1001}
    foreign.rename(foreign.with_name(DUMP + ".read.1"))  # Harvester took it (and could not load it)
    assert client.flush() == 0
    assert harvester_takes(client.job_dir(1001)) == [entry]


def test_a_restarted_client_publishes_what_the_earlier_one_left_waiting(client):
    """A wrapper that dies while its entries wait behind a dump it cannot add to, then starts again: nothing
    is lost or declared twice."""
    foreign = client.job_dir(1001) / DUMP
    foreign.write_text("not JSON")
    waiting = [{"eventRangeID": "1-2-3-4-6", "eventStatus": "failed"}]
    assert client.declare_files(1001, waiting) is False
    restarted = AccessPointClient(client.root)
    later = [{"eventRangeID": "1-2-3-4-7", "eventStatus": "failed"}]
    assert restarted.declare_files(1001, later) is False
    foreign.rename(foreign.with_name(DUMP + ".read.1"))
    assert restarted.flush() == 0
    assert harvester_takes(client.job_dir(1001)) == [*waiting, *later]


def test_flush_on_an_access_point_without_jobs_sends_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert AccessPointClient(tmp_path / "empty").flush() == 0


def test_flush_says_when_the_job_definitions_cannot_be_read(client):
    """A restarted client's first call is flush, while the worker's list of jobs cannot be read (here
    half-written): it returned 0, "all declared", the earlier client's entries unsent. It raises, with 77,
    and a later flush sends them."""
    foreign = client.job_dir(1001) / DUMP
    foreign.write_text("not JSON")
    waiting = [{"eventRangeID": "1-2-3-4-8", "eventStatus": "failed"}]
    assert client.declare_files(1001, waiting) is False
    foreign.rename(foreign.with_name(DUMP + ".read.1"))  # Harvester took it
    pandaids = client.root / "worker_pandaids.json"
    listed = pandaids.read_text()
    pandaids.write_text(listed[:-3])
    restarted = AccessPointClient(client.root)
    with pytest.raises(WorkerError) as raised:
        restarted.flush()
    assert raised.value.exit_code == ExitCode.MISSING_INPUT and "worker_pandaids.json" in str(raised.value)
    pandaids.write_text(listed)
    assert restarted.flush() == 0
    assert harvester_takes(client.job_dir(1001)) == waiting


FLUSH_WITHOUT_THREADS = """
import sys
from hpcpilot.api.communication import AccessPointClient, WorkerError
client = AccessPointClient(sys.argv[1])
no_thread_from_here()
try:
    print("flushed", client.flush())
except WorkerError as error:
    print("WorkerError", int(error.exit_code), error)
"""


@pytest.mark.timeout(60)
def test_flush_that_can_start_no_thread_to_read_the_jobs_says_so(tmp_path):
    """The job definitions are read by threads: none to be had (the user's processes at ulimit -u) was taken
    for "no jobs" (0) by flush; it is a WorkerError with 64, naming the cause."""
    root = write_access_point(tmp_path / "ap", definitions(1001, 1002))
    child = run_without_threads(FLUSH_WITHOUT_THREADS, str(root))
    assert child.stdout.startswith("WorkerError 64 cannot start the threads that read the job definitions"), \
        child.stdout + child.stderr[-2000:]


@pytest.mark.timeout(60)
def test_threads_sharing_a_client_lose_no_declaration_and_no_attribute(client):
    """Each declaration adds to the entries waiting for Harvester, and each set_state to the attributes given
    before: done by threads at once, without a lock, most of them were lost."""
    threads, per_thread = 8, 25

    def work(thread: int) -> None:
        for index in range(per_thread):
            client.declare_files(1001, client.ranges_failed([f"7-1-1-{thread}-{index}"]))
            client.set_state(1001, "running", **{f"step{thread}_{index}": index})

    workers = [threading.Thread(target=work, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    read = harvester_takes(client.job_dir(1001))
    assert client.flush() == 0 and harvester_takes(client.job_dir(1001)) is None
    declared = [entry["eventRangeID"] for entry in read]
    assert sorted(declared) == sorted(f"7-1-1-{t}-{i}" for t in range(threads) for i in range(per_thread))
    attributes = json.loads((client.job_dir(1001) / "worker_attributes.json").read_text())
    assert len(attributes) == 1 + threads * per_thread


def test_one_range_id_not_in_a_list_is_a_type_error_not_one_failed_range_per_character(client):
    with pytest.raises(TypeError, match="give a list of range IDs"):
        client.ranges_failed("7-1-1-1-1")


def test_a_finished_event_range_is_an_es_output_entry(client):
    path = write_output(client, 1001, "ev.root", b"events")
    entry = client.range_finished("7-1-1-1-10", path)
    assert entry["type"] == "es_output" and entry["eventStatus"] == "finished" and entry["path"] == str(path)
    assert client.declare_files(1001, [entry]) is True


# -- event service files -----------------------------------------------------------------------------------------


def test_event_ranges_are_asked_for_with_the_job_s_ids_and_read_from_harvester_s_answer(tmp_path):
    root = write_access_point(tmp_path / "ap", definitions(4711, taskID="123", jobsetID="77"), many_to_one=False)
    client = AccessPointClient(root)
    assert client.event_ranges(4711) is None
    assert client.request_event_ranges(4711, 2) is True
    assert json.loads((root / "worker_requestevents.json").read_text()) == {
        "4711": {"nRanges": 2, "taskID": 123, "jobsetID": 77}}
    assert client.request_event_ranges(4711, 2) is False  # not served yet: the request stays as it is

    answer = [{"eventRangeID": "4711-123-1-1-1", "startEvent": 1, "lastEvent": 10, "LFN": "EVNT.1",
               "GUID": "g", "scope": "mc"}]
    (root / "JobsEventRanges.json").write_text(json.dumps({"4711": answer})[:-5])  # Harvester writes in place
    assert client.event_ranges(4711) is None
    (root / "JobsEventRanges.json").write_text(json.dumps({"4711": answer}))
    (root / "worker_requestevents.json").unlink()  # Harvester deletes the request it served
    assert client.event_ranges(4711) == [EventRange.from_dict(answer[0])]
    (root / "JobsEventRanges.json").write_text(json.dumps({"4711": []}))
    assert client.event_ranges(4711) == []


def test_event_ranges_of_a_job_with_an_invalid_definition_need_explicit_ids(tmp_path):
    jobs = definitions(4711)
    jobs[4711]["coreCount"] = "many"
    client = AccessPointClient(write_access_point(tmp_path / "ap", jobs, many_to_one=False))
    with pytest.raises(ValueError, match="needs task_id and jobset_id"):
        client.request_event_ranges(4711, 2)
    assert client.request_event_ranges(4711, 2, task_id=1, jobset_id=2) is True


@pytest.mark.parametrize("count", ["5", 2.0, True])
def test_a_number_of_ranges_that_is_not_an_int_is_refused_with_what_to_give(tmp_path, count):
    root = write_access_point(tmp_path / "ap", definitions(4711, taskID="123", jobsetID="77"), many_to_one=False)
    with pytest.raises(TypeError, match="give the number of ranges, an int"):
        AccessPointClient(root).request_event_ranges(4711, count)
    assert not (root / "worker_requestevents.json").exists()
