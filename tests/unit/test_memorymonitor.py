"""MemorySeries: summary keys and units, the prmon-like time series, the summary file;
the Monitor's memory pass over many payloads and its sweep for what finished payloads left behind."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition
from hpcpilot.config import Limits
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.memorymonitor import (
    TIMESERIES_COLUMNS, TIMESERIES_NAME, MemorySeries,
)
from hpcpilot.monitor import Monitor
from hpcpilot.payload import launch
from hpcpilot.proctree import TOKEN_ENV, ProcessTree, TreeSample, new_token

MEMORY_KEYS = ["maxRSS", "maxVMEM", "maxSWAP", "maxPSS", "avgRSS", "avgVMEM", "avgSWAP", "avgPSS"]
IO_KEYS = ["totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES",
           "rateRCHAR", "rateWCHAR", "rateRBYTES", "rateWBYTES"]


def sample(time: float, rss: int, io: int = 0, nprocs: int = 1) -> TreeSample:
    return TreeSample(time=time, nprocs=nprocs, rss=rss, pss=rss // 2, vms=rss * 3, swap=0,
                      rchar=io, wchar=2 * io, read_bytes=3 * io, write_bytes=4 * io)


def test_a_time_series_file_that_cannot_be_written_stops_alone(tmp_path, caplog):
    """A full scratch (here: a directory in the file's place) ends the file, not the statistics nor the pass."""
    (tmp_path / "memory_monitor_output.txt").mkdir()
    series = MemorySeries(timeseries_path=tmp_path / "memory_monitor_output.txt")
    series.add(sample(100.0, 1000))
    series.add(sample(160.0, 3000))
    assert series.count == 2 and series.maximum("rss") == 3000
    assert sum("no more samples go there" in record.message for record in caplog.records) == 1


@pytest.mark.timeout(10)
def test_a_fifo_in_place_of_the_time_series_is_never_waited_on(tmp_path, caplog):
    """The payload owns scratch: a FIFO there must not freeze the monitor thread (and every limit with it)."""
    os.mkfifo(tmp_path / "memory_monitor_output.txt")
    series = MemorySeries(timeseries_path=tmp_path / "memory_monitor_output.txt")
    series.add(sample(100.0, 1000))  # nobody reads it: opening it to write would block for ever
    reader = os.open(tmp_path / "memory_monitor_output.txt", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with_reader = MemorySeries(timeseries_path=tmp_path / "memory_monitor_output.txt")
        with_reader.add(sample(100.0, 1000))
    finally:
        os.close(reader)
    assert series.timeseries_path is None and with_reader.timeseries_path is None and with_reader.count == 1
    assert caplog.text.count("no more samples go there") == 2


def test_a_symlink_in_place_of_the_time_series_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "memory_monitor_output.txt").symlink_to(victim)
    MemorySeries(timeseries_path=scratch / "memory_monitor_output.txt").add(sample(100.0, 1000))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "replaced").symlink_to(elsewhere)  # scratch itself replaced by a link
    MemorySeries(timeseries_path=tmp_path / "replaced" / "memory_monitor_output.txt").add(sample(100.0, 1000))
    assert victim.read_text() == "precious\n" and list(elsewhere.iterdir()) == []


def test_summary_has_exactly_the_worker_attribute_keys():
    series = MemorySeries()
    series.add(sample(100.0, 1000))
    summary = series.summary()
    assert sorted(summary) == sorted(MEMORY_KEYS + IO_KEYS)
    assert all(isinstance(value, int) for value in summary.values())


def test_summary_memory_is_max_and_mean_in_kb():
    series = MemorySeries()
    for t, rss in [(0.0, 1000), (10.0, 3000), (20.0, 2000)]:
        series.add(sample(t, rss))
    summary = series.summary()
    assert summary["maxRSS"] == 3000 and summary["avgRSS"] == 2000
    assert summary["maxPSS"] == 1500 and summary["avgPSS"] == 1000
    assert summary["maxVMEM"] == 9000 and summary["avgVMEM"] == 6000
    assert summary["maxSWAP"] == 0


def test_summary_io_totals_in_bytes_and_rates_per_second_of_wall_time():
    series = MemorySeries(start_time=0.0)
    series.add(sample(10.0, 1, io=500))
    series.add(sample(100.0, 1, io=10_000))
    summary = series.summary()
    assert summary["totRCHAR"] == 10_000 and summary["totWBYTES"] == 40_000
    assert summary["rateRCHAR"] == 100 and summary["rateWCHAR"] == 200
    assert summary["rateRBYTES"] == 300 and summary["rateWBYTES"] == 400


def test_a_sample_of_an_ended_tree_is_not_kept():
    """The monitor's last pass may come after the payload exited: no process, no memory use."""
    series = MemorySeries()
    series.add(sample(1700000000.0, 1000, io=10))
    series.add(sample(1700000010.0, 3000, io=30))
    kept = series.summary()
    series.add(sample(1700000020.0, 0, io=0, nprocs=0))
    assert series.summary() == kept and series.count == 2


def test_empty_series_summarises_to_zeros():
    assert set(MemorySeries().summary().values()) == {0}


def test_single_sample_has_no_rate_instead_of_dividing_by_zero():
    series = MemorySeries()
    series.add(sample(5.0, 10, io=100))
    assert series.summary()["rateRCHAR"] == 0


def test_timeseries_file_has_prmon_columns_and_one_line_per_sample(tmp_path):
    path = tmp_path / TIMESERIES_NAME
    series = MemorySeries(timeseries_path=path)
    series.add(sample(1700000000.6, 1000, io=7, nprocs=3))
    series.add(sample(1700000060.2, 2000, io=9, nprocs=4))
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["Time", "VMEM", "PSS", "RSS", "Swap", "rchar", "wchar",
                                    "read_bytes", "write_bytes", "nprocs"]
    assert lines[1].split("\t") == ["1700000000", "3000", "500", "1000", "0",
                                    "7", "14", "21", "28", "3"]
    assert len(lines) == 3 and all(len(line.split("\t")) == len(TIMESERIES_COLUMNS) for line in lines)


def test_timeseries_appends_to_an_existing_file_without_second_header(tmp_path):
    path = tmp_path / TIMESERIES_NAME
    MemorySeries(timeseries_path=path).add(sample(1.0, 1))
    MemorySeries(timeseries_path=path).add(sample(2.0, 2))
    lines = path.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Time", "1", "2"]


@pytest.mark.timeout(60)
def test_series_of_a_real_payload(tmp_path):
    token = new_token()
    script = ("import pathlib, time; b = b'x' * (64 * 1024 * 1024); "
              "pathlib.Path('out').write_bytes(b[:8 * 1024 * 1024]); time.sleep(60)")
    popen = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, start_new_session=True,
                             env={**os.environ, TOKEN_ENV: token})
    tree = ProcessTree(popen.pid, token)
    try:
        series = MemorySeries(timeseries_path=tmp_path / TIMESERIES_NAME, start_time=time.time())
        while not (tmp_path / "out").exists() or (tmp_path / "out").stat().st_size < 8 * 1024 * 1024:
            time.sleep(0.05)
        for _ in range(3):
            series.add(tree.sample())
            time.sleep(0.2)
        summary = series.summary()
        assert summary["maxRSS"] >= 48 * 1024  # kB
        assert summary["totWCHAR"] >= 8 * 1024 * 1024  # bytes
        assert summary["rateWCHAR"] > 0
        assert len((tmp_path / TIMESERIES_NAME).read_text().splitlines()) == 4
    finally:
        tree.kill(grace=0.0)
        popen.wait(timeout=10)


# ---- the Monitor ---------------------------------------------------------------


ESCAPE = ("setsid bash -c 'echo $$ > escaped.tmp && mv escaped.tmp escaped; exec sleep 60' & "
          "while [ ! -e escaped ]; do sleep 0.02; done")


@pytest.fixture
def start_payload(tmp_path):
    """Payloads launched as the workflow does (own session, token); all ended afterwards."""
    runs = []

    def start(command: str) -> JobRun:
        pandaid = len(runs) + 1
        scratch = tmp_path / f"job-{pandaid}"
        scratch.mkdir()
        run = JobRun(parse_job(job_definition(pandaid, command)), 0, "test", 1, scratch=scratch)
        run.process = launch(["bash", "-c", command], scratch, {**os.environ, TOKEN_ENV: new_token()})
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.process.terminate(grace=0.0)
        if run.process.process.returncode is None:
            run.process.wait()


def escaped_pid(run: JobRun, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while not (run.scratch / "escaped").exists():
        assert time.monotonic() < deadline, "payload did not start its escapee"
        time.sleep(0.02)
    return int((run.scratch / "escaped").read_text())


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_one_memory_pass_samples_every_payload(start_payload):
    runs = [start_payload("sleep 60 & sleep 60 & touch ready; wait") for _ in range(4)]
    for run in runs:
        while not (run.scratch / "ready").exists():
            time.sleep(0.02)
    monitor = Monitor(Limits(), kill=lambda run: None)
    watches = [monitor.watch(run) for run in runs]
    for watch in watches:
        watch.due["memory"] = 0.0
    monitor.check_now()
    assert [watch.series.count for watch in watches] == [1, 1, 1, 1]
    assert all(watch.series.last.nprocs == 3 and watch.series.last.rss > 0 for watch in watches)


@pytest.mark.timeout(60)
def test_stop_ends_what_unwatched_payloads_left_behind(start_payload):
    monitor = Monitor(Limits(check_interval=0.1), kill=lambda run: None, sweep_interval=3600).start()
    run = start_payload(ESCAPE)
    monitor.watch(run)
    escaped = escaped_pid(run)
    run.process.wait()
    monitor.unwatch(run)
    assert run.process.end_leftovers(grace=1.0) == []
    assert not is_gone(escaped)  # not found at once: it left the payload's group
    monitor.stop()
    wait_until_gone(escaped)


@pytest.mark.timeout(60)
def test_periodic_sweep_ends_leftovers_while_payloads_run(start_payload):
    monitor = Monitor(Limits(check_interval=0.1), kill=lambda run: None, sweep_interval=0.2).start()
    try:
        running = start_payload("sleep 60")
        monitor.watch(running)
        finished = start_payload(ESCAPE)
        monitor.watch(finished)
        escaped = escaped_pid(finished)
        finished.process.wait()
        monitor.unwatch(finished)
        wait_until_gone(escaped)
        assert not running.process.has_exited()
    finally:
        monitor.stop()


@pytest.mark.timeout(60)
def test_a_payload_that_removed_its_scratch_spoils_no_pass(start_payload):
    gone, idle = start_payload('rm -rf "$PWD"; sleep 60'), start_payload("sleep 60")
    while gone.scratch.exists():
        time.sleep(0.02)
    killed = []
    monitor = Monitor(Limits(looping_limit=0), kill=killed.append)
    watches = [monitor.watch(run) for run in (gone, idle)]
    for watch in watches:
        watch.due["looping"] = 0.0
    monitor.check_now()
    assert killed == [idle] and idle.error.code == 1150 and not gone.failed


@pytest.mark.timeout(60)
def test_limits_exceeded_in_one_pass_are_all_logged_and_the_first_is_the_error(start_payload, caplog):
    """Walltime and memory both over their limits: the job fails for the walltime (checked first), the memory
    breach is logged too and its sample kept (the pass stopped at the first one, and said nothing more)."""
    run = start_payload(f"{sys.executable} -c 'import time; x = bytearray(50 << 20); open(\"ready\", \"w\"); "
                        "time.sleep(60)'")
    while not (run.scratch / "ready").exists():
        time.sleep(0.02)
    killed = []
    monitor = Monitor(Limits(walltime_default=1, memory_limit_mb=20), kill=killed.append)
    watch = monitor.watch(run)
    watch.started -= 5  # as if it had run 5 s: over the 1 s walltime
    watch.due["memory"] = 0.0
    monitor.check_now()
    assert killed == [run] and run.error.code == 1213
    assert watch.series.count == 1
    assert "also 1235 PSS" in caplog.text


STUBBORN_ESCAPE = ("setsid bash -c 'trap \"\" TERM; echo $$ > escaped.tmp && mv escaped.tmp escaped; "
                   "while :; do sleep 0.1; done' & while [ ! -e escaped ]; do sleep 0.02; done")


@pytest.mark.timeout(60)
def test_a_long_pass_is_not_taken_for_a_suspension_and_a_looping_payload_is_still_found(start_payload, caplog):
    """A leftover that ignores SIGTERM keeps a pass kill_grace long, far more than ten check_intervals: the
    pilot ran all along, and the looping payload beside it must not have its looping clock started again."""
    killed = []
    monitor = Monitor(Limits(check_interval=0.3, kill_grace=6, looping_limit=1, looping_interval=0.3),
                      kill=killed.append, sweep_interval=0.3).start()
    try:
        finished = start_payload(STUBBORN_ESCAPE)
        escaped = escaped_pid(finished)
        finished.process.wait()
        monitor.unwatch(finished)  # the next sweep waits kill_grace for it
        looping = start_payload("sleep 60")
        monitor.watch(looping)
        wait_until_gone(escaped, timeout=30)
        while not killed:
            time.sleep(0.05)
    finally:
        monitor.stop()
    assert killed == [looping] and looping.error.code == 1150
    assert "the pilot was suspended" not in caplog.text
