"""Event service end to end under mpiexec: ranks share one job's ranges; every range is declared once."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest
from fake_harvester import FakeHarvester

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.eventservice.reference_payload import HEADER, event_summary
from tests.conftest import mounts_below
from tests.e2e.conftest import communicate_or_kill, run_pilot
from tests.harvester_reader import acknowledge, take_declarations
from tests.multirank.test_hung_filesystem import NO_ANSWER
from tests.multirank.test_stagein_timeout import COPY_LIMITS

PANDAID = 7001
DUMP = "event_status.dump.json"
FAST = {"HPCPILOT_EVENT_WAIT_TIMEOUT": "20", "HPCPILOT_LIMITS__KILL_GRACE": "1"}


def ranges(count: int, size: int = 5) -> list[dict]:
    return [{"eventRangeID": f"99-7-{PANDAID}-{i}-1", "startEvent": i * size + 1, "lastEvent": (i + 1) * size,
             "LFN": "EVNT.01.pool.root", "GUID": "guid-01", "scope": "mc"} for i in range(count)]


def es_worker(tmp_path: Path, payload_args: str = "", preplaced: list[dict] | None = None, **fields) -> Path:
    definition = job_definition(PANDAID, sys.executable, f"-m hpcpilot.eventservice.reference_payload {payload_args}",
                                eventService="True", **fields)
    ap = write_access_point(tmp_path / "ap", {PANDAID: definition}, many_to_one=False)
    if preplaced is not None:
        (ap / "JobsEventRanges.json").write_text(json.dumps({str(PANDAID): preplaced}))
    return ap


class DumpConsumer(threading.Thread):
    """Harvester's other half: takes each dump as its messenger does (rename to .read, read every entry as
    it would, rename to .read.<time>) and keeps the entries; one Harvester would drop fails the test."""

    def __init__(self, ap: Path, interval: float = 0.1):
        super().__init__(daemon=True)
        self.ap, self.entries, self.errors, self.count = ap, [], [], 0
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.take()

    def take(self) -> None:
        taken = take_declarations(self.ap, DUMP)
        if taken is not None:
            self.count += 1
            assert set(taken.files) | set(taken.events) <= {PANDAID}
            self.entries += taken.raw
            self.errors += taken.errors
            acknowledge(self.ap, DUMP)

    def finish(self) -> list[dict]:
        self.stopped.set()
        self.join()
        self.take()
        assert self.errors == [], self.errors
        return self.entries


def expected_output(event_range: dict) -> bytes:
    lines = [event_summary(n) for n in range(event_range["startEvent"], event_range["lastEvent"] + 1)]
    return (HEADER + "".join(lines)).encode()


def es_worker_running(tmp_path: Path, payload_source: str, preplaced: list[dict]) -> Path:
    """An event service worker whose payload is the Python script ``payload_source``."""
    script = tmp_path / "payload.py"
    script.write_text(payload_source)
    ap = es_worker(tmp_path, preplaced=preplaced)
    definition = json.loads((ap / "HPCJobs.json").read_text())
    definition[str(PANDAID)].update(jobPars=str(script))
    (ap / "HPCJobs.json").write_text(json.dumps(definition))
    return ap


def range_entries(entries: list[dict]) -> dict[str, list[dict]]:
    by_range: dict[str, list[dict]] = {}
    for entry in entries:
        if "eventRangeID" in entry:
            by_range.setdefault(entry["eventRangeID"], []).append(entry)
    return by_range


def assert_finished_output(entry: dict, event_range: dict) -> None:
    data = Path(entry["path"]).read_bytes()
    assert entry["type"] == "es_output" and entry["eventStatus"] == "finished"
    assert (entry["fsize"], entry["chksum"]) == (len(data), f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")
    assert data == expected_output(event_range)


def assert_every_range_finished(entries: list[dict], all_ranges: list[dict]) -> None:
    """Each range declared once, finished, with its right output."""
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    for event_range in all_ranges:
        (entry,) = by_range[event_range["eventRangeID"]]
        assert_finished_output(entry, event_range)


def run_es(ap: Path, launch: str, serving: list[dict], env: dict | None = None, options: tuple[str, ...] = ()):
    with FakeHarvester(ap, serving, interval=0.05):
        consumer = DumpConsumer(ap)
        consumer.start()
        run = run_pilot(ap, launch, *options, env={**FAST, **(env or {})})
        return run, consumer.finish()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("launch", ["mpi2", "mpi4"])
def test_every_range_is_declared_once_with_its_output(tmp_path: Path, launch: str) -> None:
    all_ranges = ranges(60)
    ap = es_worker(tmp_path, preplaced=all_ranges)
    run, entries = run_es(ap, launch, serving=[])
    assert run.returncode == 0, run.stderr[-3000:]
    assert_every_range_finished(entries, all_ranges)
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["nEvents"], attributes["nEventRangesFinished"]) == ("finished", 300, 60)
    assert "nEvents=300" in attributes["jobMetrics"].split()  # PanDA's metrics carry the events too
    assert [e["type"] for e in entries if "eventRangeID" not in e] == ["log"]
    ranks = {line.split("[")[1].split("@")[0] for line in run.stderr.splitlines() if "payload: " in line}
    assert len(ranks) == int(launch[-1]), "every rank runs a payload"


@pytest.mark.timeout(180)
def test_a_harvester_that_takes_no_dump_during_the_run_finds_every_range_in_the_last_one(tmp_path: Path) -> None:
    """Harvester takes a dump once per monitor cycle (minutes, longer than this run): the declarations made
    after its first dump must not stay in the pilot's journal when it ends, or PanDA would process the
    ranges again."""
    all_ranges = ranges(30)
    ap = es_worker(tmp_path, preplaced=all_ranges)
    with FakeHarvester(ap, [], interval=0.05):
        run = run_pilot(ap, "mpi2", env=FAST)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (ap / ".hpcpilot-pending.json").exists() and "staged" not in run.stderr
    taken = take_declarations(ap, DUMP)
    assert taken is not None and taken.errors == []
    by_range = range_entries(taken.raw)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    for event_range in all_ranges:
        (entry,) = by_range[event_range["eventRangeID"]]
        assert_finished_output(entry, event_range)
    assert [e["type"] for e in taken.raw if "eventRangeID" not in e] == ["log"]


@pytest.mark.timeout(180)
def test_ranges_arrive_through_the_request_files_while_the_worker_runs(tmp_path: Path) -> None:
    all_ranges = ranges(40)
    ap = es_worker(tmp_path)
    with FakeHarvester(ap, all_ranges, interval=0.05, write_pause=0.01) as harvester:
        consumer = DumpConsumer(ap)
        consumer.start()
        run = run_pilot(ap, "mpi2", env=FAST)
        entries = consumer.finish()
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(harvester.requests) >= 2 and all(str(PANDAID) in r for r in harvester.requests)
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    assert all(len(found) == 1 and found[0]["eventStatus"] == "finished" for found in by_range.values())


@pytest.mark.timeout(180)
def test_a_range_the_payload_fails_is_declared_failed(tmp_path: Path) -> None:
    all_ranges = ranges(12)
    failing = all_ranges[3]["eventRangeID"]
    ap = es_worker(tmp_path, f"--fail-range {failing}", preplaced=all_ranges)
    run, entries = run_es(ap, "mpi2", serving=[])
    by_range = range_entries(entries)
    assert by_range[failing] == [{"eventRangeID": failing, "eventStatus": "failed"}]  # status only, as Harvester reads
    assert sum(e[0]["eventStatus"] == "finished" for e in by_range.values()) == 11
    assert "(1224: failed in the payload: ERR_" in run.stderr and failing in run.stderr, "code and reason logged"
    assert run.attributes(PANDAID)["jobStatus"] == "finished"
    assert run.attributes(PANDAID)["nEventRangesFailed"] == 1


@pytest.mark.timeout(180)
def test_a_payload_crash_fails_only_the_range_in_flight_and_the_payload_restarts(tmp_path: Path) -> None:
    all_ranges = ranges(24)
    ap = es_worker(tmp_path, "--crash-after 4", preplaced=all_ranges)
    run, entries = run_es(ap, "mpi2", serving=[], env={"HPCPILOT_PAYLOAD_RESTARTS": "20"})
    assert run.returncode == 0, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    assert all(len(found) == 1 for found in by_range.values()), "no range declared twice"
    failed = [rid for rid, found in by_range.items() if found[0]["eventStatus"] == "failed"]
    finished = len(by_range) - len(failed)
    assert failed and finished >= 4 * len(failed)  # one range lost per crash, four done before it
    assert "restart" in run.stderr
    assert run.attributes(PANDAID)["jobStatus"] == "finished"


SABOTAGING_PAYLOAD = """
import os, sys
scratch, decoy = os.environ["HPCPILOT_SCRATCH"], sys.argv[2]
if not os.path.exists("sabotaged"):
    open("sabotaged", "w").close()
    os.remove("payload.stdout")
    if sys.argv[1] == "fifo":
        os.mkfifo("payload.stdout")
    elif sys.argv[1] == "symlink":
        os.symlink(os.path.join(decoy, "payload.stdout"), "payload.stdout")
    else:
        os.rename(scratch, scratch + ".moved")
        os.symlink(decoy, scratch)
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "hpcpilot.eventservice.reference_payload"])
"""


def _sabotaging_worker(tmp_path: Path, sabotage: str, decoy: Path, all_ranges: list[dict]) -> Path:
    """An event service job whose payload, the first time, leaves ``sabotage`` for its restart and crashes."""
    decoy.mkdir()
    (decoy / "payload.stdout").write_text("not the payload's")
    ap = es_worker_running(tmp_path, SABOTAGING_PAYLOAD, all_ranges)
    definition = json.loads((ap / "HPCJobs.json").read_text())
    definition[str(PANDAID)]["jobPars"] += f" {sabotage} {decoy}"
    (ap / "HPCJobs.json").write_text(json.dumps(definition))
    return ap


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sabotage", ["fifo", "symlink"])
def test_a_payload_restarted_after_its_predecessor_left_a_trap_as_its_stdout_runs_as_any(tmp_path: Path,
                                                                                        sabotage: str) -> None:
    """The restarted payload's stdout was opened by name in the scratch its predecessor left: a FIFO there
    blocked the rank for ever (SIGTERM too), a symlink had the pilot empty and write the file it leads to."""
    all_ranges, decoy = ranges(6), tmp_path / "elsewhere"
    run, entries = run_es(_sabotaging_worker(tmp_path, sabotage, decoy, all_ranges), "mpi2", serving=[],
                          env={"HPCPILOT_PAYLOAD_RESTARTS": "3"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(PANDAID)["jobStatus"] == "finished"
    by_range = range_entries(entries)
    for event_range in all_ranges:
        (entry,) = by_range[event_range["eventRangeID"]]
        assert_finished_output(entry, event_range)
    assert [path.name for path in decoy.iterdir()] == ["payload.stdout"]
    assert (decoy / "payload.stdout").read_text() == "not the payload's"


@pytest.mark.timeout(180)
def test_a_payload_that_swapped_its_scratch_for_a_symlink_is_not_restarted_there(tmp_path: Path) -> None:
    all_ranges, decoy = ranges(6), tmp_path / "elsewhere"
    run, entries = run_es(_sabotaging_worker(tmp_path, "scratch", decoy, all_ranges), "mpi2", serving=[],
                          env={"HPCPILOT_PAYLOAD_RESTARTS": "3"})
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1303), attributes
    assert "replaced" in attributes["pilotErrorDiag"]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    assert all(found == [{"eventRangeID": range_id, "eventStatus": "failed"}] for range_id, found in by_range.items())
    assert [path.name for path in decoy.iterdir()] == ["payload.stdout"]


@pytest.mark.timeout(180)
def test_a_payload_over_its_walltime_is_stopped_and_the_job_fails_without_restarts(tmp_path: Path) -> None:
    all_ranges = ranges(200)  # 0.2 s each on 2 ranks: 20 s of work against a 4 s limit
    ap = es_worker(tmp_path, "--work-ms 200", preplaced=all_ranges, maxWalltime=4)
    run, entries = run_es(ap, "mpi2", serving=[], env={"HPCPILOT_LIMITS__CHECK_INTERVAL": "0.5",
                                                        "HPCPILOT_PAYLOAD_RESTARTS": "5"})
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1213), run.stderr[-3000:]
    assert "walltime" in attributes["pilotErrorDiag"]
    assert "restart" not in run.stderr
    by_id = {r["eventRangeID"]: r for r in all_ranges}
    finished = [found[0] for found in range_entries(entries).values() if found[0]["eventStatus"] == "finished"]
    assert 0 < len(finished) < len(all_ranges)
    for entry in finished:
        assert_finished_output(entry, by_id[entry["eventRangeID"]])


@pytest.mark.timeout(180)
def test_a_stop_file_on_two_ranks_ends_the_job_failed_with_the_stop_code_and_every_range_declared(
        tmp_path: Path) -> None:
    """The ranges received and not run (queued on a rank, still at rank 0) are declared failed, not lost."""
    all_ranges = ranges(200)
    ap = es_worker(tmp_path, "--work-ms 200", preplaced=all_ranges)
    consumer, worker = start_declaring_worker(ap, stderr=subprocess.PIPE)
    (ap / "hpcpilot_stop").touch()
    _, stderr = communicate_or_kill(worker, 60, "the stopping pilot")
    entries = consumer.finish()
    assert worker.returncode == 143, stderr[-3000:]
    attributes = json.loads((ap / "worker_attributes.json").read_text())
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1201)
    by_id = {r["eventRangeID"]: r for r in all_ranges}
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(by_id), "every range received is declared"
    for found in by_range.values():
        assert len(found) == 1
        if found[0]["eventStatus"] == "finished":
            assert_finished_output(found[0], by_id[found[0]["eventRangeID"]])
    assert attributes["nEventRangesFinished"] + attributes["nEventRangesFailed"] == len(all_ranges)
    assert "(1201: " in stderr, "the unstarted ranges fail with the stop's code"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("harvester_cycle", [0.1, 2.0], ids=["harvester-quick", "harvester-slow"])
def test_sigkill_of_the_worker_keeps_what_was_declared_and_a_rerun_completes(tmp_path: Path,
                                                                            harvester_cycle: float) -> None:
    """Killed at a random moment; with a slow Harvester most declarations take its last dump back, so the
    kill often comes amid one."""
    all_ranges = ranges(80)
    ap = es_worker(tmp_path, "--work-ms 60", preplaced=all_ranges)
    consumer, worker = start_declaring_worker(ap, stderr=subprocess.DEVNULL, harvester_cycle=harvester_cycle)
    time.sleep(random.uniform(0.0, 1.5))  # then kill at a random moment of the run
    victims = [worker.pid, *(p.pid for p in psutil.Process(worker.pid).children(recursive=True))]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    worker.wait()
    time.sleep(0.3)
    taken_back = _entries_in(ap / ".hpcpilot-pending.json.taken")  # killed amid a take-back: the journal may
    staged = taken_back + [e for e in _entries_in(ap / ".hpcpilot-pending.json") if e not in taken_back]  # have them
    declared = range_entries(consumer.entries + _entries_in(ap / DUMP) + staged)
    assert declared, "nothing was declared before the kill"
    by_id = {r["eventRangeID"]: r for r in all_ranges}
    for range_id, found in declared.items():
        assert len(found) == 1
        assert_finished_output(found[0], by_id[range_id])
    with FakeHarvester(ap, [], interval=0.05):
        rerun = run_pilot(ap, "mpi2", env=FAST)
    entries = consumer.finish()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(by_id), "every range declared after the rerun"
    assert all(len(found) == 1 for found in by_range.values()), "no range declared twice"
    attributes = rerun.attributes(PANDAID)  # the job counts the events of both runs
    assert (attributes["jobStatus"], attributes["nEvents"], attributes["nEventRangesFinished"]) == ("finished", 400, 80)


@pytest.mark.timeout(180)
def test_a_rerun_after_every_range_was_declared_finishes_the_job_with_all_its_events(tmp_path: Path) -> None:
    """Killed after its last range was declared but before the job was: nothing is left to do, and the job
    is finished with the events of the first run (not failed for want of ranges)."""
    all_ranges = ranges(12)
    ap = es_worker(tmp_path, preplaced=all_ranges)
    first, entries = run_es(ap, "mpi2", serving=[])
    assert first.attributes(PANDAID)["jobStatus"] == "finished" and len(range_entries(entries)) == 12
    (ap / "worker_attributes.json").unlink()  # as if the kill came before the job's own declaration
    rerun, more = run_es(ap, "mpi2", serving=[])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert range_entries(more) == {}, "no range runs twice"
    attributes = rerun.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["nEvents"], attributes["nEventRangesFinished"]) == ("finished", 60, 12)


@pytest.mark.timeout(180)
def test_a_rerun_counts_the_ranges_the_first_run_failed(tmp_path: Path) -> None:
    all_ranges = ranges(12)
    failing = all_ranges[5]["eventRangeID"]
    ap = es_worker(tmp_path, f"--fail-range {failing}", preplaced=all_ranges)
    first, _ = run_es(ap, "mpi2", serving=[])
    assert first.attributes(PANDAID)["nEventRangesFailed"] == 1
    (ap / "worker_attributes.json").unlink()  # as if the kill came before the job's own declaration
    rerun, _ = run_es(ap, "mpi2", serving=[])
    attributes = rerun.attributes(PANDAID)
    assert (attributes["nEventRangesFinished"], attributes["nEventRangesFailed"]) == (11, 1), rerun.stderr[-3000:]


@pytest.mark.timeout(180)
def test_the_wait_timeout_counts_from_when_waiting_began_not_from_the_start_of_the_job(tmp_path: Path) -> None:
    """A job that runs longer than the timeout, and waits for Harvester less than it each time, gets every
    range."""
    all_ranges = ranges(40)  # 0.25 s each on 2 ranks, served 8 at a time, each answer 0.8 s after its request
    ap = es_worker(tmp_path, "--work-ms 250")
    with FakeHarvester(ap, all_ranges, interval=0.05, answer_delay=0.8):
        consumer = DumpConsumer(ap)
        consumer.start()
        run = run_pilot(ap, "mpi2", env={**FAST, "HPCPILOT_EVENT_WAIT_TIMEOUT": "4"})
        entries = consumer.finish()
    assert run.returncode == 0, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges), run.stderr[-3000:]
    assert all(found[0]["eventStatus"] == "finished" for found in by_range.values())


@pytest.mark.timeout(180)
def test_malformed_ranges_are_declared_failed_with_their_code_and_the_others_run_once(tmp_path: Path) -> None:
    good = ranges(6)
    inverted = {**good[0], "eventRangeID": "99-7-7001-bad-1", "lastEvent": 0}
    huge = {**good[0], "eventRangeID": "99-7-7001-huge-1", "lastEvent": "9" * 5000}
    answer = [good[0], inverted, *good[1:4], good[1], huge, good[4], {"no": "id"}, good[5]]
    ap = es_worker(tmp_path, preplaced=answer)
    run, entries = run_es(ap, "mpi2", serving=[])
    assert run.returncode == 0, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted([r["eventRangeID"] for r in good] + ["99-7-7001-bad-1", "99-7-7001-huge-1"])
    assert all(len(found) == 1 for found in by_range.values()), "no range declared twice"
    for bad in ("99-7-7001-bad-1", "99-7-7001-huge-1"):
        assert by_range[bad] == [{"eventRangeID": bad, "eventStatus": "failed"}]
        assert f"(1228: malformed event range: event range {bad}: " in run.stderr
    for event_range in good:
        assert_finished_output(by_range[event_range["eventRangeID"]][0], event_range)
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["nEventRangesFinished"], attributes["nEventRangesFailed"]) == \
        ("finished", 6, 2)


HOSTILE_PAYLOAD = """
import os, sys
from hpcpilot.eventservice.client import EventChannelClient
reported = sys.argv[1]
with EventChannelClient.from_environment() as client:
    client.request()
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            if not reported.startswith("/"):
                with open(reported, "w") as forged:
                    forged.write('{"7001": [{"type": "output", "path": "/etc/passwd"}]}')
            client.finished(os.path.abspath(reported), event_range.eventRangeID, 0.1, 0.1)
        client.request()
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("reported", ["/etc/passwd", "event_status.dump.json", "worker_attributes.json",
                                      "event_status.dump.json.read.2026-11-26_23_00_00"])
def test_a_range_output_outside_scratch_or_named_like_a_protocol_file_is_refused(tmp_path: Path,
                                                                                  reported: str) -> None:
    """The payload names each range's output: it is staged only from scratch, and never under a name of
    the files Harvester reads (which it would publish as the pilot's), nor of a dump Harvester took (which a
    rerun would read for the ranges declared, and skip those the payload names there)."""
    script = tmp_path / "hostile_payload.py"
    script.write_text(HOSTILE_PAYLOAD)
    all_ranges = ranges(4)
    ap = es_worker(tmp_path, preplaced=all_ranges)
    definition = json.loads((ap / "HPCJobs.json").read_text())
    definition[str(PANDAID)].update(jobPars=f"{script} {reported}")
    (ap / "HPCJobs.json").write_text(json.dumps(definition))
    run, entries = run_es(ap, "mpi2", serving=[])
    assert run.returncode == 0, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    assert all(found == [{"eventRangeID": range_id, "eventStatus": "failed"}] for range_id, found in by_range.items())
    assert not (ap / "passwd").exists() and "/etc/passwd" not in json.dumps(entries)
    assert run.attributes(PANDAID)["nEventRangesFailed"] == 4


@pytest.mark.timeout(180)
def test_a_directory_in_place_of_the_received_ranges_journal_fails_the_job_with_a_diagnostic(tmp_path: Path) -> None:
    all_ranges = ranges(4)
    ap = es_worker(tmp_path, preplaced=all_ranges)
    (ap / ".hpcpilot-ranges.jsonl").mkdir()
    run, entries = run_es(ap, "mpi2", serving=[])
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1303)
    assert "cannot keep the journal of received event ranges" in attributes["pilotErrorDiag"]
    assert ".hpcpilot-ranges.jsonl" in attributes["pilotErrorDiag"]


@pytest.mark.timeout(180)
def test_a_directory_in_place_of_the_pending_declarations_is_a_diagnostic_not_a_crash(tmp_path: Path) -> None:
    ap = es_worker(tmp_path, preplaced=ranges(4))
    (ap / ".hpcpilot-pending.json").mkdir()
    run, _ = run_es(ap, "mpi2", serving=[])
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr[-3000:]
    assert "cannot declare event ranges in" in run.stderr and ".hpcpilot-pending.json" in run.stderr
    attributes = run.attributes(PANDAID)  # declared all the same: failed, for PanDA to run again
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1303), attributes
    assert not (ap / DUMP).is_dir() and not list(ap.glob(DUMP + ".read*")), "no directory handed to Harvester"


UNDECLARABLE_AFTER_TWO_PAYLOAD = """
import glob, json, os, sys, time
from hpcpilot.eventservice.client import EventChannelClient
job_dir = sys.argv[1]

def declared():
    found = set()
    for path in glob.glob(os.path.join(job_dir, "event_status.dump.json*")):
        try:
            found.update(e["eventRangeID"] for e in json.load(open(path))["7001"] if "eventRangeID" in e)
        except (OSError, ValueError):  # taken by Harvester meanwhile
            continue
    return found

with EventChannelClient.from_environment() as client:
    client.request()
    reported = []
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            if len(reported) == 2:  # both declared: a directory then takes the place of the pilot's journal
                while not set(reported) <= declared():
                    time.sleep(0.05)
                os.mkdir(os.path.join(job_dir, ".hpcpilot-pending.json"))
            path = os.path.abspath(event_range.eventRangeID + ".out")
            open(path, "w").write("x")
            client.finished(path, event_range.eventRangeID, 0.1, 0.1)
            reported.append(event_range.eventRangeID)
        client.request()
"""


@pytest.mark.timeout(180)
def test_ranges_whose_declaration_failed_are_not_counted_finished(tmp_path: Path) -> None:
    """The payload finishes ranges after the pilot can no longer declare any: the job counts only the two
    ranges (and their events) that Harvester was told of, not those it never learns about."""
    ap = es_worker_running(tmp_path, UNDECLARABLE_AFTER_TWO_PAYLOAD, ranges(8))
    definition = json.loads((ap / "HPCJobs.json").read_text())
    definition[str(PANDAID)]["jobPars"] += f" {ap}"
    (ap / "HPCJobs.json").write_text(json.dumps(definition))
    run, entries = run_es(ap, "grid", serving=[])
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr[-3000:]
    assert "cannot declare event ranges in" in run.stderr
    by_range = range_entries(entries)
    assert len(by_range) == 2 and all(entry["eventStatus"] == "finished" for (entry,) in by_range.values())
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1303), attributes
    assert (attributes["nEventRangesFinished"], attributes["nEvents"], attributes["nEventRangesFailed"]) == \
        (2, 10, 0), attributes


SAME_NAME_PAYLOAD = """
import os
from hpcpilot.eventservice.client import EventChannelClient
with EventChannelClient.from_environment() as client:
    client.request()
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            os.makedirs(event_range.eventRangeID)
            path = os.path.join(event_range.eventRangeID, "out.root")
            with open(path, "w") as output:
                output.write(f"output of {event_range.eventRangeID}")
            client.finished(os.path.abspath(path), event_range.eventRangeID, 0.1, 0.1)
        client.request()
"""


@pytest.mark.timeout(180)
def test_range_outputs_of_the_same_name_are_staged_apart(tmp_path: Path) -> None:
    """Every range's output is ``<rangeID>/out.root``: each declared file still holds its own range's output."""
    all_ranges = ranges(8)
    ap = es_worker_running(tmp_path, SAME_NAME_PAYLOAD, all_ranges)
    run, entries = run_es(ap, "mpi2", serving=[])
    assert run.returncode == 0, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    for range_id, (entry,) in by_range.items():
        data = Path(entry["path"]).read_bytes()
        assert data == f"output of {range_id}".encode()
        assert (entry["fsize"], entry["chksum"]) == (len(data), f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")
        assert Path(entry["path"]).name == f"out.root.{range_id}"


ODD_PATHS_PAYLOAD = """
import os
from hpcpilot.eventservice.client import EventChannelClient
open("plain", "w").write("x")
with EventChannelClient.from_environment() as client:
    client.request()
    number = 0
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            range_id = event_range.eventRangeID
            odd = [os.path.abspath("plain/out"), os.path.abspath("x" * 300), None][number % 3]
            if odd is None:  # a name that begins with this range's ID and ends with the next one's
                name = range_id + "." + range_id.replace("-" + range_id.split("-")[3] + "-",
                                                         "-" + str(int(range_id.split("-")[3]) + 1) + "-")
                open(name, "w").write("output of " + range_id)
                odd = os.path.abspath(name)
            client.finished(odd, range_id, 0.1, 0.1)
            number += 1
        client.request()
"""


@pytest.mark.timeout(180)
def test_odd_output_paths_fail_their_range_not_the_worker(tmp_path: Path) -> None:
    """A path below a file or too long fails its range (the worker used to abort, exit 70, nothing declared);
    a name that could be two ranges' is staged as this range's alone."""
    all_ranges = ranges(6)
    ap = es_worker_running(tmp_path, ODD_PATHS_PAYLOAD, all_ranges)
    run, entries = run_es(ap, "grid", serving=[])
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    finished = {range_id: entry for range_id, (entry,) in by_range.items() if entry["eventStatus"] == "finished"}
    assert len(finished) == 2 and len(by_range) - len(finished) == 4
    for range_id, entry in finished.items():
        assert Path(entry["path"]).read_text() == f"output of {range_id}" and entry["path"].endswith("." + range_id)
    attributes = run.attributes(PANDAID)  # a range whose output could not be copied counts failed, not finished
    assert (attributes["nEventRangesFinished"], attributes["nEvents"], attributes["nEventRangesFailed"]) == \
        (2, 10, 4), attributes


ODD_SIZE_OUTPUT_PAYLOAD = """
import os
from hpcpilot.eventservice.client import EventChannelClient
from hpcpilot.staging import MAX_OUTPUT_BYTES
with EventChannelClient.from_environment() as client:
    client.request()
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            range_id = event_range.eventRangeID
            with open(range_id + ".out", "w") as output:
                if range_id.endswith("-0-1"):
                    output.truncate(%s)
                else:
                    output.write("output of " + range_id)
            client.finished(os.path.abspath(range_id + ".out"), range_id, 0.1, 0.1)
        client.request()
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("size, code", [("MAX_OUTPUT_BYTES + 1", 1124), ("0", 1350)], ids=["huge", "empty"])
def test_a_range_output_over_the_size_limit_or_empty_fails_its_range_before_any_byte_is_copied(
        tmp_path: Path, size: str, code: int) -> None:
    """As any job's output over 500 GB (1124; sparse here: no time, no space, in scratch): else the pilot spent
    hours writing it to the shared filesystem; or of zero size (1350): no result, which Harvester would stage
    out and PanDA count as the range's events done. The copy's time limit is cut to a second, so that without
    the size check a huge one ends at once (1152)."""
    all_ranges = ranges(4)
    ap = es_worker_running(tmp_path, ODD_SIZE_OUTPUT_PAYLOAD % size, all_ranges)
    run, entries = run_es(ap, "grid", serving=[], env={"HPCPILOT_LIMITS__TRANSFER_TIMEOUT_MAX": "1"})
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    odd = all_ranges[0]["eventRangeID"]
    by_range = range_entries(entries)
    assert by_range.pop(odd) == [{"eventRangeID": odd, "eventStatus": "failed"}]
    assert f"1 event range(s) failed ({code}: output {odd}.out.{odd} " in run.stderr, run.stderr[-3000:]
    assert all(entry["eventStatus"] == "finished" for (entry,) in by_range.values()) and len(by_range) == 3
    assert not list(ap.glob(f"{odd}.out*"))


SLOW_OUTPUT_PAYLOAD = """
import os, subprocess, sys
from hpcpilot.eventservice.client import EventChannelClient
os.mkdir("slow")  # the slow filesystem, seen from scratch: the pilot copies no output from outside it
subprocess.run(["mount", "--bind", sys.argv[1], "slow"], check=True)
with EventChannelClient.from_environment() as client:
    client.request()
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            range_id = event_range.eventRangeID
            path = os.path.abspath(range_id + ".out")
            if range_id.endswith("-0-1"):
                path = os.path.abspath("slow/big.root")
            else:
                open(path, "w").write("output of " + range_id)
            client.finished(path, range_id, 0.1, 0.1)
        client.request()
"""


def run_with_a_slow_output(tmp_path: Path, slow_file, launch: str, env: dict, during=lambda ap: None,
                           delay: float = 0.05, payload: str = SLOW_OUTPUT_PAYLOAD):
    """The first of 6 ranges has a 1 GiB output on the slow filesystem (minutes to copy at ``delay`` s per read),
    the others small ones; ``during(ap)`` runs on a thread of its own while the pilot runs. Returns the run,
    Harvester's entries, the slow range's ID."""
    if os.geteuid() != 0:
        pytest.skip("the payload bind-mounts the slow filesystem into its scratch: needs root")
    slow = slow_file(1 << 30, delay=delay)
    all_ranges = ranges(6)
    ap = es_worker_running(tmp_path, payload, all_ranges)
    definition = json.loads((ap / "HPCJobs.json").read_text())
    definition[str(PANDAID)]["jobPars"] += f" {slow.parent}"
    (ap / "HPCJobs.json").write_text(json.dumps(definition))
    scratch = tmp_path / "scratch"
    side = threading.Thread(target=during, args=(ap,), daemon=True)
    side.start()
    try:
        run, entries = run_es(ap, launch, serving=[], env=env, options=("--scratch", str(scratch)))
    finally:
        for mountpoint in mounts_below(scratch):  # the payload's bind mount
            subprocess.run(["umount", "-l", mountpoint], check=False)
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges), run.stderr[-3000:]
    assert all(len(found) == 1 for found in by_range.values()), "no range declared twice"
    return run, by_range, all_ranges[0]["eventRangeID"]


RANK_0_COPIES_LAST_PAYLOAD = """
import os, subprocess, sys, time
from hpcpilot.eventservice.client import EventChannelClient
rank_0 = os.environ["HPCPILOT_RANK"] == "0"
os.mkdir("slow")  # the slow filesystem, seen from scratch
subprocess.run(["mount", "--bind", sys.argv[1], "slow"], check=True)
with EventChannelClient.from_environment() as client:
    client.request()
    slow_one = rank_0
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            range_id = event_range.eventRangeID
            path = os.path.abspath("slow/big.root" if slow_one else range_id + ".out")
            if slow_one:
                time.sleep(1)  # rank 0 has answered every request of rank 1 by then
            else:
                open(path, "w").write("output of " + range_id)
            slow_one = False
            client.finished(path, range_id, 0.1, 0.1)
        client.request()
if not rank_0:
    time.sleep(1.5)  # rank 1 is done while rank 0 copies the slow output
"""


@pytest.mark.timeout(240)
def test_ranks_waiting_for_a_slow_fsync_of_the_access_point_are_not_taken_for_silent(tmp_path: Path,
                                                                                    slow_sync_dir) -> None:
    """Every fsync on the access point's filesystem (a shared filesystem under load) takes 2 s, twice the
    rank_silence_limit: rank 0 declaring ranges (the dump's journal) and asking Harvester for more, and every
    rank staging a range's output, said nothing to its peers meanwhile, and the peer took it for dead (exit 64)."""
    all_ranges = ranges(6)
    ap = es_worker(slow_sync_dir(2.0), preplaced=all_ranges[:4])
    run, entries = run_es(ap, "mpi2", serving=all_ranges[4:], env={"HPCPILOT_RANK_SILENCE_LIMIT": "1"})
    assert run.returncode == 0 and "not heard from" not in run.stderr, run.stderr[-3000:]
    assert_every_range_finished(entries, all_ranges)
    assert run.attributes(PANDAID)["jobStatus"] == "finished"


@pytest.mark.timeout(120)
def test_rank_0_declaring_event_jobs_a_stop_keeps_from_starting_on_a_slow_filesystem_is_not_taken_for_silent(
        tmp_path: Path, slow_sync_dir) -> None:
    """A stop file there at start: rank 0 declares the job failed, not started (a job report and a final state,
    each fsynced for 2 s), while rank 1 waits for it, and rank 1 took the silent rank 0 for dead (exit 64)."""
    ap = es_worker(slow_sync_dir(2.0), preplaced=ranges(2))
    (ap / "hpcpilot_stop").touch()
    run = run_pilot(ap, "mpi2", env={**FAST, "HPCPILOT_RANK_SILENCE_LIMIT": "1"})
    assert run.returncode == 143 and "not heard from" not in run.stderr, run.stderr[-3000:]
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1201), attributes


@pytest.mark.timeout(120)
def test_a_declaration_the_filesystem_never_ends_aborts_every_rank_with_64(tmp_path: Path, slow_sync_dir) -> None:
    """Saying it is alive while it waits for an fsync, a rank must still give up on one that does not end (a hung
    filesystem; here 60 s each, against a 2 s limit for one file's copy): it aborts every rank, as its silence
    made its peers do, rather than hold the allocation with a fresh heartbeat (the run would overrun 100 s)."""
    ap = es_worker(slow_sync_dir(60.0), preplaced=ranges(2))
    run = run_pilot(ap, "mpi2", env={**FAST, "HPCPILOT_RANK_SILENCE_LIMIT": "1",
                                     "HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE": "2"}, timeout=100)
    assert run.returncode == 64, run.stderr[-3000:]
    assert any("[0@" in line and "has not ended after 2 s: its filesystem hangs" in line
               for line in run.stderr.splitlines()), run.stderr[-3000:]


@pytest.mark.timeout(120)
def test_an_event_job_whose_log_tarball_the_filesystem_never_ends_is_left_undeclared_and_the_pilot_ends_with_64(
        tmp_path: Path, slow_sync_dir) -> None:
    """Only the log tarball's fsync hangs, after every range was declared: rank 0 waited for the job's stage-out
    without a limit, holding the worker to the end of its allocation (no summary within 60 s). As any job's
    stage-out, it is given up on past its files' time limits (2 s each here), the job left undeclared, since
    its declaration may still complete; the pilot ends with 64 without aborting every rank. (Its processes end
    once the filesystem answers: it does once the summary is in, as in test_hung_filesystem.)"""
    all_ranges = ranges(2)
    ap = es_worker(slow_sync_dir(NO_ANSWER, only=f"log.{PANDAID}.job.log.tgz"), preplaced=all_ranges)
    at_summary: dict = {}
    watch = threading.Thread(target=_answer_at_summary, args=(ap, slow_sync_dir, at_summary), daemon=True)
    watch.start()
    run = run_pilot(ap, "mpi2", env={**FAST, "HPCPILOT_EVENT_WAIT_TIMEOUT": "1", "HPCPILOT_RANK_SILENCE_LIMIT": "1",
                                     "HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE": "2"}, timeout=60)
    assert run.returncode == 64 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"job {PANDAID}: stage-out hung for" in run.stderr and "leaving the job undeclared" in run.stderr
    assert "aborting every rank" not in run.stderr, run.stderr[-3000:]
    assert [job["pandaid"] for job in run.summary()["jobs"] if not job["declared"]] == [PANDAID]
    assert at_summary["jobStatus"] == "running", "declared final while its stage-out hung"
    assert sorted(range_entries(run.declared(PANDAID))) == sorted(r["eventRangeID"] for r in all_ranges)


def _answer_at_summary(ap: Path, slow_sync_dir, attributes: dict) -> None:
    """Once the pilot's summary is in: the job's attributes then, and the filesystem answering again."""
    deadline = time.monotonic() + 90
    while not (ap / "hpcpilot_summary.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    attributes.update(json.loads((ap / "worker_attributes.json").read_text()))
    slow_sync_dir.answer(ap)


@pytest.mark.timeout(120)
def test_rank_0_reading_what_an_earlier_run_received_on_a_slow_filesystem_is_not_taken_for_silent(
        tmp_path: Path, slow_sync_dir) -> None:
    """An earlier run's journal of received ranges, each read of it 3 s late (a loaded shared filesystem):
    rank 0 read it at the job's start saying nothing to its peers, and rank 1 took it for dead (exit 64)."""
    all_ranges = ranges(4)
    ap = es_worker(slow_sync_dir(0, read_delay=3.0, only=".hpcpilot-ranges.jsonl"), preplaced=[])
    journal = ap / ".hpcpilot-ranges.jsonl"
    journal.write_text("".join(json.dumps(r) + "\n" for r in all_ranges))
    run, entries = run_es(ap, "mpi2", serving=[], env={"HPCPILOT_RANK_SILENCE_LIMIT": "1"})
    assert run.returncode == 0 and "not heard from" not in run.stderr, run.stderr[-3000:]
    assert sorted(range_entries(entries)) == sorted(r["eventRangeID"] for r in all_ranges)
    assert run.attributes(PANDAID)["jobStatus"] == "finished"


@pytest.mark.timeout(240)
def test_a_rank_done_while_rank_0_copies_a_range_output_still_says_it_is_alive(tmp_path: Path, slow_file) -> None:
    """Rank 1 is done and waits for rank 0's last answer while rank 0 copies a range's output for 4 s (its time
    limit): rank 1 kept silent meanwhile, and rank 0 took it for dead past rank_silence_limit (1 s): every rank
    aborted (exit 64), the job undeclared."""
    limits = {"HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE": "3", "HPCPILOT_LIMITS__TRANSFER_TIMEOUT_PER_MB": "0.001",
              "HPCPILOT_RANK_SILENCE_LIMIT": "1"}
    run, by_range, _ = run_with_a_slow_output(tmp_path, slow_file, "mpi2", limits, payload=RANK_0_COPIES_LAST_PAYLOAD)
    assert run.returncode == 0 and "not heard from" not in run.stderr, run.stderr[-3000:]
    failed = [range_id for range_id, (entry,) in by_range.items() if entry["eventStatus"] == "failed"]
    assert len(failed) == 1 and f"(1152: stage-out of big.root.{failed[0]}" in run.stderr, run.stderr[-3000:]
    assert run.attributes(PANDAID)["jobStatus"] == "finished"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("launch", ["grid", "mpi2"])
def test_a_range_output_past_its_copy_time_limit_fails_its_range_and_the_job_goes_on(tmp_path: Path, slow_file,
                                                                                     launch: str) -> None:
    """A range's output is copied to the job directory under the time limit of any output (tiny here, about 5 s
    for a 1 GiB file served over minutes): over it, the partial copy is removed and the range declared failed
    (1152, in the log); the other ranges are declared finished. Meanwhile the copying rank says it is alive: a
    1 s rank_silence_limit does not end the pilot."""
    limits = {**COPY_LIMITS, "HPCPILOT_RANK_SILENCE_LIMIT": "1"}
    run, by_range, slow_id = run_with_a_slow_output(tmp_path, slow_file, launch, limits)
    assert not list(run.access_point.glob("big.root*")), "the partial copy is removed"
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"(1152: stage-out of big.root.{slow_id} to {run.access_point} timed out after" in run.stderr, \
        run.stderr[-3000:]
    assert by_range.pop(slow_id) == [{"eventRangeID": slow_id, "eventStatus": "failed"}]
    for range_id, (entry,) in by_range.items():
        assert entry["eventStatus"] == "finished" and Path(entry["path"]).read_text() == f"output of {range_id}"
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["nEventRangesFinished"], attributes["nEventRangesFailed"]) == \
        ("finished", 5, 1), attributes


@pytest.mark.timeout(240)
def test_a_stop_ends_a_range_output_copy_under_way_and_fails_that_range_with_its_code(tmp_path: Path,
                                                                                      slow_file) -> None:
    """The stop file comes while a 1 GiB range output is being copied, within its default limit (minutes):
    the copy ends, its partial file removed, and the range is declared failed with the stop's code; the
    pilot stops as from any stop (it waited for the whole copy)."""
    def stop_once_copying(ap: Path) -> None:
        deadline = time.monotonic() + 60
        while not list(ap.glob("big.root.*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (ap / "hpcpilot_stop").touch()

    run, by_range, slow_id = run_with_a_slow_output(tmp_path, slow_file, "mpi2", {}, during=stop_once_copying)
    assert not list(run.access_point.glob("big.root*")), "the partial copy is removed"
    assert run.returncode == 143 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert by_range[slow_id] == [{"eventRangeID": slow_id, "eventStatus": "failed"}]
    assert "(1201: copy of its output ended by the stop: " in run.stderr and slow_id in run.stderr
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1201), attributes


@pytest.mark.timeout(240)
def test_a_range_output_copy_that_never_returns_fails_its_range_and_the_job_goes_on(tmp_path: Path,
                                                                                    slow_file) -> None:
    """The output's filesystem answers no read (a hung filesystem): the copy cannot end at its time limit, as it
    checks that between reads, so the rank gives up on it (1152, "hung") and goes on with the job. Its thread
    stays in the read, which no signal ends, so the filesystem's server is ended once the pilot has declared
    everything, to let the pilot's processes end."""
    limits = {"HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE": "1", "HPCPILOT_LIMITS__TRANSFER_TIMEOUT_PER_MB": "0.001"}

    def end_the_server_after_the_summary(ap: Path) -> None:
        deadline = time.monotonic() + 120
        while not (ap / "hpcpilot_summary.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        slow_file.server(tmp_path / "slowfs-0" / "big.root").kill()

    run, by_range, slow_id = run_with_a_slow_output(tmp_path, slow_file, "mpi2", limits,
                                                    during=end_the_server_after_the_summary, delay=3600)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "(1152: copy of its output hung: no answer from the filesystem after " in run.stderr, run.stderr[-3000:]
    assert by_range.pop(slow_id) == [{"eventRangeID": slow_id, "eventStatus": "failed"}]
    assert all(entry["eventStatus"] == "finished" for (entry,) in by_range.values())
    attributes = run.attributes(PANDAID)
    assert (attributes["jobStatus"], attributes["nEventRangesFinished"], attributes["nEventRangesFailed"]) == \
        ("finished", 5, 1), attributes


def start_declaring_worker(ap: Path, stderr: int, harvester_cycle: float = 0.1
                           ) -> tuple[DumpConsumer, subprocess.Popen]:
    """The worker on 2 ranks in the background, with Harvester taking its dumps; returns once it has
    declared something."""
    consumer = DumpConsumer(ap, harvester_cycle)
    consumer.start()
    command = ["mpiexec", "-n", "2", sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap)]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                              start_new_session=True, env={**os.environ, **FAST})
    _wait_for(lambda: consumer.entries or (ap / DUMP).exists(), timeout=60)
    return consumer, worker


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker declared nothing"
        time.sleep(0.05)


def _entries_in(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())[str(PANDAID)]
    except (OSError, ValueError):
        return []


SLOW_ON_RANK_0_PAYLOAD = """
import os, time
from hpcpilot.eventservice.client import EventChannelClient
with EventChannelClient.from_environment() as client:
    client.request()
    while (ranges := client.receive()) is not None:
        for event_range in ranges:
            if os.environ["HPCPILOT_RANK"] == "0":
                time.sleep(2.5)
            path = os.path.abspath(event_range.eventRangeID + ".out")
            with open(path, "w") as output:
                output.write("x")
            client.finished(path, event_range.eventRangeID, 0.1, 0.1)
        client.request()
"""


@pytest.mark.timeout(180)
def test_a_rank_done_early_still_says_it_is_alive_while_the_others_work(tmp_path: Path) -> None:
    """Rank 1 is done long before rank 0's slow ranges are: waiting for the next job or the end, it goes on
    telling rank 0 that it is alive, so a 1 s rank_silence_limit does not end the pilot."""
    all_ranges = ranges(6)
    ap = es_worker_running(tmp_path, SLOW_ON_RANK_0_PAYLOAD, all_ranges)
    run, entries = run_es(ap, "mpi2", serving=[], env={"HPCPILOT_RANK_SILENCE_LIMIT": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    by_range = range_entries(entries)
    assert sorted(by_range) == sorted(r["eventRangeID"] for r in all_ranges)
    assert all(entry["eventStatus"] == "finished" for (entry,) in by_range.values())


@pytest.mark.timeout(240)
def test_rank_0_packing_a_large_log_is_not_taken_for_silent(tmp_path: Path) -> None:
    """Rank 0's payload writes 200 MB that do not compress: packing them into the job's log tarball takes rank 0
    seconds, far over a 1 s rank_silence_limit, while rank 1 waits for the end. Rank 0 says it is alive meanwhile
    (it did not: rank 1 took it for dead, the tarball half written)."""
    loud = SLOW_ON_RANK_0_PAYLOAD.replace("time.sleep(2.5)", "pass").replace("    client.request()\n    while", """\
    if os.environ["HPCPILOT_RANK"] == "0":
        for _ in range(200):
            os.write(1, os.urandom(1 << 20))
    client.request()
    while""", 1)
    all_ranges = ranges(4)
    ap = es_worker_running(tmp_path, loud, all_ranges)
    run, entries = run_es(ap, "mpi2", serving=[], env={"HPCPILOT_RANK_SILENCE_LIMIT": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "not heard from" not in run.stderr
    assert run.attributes(PANDAID)["jobStatus"] == "finished"
    assert sorted(range_entries(entries)) == sorted(r["eventRangeID"] for r in all_ranges)


MEMORY_HOLDING_PAYLOAD = """
import sys, time
held = bytearray(60 << 20)  # 60 MiB on every rank, touched: resident
for i in range(0, len(held), 4096): held[i] = 1
time.sleep(1.5)  # long enough for the monitor's memory passes
from hpcpilot.eventservice.reference_payload import main
sys.exit(main([]))
"""


@pytest.mark.timeout(180)
def test_the_jobs_memory_summary_is_that_of_every_ranks_payload(tmp_path: Path) -> None:
    """maxRSS..rateWBYTES are declared for an event service job too, summed over the ranks' payloads."""
    ap = es_worker_running(tmp_path, MEMORY_HOLDING_PAYLOAD, preplaced=ranges(8))
    run, _ = run_es(ap, "mpi2", serving=[], env={"HPCPILOT_LIMITS__MEMORY_INTERVAL": "0.3",
                                                 "HPCPILOT_LIMITS__CHECK_INTERVAL": "0.1"})
    attributes = run.attributes(PANDAID)
    assert attributes["jobStatus"] == "finished", run.stderr[-3000:]
    assert attributes["maxRSS"] >= 2 * 60 * 1024, attributes  # kB: both ranks' 60 MiB
    assert attributes["maxPSS"] > 0 and attributes["totRCHAR"] > 0, attributes


CPU_BURNING_PAYLOAD = """
import os, sys, time
end = time.process_time() + 2.0  # CPU seconds every rank's payload spends, besides its ranges
while time.process_time() < end:
    pass
os.execv(sys.executable, [sys.executable, "-m", "hpcpilot.eventservice.reference_payload"])
"""


@pytest.mark.timeout(180)
def test_the_jobs_cpu_time_and_cores_are_those_of_every_ranks_payload(tmp_path: Path) -> None:
    """cpuConsumptionTime and coreCount are the job's: the payloads of both ranks spent 2 s of CPU each on a core
    each, not rank 0's alone."""
    ap = es_worker_running(tmp_path, CPU_BURNING_PAYLOAD, preplaced=ranges(8))
    run, _ = run_es(ap, "mpi2", serving=[])
    attributes = run.attributes(PANDAID)
    assert attributes["jobStatus"] == "finished", run.stderr[-3000:]
    assert attributes["cpuConsumptionTime"] >= 4, attributes
    assert attributes["coreCount"] == 2 and "coreCount=2" in attributes["jobMetrics"], attributes  # a core each
