"""EventChannel with real payload processes over a UNIX socket."""
import logging
import os
import subprocess
import sys
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from channel_harness import ListProvider, collect, drain, make_ranges, outcome_ids, run_payload, wait_until
from fake_harvester import FakeHarvester

from hpcpilot.config import HarvesterFiles
from hpcpilot.eventservice import (BAD_MESSAGE_CODE, CHANNEL_ENV, EventChannel, RangeFailed, RangeFeed, RangeFinished,
                                   RangesLost)
from hpcpilot.eventservice.channel import MAX_LOGGED_IGNORED, MAX_WAITING_REQUESTS
from hpcpilot.eventservice.client import EventChannelClient
from hpcpilot.eventservice.reference_payload import FAILURE_CODE, HEADER, event_summary


def expected_output(event_range):
    return HEADER + "".join(event_summary(n) for n in range(event_range.startEvent, event_range.lastEvent + 1))


def finished_only(results):
    assert all(isinstance(r, RangeFinished) for r in results), results
    return {r.range_id: r for r in results}


@pytest.fixture
def work_dir(tmp_path):
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefetch", ["1", "4"])
def test_fifty_ranges_round_trip_with_deterministic_outputs(work_dir, prefetch):
    ranges = make_ranges(50)
    with EventChannel(ListProvider(ranges)) as channel:
        payload = run_payload(channel, work_dir, "--prefetch", prefetch)
        results = collect(channel, 50)
    assert payload.returncode == 0, payload.stderr
    finished = finished_only(results)
    assert sorted(finished) == sorted(r.eventRangeID for r in ranges)
    for event_range in ranges:
        result = finished[event_range.eventRangeID]
        assert result.output_path == str(work_dir / f"{event_range.eventRangeID}.events.txt")
        assert Path(result.output_path).read_text() == expected_output(event_range)
        assert result.cpu >= 0 and result.wall >= 0
    assert channel.stats().handed_out == 50 and channel.exhausted


@pytest.mark.timeout(120)
def test_event_results_do_not_depend_on_how_events_are_cut_into_ranges(tmp_path):
    lines = {}
    for events_per_range, count in ((10, 6), (20, 3)):
        work = tmp_path / f"cut{events_per_range}"
        work.mkdir()
        with EventChannel(ListProvider(make_ranges(count, events_per_range))) as channel:
            assert run_payload(channel, work).returncode == 0
            results = finished_only(collect(channel, count))
        lines[events_per_range] = sorted(
            line for r in results.values() for line in Path(r.output_path).read_text().splitlines()[1:])
    assert lines[10] == lines[20] and len(lines[10]) == 60


@pytest.mark.timeout(60)
def test_failed_range_is_reported_as_failed_and_the_rest_finish(work_dir):
    ranges = make_ranges(5)
    bad = ranges[2].eventRangeID
    with EventChannel(ListProvider(ranges)) as channel:
        payload = run_payload(channel, work_dir, "--fail-range", bad)
        results = collect(channel, 5)
    assert payload.returncode == 0
    failed = [r for r in results if isinstance(r, RangeFailed)]
    assert [(r.range_id, r.code) for r in failed] == [(bad, FAILURE_CODE)]
    assert "--fail-range" in failed[0].message
    assert not (work_dir / f"{bad}.events.txt").exists()
    assert sorted(outcome_ids(results)) == sorted(r.eventRangeID for r in ranges)


@pytest.mark.timeout(60)
def test_payload_crash_mid_range_reports_the_range_in_flight(work_dir):
    ranges = make_ranges(10)
    with EventChannel(ListProvider(ranges)) as channel:
        payload = run_payload(channel, work_dir, "--crash-after", "3")
        results = collect(channel, 4)
    assert payload.returncode == -signal.SIGKILL
    assert [r.range_id for r in results[:3]] == [r.eventRangeID for r in ranges[:3]]
    lost = results[3]
    assert isinstance(lost, RangesLost) and lost.delivered
    assert lost.range_ids == (ranges[3].eventRangeID,)
    assert "closed" in lost.reason or "broke" in lost.reason


@pytest.mark.timeout(90)
def test_a_restarted_payload_continues_on_the_same_channel_and_every_range_has_one_outcome(work_dir):
    ranges = make_ranges(12)
    with EventChannel(ListProvider(ranges)) as channel:
        crashed = run_payload(channel, work_dir, "--crash-after", "2", "--prefetch", "3")
        wait_until(lambda: channel.open_connections == 0, what="the crashed payload's connection to close")
        before = drain(channel)
        restarted = run_payload(channel, work_dir)
        after = collect(channel, len(ranges) - len(outcome_ids(before)))
    assert crashed.returncode == -signal.SIGKILL and restarted.returncode == 0
    assert [r.range_id for r in before if isinstance(r, RangeFinished)] == [r.eventRangeID for r in ranges[:2]]
    lost = [r for r in before if isinstance(r, RangesLost)]
    assert len(lost) == 1 and ranges[2].eventRangeID in lost[0].range_ids  # the one it died on, and any prefetched
    assert sorted(outcome_ids(before + after)) == sorted(r.eventRangeID for r in ranges)  # each exactly once
    assert all(isinstance(r, RangeFinished) for r in after)
    assert channel.stats().connections == 2


@pytest.mark.timeout(30)
def test_garbage_fails_the_range_in_flight_and_the_channel_carries_on():
    ranges = make_ranges(3)
    with EventChannel(ListProvider(ranges)) as channel, EventChannelClient(channel.address, read_timeout=10) as client:
        client.send("hello pilot, this is not a protocol message")  # nothing in flight: only logged
        client.request()
        first = client.receive()[0]
        client.sock.sendall(b"\xff\xfe binary junk\n")
        failed = collect(channel, 1)[0]
        assert isinstance(failed, RangeFailed) and failed.range_id == first.eventRangeID
        assert failed.code == BAD_MESSAGE_CODE and "unreadable message" in failed.message

        client.request()
        second = client.receive()[0]
        client.send(f"relative/out.root,ID:{second.eventRangeID},CPU:1,WALL:1")
        assert "not absolute" in collect(channel, 1)[0].message

        client.request()
        third = client.receive()[0]
        client.send("/tmp/out.root,ID:no-such-range,CPU:1,WALL:1")  # unknown ID: ignored, fails nothing
        client.finished("/tmp/out.root", third.eventRangeID, 1.0, 2.0)
        done = collect(channel, 1)[0]
        assert isinstance(done, RangeFinished) and (done.range_id, done.wall) == (third.eventRangeID, 2.0)
        client.request()
        assert client.receive() is None
    assert channel.stats().bad_messages == 3


@pytest.mark.timeout(30)
def test_an_unreadable_report_fails_the_range_it_names_not_the_oldest():
    ranges = make_ranges(3)
    with EventChannel(ListProvider(ranges)) as channel, EventChannelClient(channel.address, read_timeout=10) as client:
        client.request()
        first = client.receive()[0]
        client.request()
        second = client.receive()[0]
        client.send(f"/tmp/out.root,ID:{second.eventRangeID},CPU:nan,WALL:1")
        failed = collect(channel, 1)[0]
        assert isinstance(failed, RangeFailed) and failed.range_id == second.eventRangeID
        client.finished("/tmp/out.root", first.eventRangeID, 1.0, 2.0)
        done = collect(channel, 1)[0]
        assert isinstance(done, RangeFinished) and done.range_id == first.eventRangeID


@pytest.mark.timeout(60)
def test_a_flood_of_requests_is_capped_not_queued_without_end():
    """A payload that asks without reading the answers: the pilot's answers block on the full socket, and
    its queue of requests would grow without bound; past the cap requests are ignored and counted."""
    flood = 100_000
    with EventChannel(ListProvider(make_ranges(1))) as channel, EventChannelClient(channel.address) as client:
        def ask_without_end() -> None:
            try:
                client.sock.sendall(b"Ready for events\n" * flood)
            except OSError:  # the channel closed at the test's end
                pass

        threading.Thread(target=ask_without_end, daemon=True).start()
        deadline = time.monotonic() + 30
        while channel.stats().bad_messages < flood // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert channel.stats().bad_messages >= flood // 2
        assert channel._requests.qsize() <= MAX_WAITING_REQUESTS


@pytest.mark.timeout(60)
def test_a_flood_of_messages_that_change_nothing_is_counted_not_logged_line_by_line(caplog):
    """Reports for ranges never handed out, and garbage with no range in flight: logged each, a payload repeating
    one filled the pilot's log (on the shared filesystem) without bound; the channel still works after them."""
    flood = 3000
    with EventChannel(ListProvider(make_ranges(1))) as channel, EventChannelClient(channel.address) as client:
        client.sock.sendall(b"/tmp/out.root,ID:no-such-range,CPU:1,WALL:1\n" * flood +
                            b"ERR_X no-such-range: failed\n" * flood + b"garbage\n" * flood)
        client.request()
        (handed,) = client.receive()
        client.finished("/tmp/out.root", handed.eventRangeID, 1.0, 1.0)
        assert isinstance(collect(channel, 1)[0], RangeFinished)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= MAX_LOGGED_IGNORED + 2, len(warnings)
    assert f"{3 * flood} messages ignored in all" in warnings[-1]


@pytest.mark.timeout(30)
def test_an_endless_line_drops_the_connection_and_reports_its_ranges():
    with EventChannel(ListProvider(make_ranges(2))) as channel:
        client = EventChannelClient(channel.address, read_timeout=10)
        client.request()
        handed = client.receive()[0]
        try:
            client.sock.sendall(b"x" * (200 * 1024))
        except OSError:
            pass  # the pilot may already have hung up
        lost = collect(channel, 1)[0]
        client.close()
    assert isinstance(lost, RangesLost) and lost.range_ids == (handed.eventRangeID,)
    assert "longer than" in lost.reason


@pytest.mark.timeout(30)
def test_athenamp_parse_error_naming_the_range_inside_its_text_fails_that_range():
    with EventChannel(ListProvider(make_ranges(2))) as channel, EventChannelClient(channel.address) as client:
        client.request()
        client.request()
        client.receive()  # the first range, left unanswered
        second = client.receive()[0]
        client.send(f"ERR_ATHENAMP_PARSE {{'eventRangeID': '{second.eventRangeID}', 'startEvent': 11}}: cannot parse")
        failed = collect(channel, 1)[0]
    assert (failed.range_id, failed.code) == (second.eventRangeID, "ERR_ATHENAMP_PARSE")


@pytest.mark.timeout(30)
def test_a_range_drawn_for_a_payload_that_left_goes_to_the_next_one():
    asked, gate = threading.Event(), threading.Event()
    ranges = make_ranges(2)
    provider = ListProvider(ranges)

    def slow_provider():
        asked.set()
        gate.wait(10)
        return provider()

    with EventChannel(slow_provider) as channel:
        leaving = EventChannelClient(channel.address)
        leaving.request()
        assert asked.wait(10)
        leaving.close()
        wait_until(lambda: channel.stats().connections == 1 and channel.open_connections == 0,
                   what="the first payload to be gone")
        gate.set()
        with EventChannelClient(channel.address, read_timeout=10) as staying:
            staying.request()
            assert staying.receive()[0] == ranges[0]
    assert provider.given == 1
    assert channel.stats().lost == 1  # still in flight on the second connection when the channel stopped


@pytest.mark.timeout(30)
def test_stop_reports_ranges_in_flight_and_removes_the_socket():
    channel = EventChannel(ListProvider(make_ranges(3))).start()
    client = EventChannelClient(channel.address, read_timeout=10)
    client.request()
    handed = client.receive()[0]
    channel.stop()
    lost = collect(channel, 1)[0]
    assert isinstance(lost, RangesLost) and lost.delivered and lost.range_ids == (handed.eventRangeID,)
    assert lost.reason == "event channel stopped"
    assert not os.path.exists(channel.address)
    assert client._reader.readline() == b""  # the payload sees the channel close
    client.close()


@pytest.mark.timeout(30)
def test_stop_does_not_hang_on_a_blocked_provider_and_reports_what_it_returns_later():
    release = threading.Event()
    ranges = make_ranges(1)

    def blocked_provider():
        release.wait(20)
        return ranges[0]

    channel = EventChannel(blocked_provider).start()
    with EventChannelClient(channel.address) as client:
        client.request()
        time.sleep(0.2)
        started = time.monotonic()
        channel.stop(timeout=0.5)
        stop_seconds = time.monotonic() - started
        release.set()
        lost = collect(channel, 1)[0]
    assert stop_seconds < 10
    assert isinstance(lost, RangesLost) and not lost.delivered and lost.ranges == tuple(ranges)


@pytest.mark.timeout(30)
def test_a_failing_provider_or_result_handler_does_not_stop_the_channel():
    calls = []

    def broken_provider():
        calls.append(1)
        raise OSError("shared filesystem went away")

    def broken_handler(result):
        raise RuntimeError("handler bug")

    with EventChannel(broken_provider, on_result=broken_handler) as channel:
        with EventChannelClient(channel.address, read_timeout=10) as client:
            client.request()
            assert client.receive() is None
            client.request()
            assert client.receive() is None
    assert calls == [1] and channel.exhausted


def test_no_more_ranges_turns_further_requests_away():
    with EventChannel(ListProvider(make_ranges(5))) as channel, EventChannelClient(channel.address) as client:
        channel.no_more_ranges()
        client.request()
        assert client.receive() is None
    assert channel.stats().handed_out == 0


def test_environment_names_the_socket_and_long_paths_are_refused(tmp_path):
    channel = EventChannel(ListProvider([]), socket_path=tmp_path / "es.sock")
    assert channel.environment() == {CHANNEL_ENV: str(tmp_path / "es.sock")}
    channel.stop()
    assert not (tmp_path / "es.sock").exists()
    with pytest.raises(ValueError, match="longer than"):
        EventChannel(ListProvider([]), socket_path=tmp_path / ("d" * 120) / "es.sock")


def test_a_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "es.sock"))
    stale.close()
    EventChannel(ListProvider([]), socket_path=tmp_path / "es.sock").stop()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="not a socket"):
        EventChannel(ListProvider([]), socket_path=tmp_path / "file")


@pytest.mark.timeout(120)
def test_ranges_flow_from_harvester_files_through_the_channel_to_the_payload(tmp_path, work_dir):
    ap = tmp_path / "ap"
    ap.mkdir()
    wanted = make_ranges(17, events_per_range=5)
    files = HarvesterFiles()
    with FakeHarvester(ap, [r.to_dict() for r in wanted], files, write_pause=0.01) as harvester:
        feed = RangeFeed(ap, files, 4711, task_id="123", jobset_id="NULL", batch=4, poll_interval=0.01,
                         wait_timeout=20)
        with EventChannel(feed.next_range) as channel:
            payload = run_payload(channel, work_dir, "--prefetch", "2")
            results = collect(channel, 17)
    assert payload.returncode == 0, payload.stderr
    assert sorted(finished_only(results)) == sorted(r.eventRangeID for r in wanted)
    assert feed.exhausted and harvester.answers[-1] == {"4711": []}


@pytest.mark.timeout(180)
def test_measure_channel_throughput_with_trivial_work(work_dir):
    """Not an assertion on speed: prints ranges per second through the channel and a real payload process."""
    count = 2000
    ranges = make_ranges(count, events_per_range=1)
    with EventChannel(ListProvider(ranges)) as channel:
        started = time.perf_counter()
        payload = run_payload(channel, work_dir, timeout=150)
        results = collect(channel, count, timeout=30)
        seconds = time.perf_counter() - started
    assert payload.returncode == 0 and len(finished_only(results)) == count
    print(f"\nevent channel: {count} ranges in {seconds:.2f} s = {count / seconds:.0f} ranges/s "
          f"(one payload process, 1 event per range, output file per range, interpreter start included)")


@pytest.mark.timeout(60)
def test_measure_bare_protocol_throughput():
    """Not an assertion on speed: the channel's own cost per range, with an in-process client doing nothing."""
    count = 5000
    ranges = make_ranges(count, events_per_range=1)
    with EventChannel(ListProvider(ranges)) as channel, EventChannelClient(channel.address, read_timeout=10) as client:
        started = time.perf_counter()
        client.request()
        while (answer := client.receive()) is not None:
            client.finished("/dev/null", answer[0].eventRangeID, 0.0, 0.0)
            client.request()
        results = collect(channel, count, timeout=30)
        seconds = time.perf_counter() - started
    assert len(finished_only(results)) == count
    print(f"\nevent channel, bare protocol: {count} ranges in {seconds:.2f} s = {count / seconds:.0f} ranges/s")


CHANNEL_UNDER_A_LOW_FD_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from hpcpilot.eventservice import EventChannel, EventRange
ranges = [EventRange(f"4711-1-1-{i}", i * 10 + 1, i * 10 + 10, "EVNT.pool.root.1", "guid-1", "mc") for i in range(3)]
channel = EventChannel(lambda: ranges.pop(0) if ranges else None, socket_path=sys.argv[1]).start()
held = []
while sys.argv[2] == "other files take every descriptor":
    try:
        held.append(open("/dev/null"))
    except OSError:
        break
print("ready", flush=True)
sys.stdin.readline()
for handle in held:
    handle.close()
while True:
    result = channel.results.get()
    print(type(result).__name__, getattr(result, "range_id", ""), flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("descriptors", ["the channel's connections take them", "other files take every descriptor"])
def test_more_connections_than_descriptors_leave_the_channel_serving(tmp_path, descriptors):
    """A payload opening connections without end (a leak, or a fork bomb of workers) must neither close the
    channel for good nor take every descriptor the rank needs for its declarations; when the rank has none
    left, accepting waits and resumes."""
    address = str(tmp_path / "channel")
    child = subprocess.Popen([sys.executable, "-c", CHANNEL_UNDER_A_LOW_FD_LIMIT, address, descriptors],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        flood = []
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.2)
            try:
                sock.connect(address)
            except OSError:  # the backlog is full: the pilot stopped accepting, as it should
                pass
            flood.append(sock)
        time.sleep(1)
        assert child.poll() is None
        for sock in flood:
            sock.close()
        child.stdin.write("release the descriptors\n")
        child.stdin.flush()
        with EventChannelClient(address, read_timeout=20) as client:
            client.request()
            handed = client.receive()[0]
            client.finished(str(tmp_path / "out"), handed.eventRangeID, 1.0, 1.0)
            assert child.stdout.readline().split() == ["RangeFinished", handed.eventRangeID]
    finally:
        child.kill()
        child.wait()
