"""worker_requestevents.json / JobsEventRanges.json, and RangeFeed, against a FakeHarvester."""
import json
import logging
import os
import threading

import pytest
from fake_harvester import FakeHarvester

from hpcpilot.config import HarvesterFiles
from hpcpilot.eventservice import EventRange, InvalidEventRange, RangeFeed, read_ranges, request_ranges
from hpcpilot.eventservice.harvester_events import UNREADABLE_PATIENCE, read_answer

FILES = HarvesterFiles()
PANDAID = 4711


def harvester_ranges(count, prefix="4711-123-1-1"):
    return [{"eventRangeID": f"{prefix}-{i}", "startEvent": 10 * i + 1, "lastEvent": 10 * i + 10,
             "LFN": "EVNT.pool.root.1", "GUID": "guid-1", "scope": "mc15_13TeV"} for i in range(count)]


def place_answer(ap, ranges, pandaid=PANDAID):
    (ap / FILES.event_ranges).write_text(json.dumps({str(pandaid): ranges}))


def feed(ap, **options):
    options = {"batch": 4, "poll_interval": 0.01, "wait_timeout": 10, **options}
    return RangeFeed(ap, FILES, PANDAID, task_id="123", jobset_id="456", **options)


def test_request_is_written_with_harvesters_layout_and_nothing_else(tmp_path):
    assert request_ranges(tmp_path, FILES, PANDAID, 8, "123", "456")
    content = json.loads((tmp_path / "worker_requestevents.json").read_text())
    assert content == {"4711": {"nRanges": 8, "taskID": 123, "jobsetID": 456}}  # numbers, as PanDA takes them
    assert os.listdir(tmp_path) == ["worker_requestevents.json"]  # no temp file left behind


def test_a_null_id_is_passed_on_as_the_definition_gives_it(tmp_path):
    assert request_ranges(tmp_path, FILES, PANDAID, 1, "123", "NULL")
    content = json.loads((tmp_path / "worker_requestevents.json").read_text())
    assert content == {"4711": {"nRanges": 1, "taskID": 123, "jobsetID": "NULL"}}


def test_no_second_request_while_harvester_has_not_served_the_first(tmp_path):
    assert request_ranges(tmp_path, FILES, PANDAID, 8, "123", "456")
    assert not request_ranges(tmp_path, FILES, PANDAID, 3, "123", "456")
    assert json.loads((tmp_path / FILES.request_events).read_text())["4711"]["nRanges"] == 8
    (tmp_path / FILES.request_events).unlink()  # Harvester served it
    assert request_ranges(tmp_path, FILES, PANDAID, 3, "123", "456")


def test_request_file_names_come_from_the_configuration(tmp_path):
    files = HarvesterFiles(request_events="req.json", event_ranges="answer.json")
    assert request_ranges(tmp_path, files, PANDAID, 1, 1, 1)
    assert (tmp_path / "req.json").exists()
    (tmp_path / "answer.json").write_text(json.dumps({"4711": harvester_ranges(1)}))
    assert len(read_ranges(tmp_path, files, PANDAID)) == 1


def test_missing_answer_file_means_not_yet(tmp_path):
    assert read_ranges(tmp_path, FILES, PANDAID) is None


def test_half_written_answer_means_not_yet(tmp_path):
    text = json.dumps({"4711": harvester_ranges(3)})
    path = tmp_path / FILES.event_ranges
    for cut in (0, 1, len(text) // 2, len(text) - 1):
        path.write_text(text[:cut])
        assert read_ranges(tmp_path, FILES, PANDAID) is None, f"prefix of {cut} characters"
    path.write_text(text)
    assert [r.eventRangeID for r in read_ranges(tmp_path, FILES, PANDAID)] == [f"4711-123-1-1-{i}" for i in range(3)]


def test_answer_for_another_job_is_not_ours(tmp_path):
    place_answer(tmp_path, harvester_ranges(2), pandaid=999)
    assert read_ranges(tmp_path, FILES, PANDAID) is None


def test_empty_list_is_read_as_no_more_events(tmp_path):
    place_answer(tmp_path, [])
    assert read_ranges(tmp_path, FILES, PANDAID) == []


def test_an_invalid_range_in_the_answer_is_an_error(tmp_path):
    place_answer(tmp_path, [{**harvester_ranges(1)[0], "startEvent": "first"}])
    with pytest.raises(InvalidEventRange, match="startEvent"):
        read_ranges(tmp_path, FILES, PANDAID)


def test_preplaced_ranges_are_handed_out_before_anything_is_requested(tmp_path):
    place_answer(tmp_path, harvester_ranges(6))
    ranges_feed = feed(tmp_path, batch=4, low_water=2)
    first = [ranges_feed.next_range(timeout=1).eventRangeID for _ in range(3)]
    assert first == ["4711-123-1-1-0", "4711-123-1-1-1", "4711-123-1-1-2"]
    assert not (tmp_path / FILES.request_events).exists()  # 3 still buffered, above the low-water mark
    ranges_feed.next_range(timeout=1)
    ranges_feed.next_range(timeout=1)  # 1 left: time to ask for the next batch
    assert json.loads((tmp_path / FILES.request_events).read_text())["4711"]["nRanges"] == 4


def test_rereading_the_same_answer_gives_nothing_new(tmp_path):
    place_answer(tmp_path, harvester_ranges(3))
    ranges_feed = feed(tmp_path)
    assert len(ranges_feed.new_ranges()) == 3
    assert ranges_feed.new_ranges() == []
    assert ranges_feed.new_ranges() == []
    assert not ranges_feed.exhausted  # all known is "nothing new", not "no more events"


def test_a_new_answer_with_some_known_ranges_gives_only_the_new_ones(tmp_path):
    place_answer(tmp_path, harvester_ranges(3))
    ranges_feed = feed(tmp_path)
    ranges_feed.new_ranges()
    place_answer(tmp_path, harvester_ranges(5))
    assert [r.eventRangeID for r in ranges_feed.new_ranges()] == ["4711-123-1-1-3", "4711-123-1-1-4"]


def test_a_range_repeated_within_one_answer_is_taken_once_and_the_repeat_logged(tmp_path, caplog):
    first, second = harvester_ranges(2)
    place_answer(tmp_path, [first, second, first, first])
    assert [r.eventRangeID for r in feed(tmp_path).new_ranges()] == ["4711-123-1-1-0", "4711-123-1-1-1"]
    assert any("4711-123-1-1-0 more than once" in message for message in caplog.messages)


def test_empty_answer_ends_the_feed_without_a_request(tmp_path):
    place_answer(tmp_path, [])
    ranges_feed = feed(tmp_path)
    assert ranges_feed.next_range(timeout=1) is None
    assert ranges_feed.exhausted and not ranges_feed.timed_out
    assert not (tmp_path / FILES.request_events).exists()


@pytest.mark.timeout(60)
def test_feed_gets_every_range_once_from_a_harvester_writing_in_place(tmp_path):
    expected = harvester_ranges(23)
    with FakeHarvester(tmp_path, expected, write_pause=0.03) as harvester:
        ranges_feed = feed(tmp_path, batch=5)
        got = []
        while (event_range := ranges_feed.next_range(timeout=10)) is not None:
            got.append(event_range)
    assert [r.to_dict() for r in got] == expected
    assert ranges_feed.exhausted and not ranges_feed.timed_out
    assert all(request == {"4711": {"nRanges": 5, "taskID": 123, "jobsetID": 456}}
               for request in harvester.requests)
    assert harvester.answers[-1] == {"4711": []}
    assert len(harvester.answers) == 6  # 5 + 5 + 5 + 5 + 3, then the empty list


@pytest.mark.timeout(60)
def test_reads_racing_the_in_place_writes_never_give_a_range_twice(tmp_path, caplog):
    """Read as fast as possible while the FakeHarvester writes slowly in two halves."""
    caplog.set_level(logging.DEBUG, logger="hpcpilot.eventservice.harvester_events")
    expected = harvester_ranges(40)
    with FakeHarvester(tmp_path, expected, interval=0.001, write_pause=0.01):
        ranges_feed = feed(tmp_path, batch=3, poll_interval=0.0005)
        got = [r.eventRangeID for r in iter(lambda: ranges_feed.next_range(timeout=10), None)]
    assert got == [r["eventRangeID"] for r in expected]
    assert any("not readable yet" in message for message in caplog.messages), "never met a half-written file"


def test_no_answer_in_time_gives_up_and_says_so(tmp_path):
    ranges_feed = feed(tmp_path, wait_timeout=0.2)
    assert ranges_feed.next_range() is None
    assert ranges_feed.timed_out and not ranges_feed.exhausted
    assert (tmp_path / FILES.request_events).exists()


def test_close_wakes_a_waiting_feed(tmp_path):
    ranges_feed = feed(tmp_path, wait_timeout=60, poll_interval=30)
    threading.Timer(0.1, ranges_feed.close).start()
    assert ranges_feed.next_range() is None


def test_unusable_entries_are_set_aside_with_their_ids(tmp_path):
    good = harvester_ranges(2)
    bad = [{**good[0], "eventRangeID": "4711-123-1-1-bad", "lastEvent": 0}, {"junk": True}]
    place_answer(tmp_path, [good[0], *bad, good[1]])
    ranges_feed = feed(tmp_path)
    assert [r.eventRangeID for r in ranges_feed.new_ranges()] == ["4711-123-1-1-0", "4711-123-1-1-1"]
    assert [r.range_id for r in ranges_feed.rejected] == ["4711-123-1-1-bad", None]
    assert "lastEvent 0 is before startEvent 1" in ranges_feed.rejected[0].reason
    ranges_feed.new_ranges()
    assert len(ranges_feed.rejected) == 2  # a re-read does not reject them again


def test_journal_lets_a_restarted_pilot_skip_ranges_its_predecessor_took(tmp_path):
    journal = tmp_path / ".hpcpilot" / "taken-4711"
    place_answer(tmp_path, harvester_ranges(3))
    first = feed(tmp_path, journal=journal)
    first.next_range(timeout=1)  # takes all three from the file into its buffer
    second = feed(tmp_path, journal=journal)
    assert second.new_ranges() == []
    place_answer(tmp_path, harvester_ranges(4))
    assert [r.eventRangeID for r in second.new_ranges()] == ["4711-123-1-1-3"]


def test_a_journal_line_torn_by_a_crash_does_not_swallow_the_next_range(tmp_path):
    journal = tmp_path / ".hpcpilot" / "taken-4711"
    journal.parent.mkdir()
    journal.write_text("4711-123-1-1-9\n4711-12")  # killed mid-append
    place_answer(tmp_path, harvester_ranges(3))
    assert len(feed(tmp_path, journal=journal).new_ranges()) == 3
    assert feed(tmp_path, journal=journal).new_ranges() == [], "the next run knows all three"


@pytest.mark.parametrize("make", [lambda path: path.mkdir(), lambda path: path.write_text("<html>busy</html>"),
                                  lambda path: path.write_text(json.dumps(harvester_ranges(2))),
                                  lambda path: path.write_text(json.dumps({str(PANDAID): harvester_ranges(1)[0]}))],
                         ids=["directory", "not JSON", "a list, not an object", "a range, not a list of them"])
def test_an_answer_file_that_stays_unreadable_is_warned_about_once_by_name(tmp_path, caplog, make):
    make(tmp_path / FILES.event_ranges)
    ranges_feed = feed(tmp_path)
    for _ in range(3 * UNREADABLE_PATIENCE):
        assert ranges_feed.new_ranges() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{tmp_path / FILES.event_ranges} stays unreadable" in warnings[0]


def test_a_directory_in_place_of_the_request_file_is_warned_about_once_by_name(tmp_path, caplog):
    (tmp_path / FILES.request_events).mkdir()
    ranges_feed = feed(tmp_path)
    for _ in range(3 * UNREADABLE_PATIENCE):
        ranges_feed.new_ranges()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{tmp_path / FILES.request_events} stays unreadable" in warnings[0]


def test_ranges_come_out_as_event_ranges(tmp_path):
    place_answer(tmp_path, harvester_ranges(1))
    assert isinstance(feed(tmp_path).next_range(timeout=1), EventRange)


@pytest.mark.timeout(10)
def test_an_answer_file_that_is_a_fifo_is_no_answer_yet(tmp_path):
    """Opening a FIFO nobody writes to would block rank 0 (and the whole event service job) for ever."""
    os.mkfifo(tmp_path / HarvesterFiles().event_ranges)
    assert read_answer(tmp_path, HarvesterFiles(), 7001) is None
