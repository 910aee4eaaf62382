"""The AthenaMP <-> pilot messages: classification of what the payload says, and the pilot's answers."""
import pytest

from hpcpilot.eventservice.messages import (NO_MORE_EVENTS, FailedReport, FinishedReport, ReadyForEvents,
                                            UnreadableMessage, frame, parse_payload_message, parse_pilot_answer,
                                            ranges_message)
from hpcpilot.eventservice.ranges import EventRange

RANGE = EventRange("4711-1-1-1", 1, 10, "EVNT.pool.root.1", "guid", "mc")


def test_ready_for_events_is_a_request():
    assert parse_payload_message("Ready for events\r") == ReadyForEvents()


def test_finished_report_gives_path_id_and_times():
    message = parse_payload_message("/scratch/out.root,ID:4711-1-1-1,CPU:1.5,WALL:2")
    assert message == FinishedReport("4711-1-1-1", "/scratch/out.root", 1.5, 2.0)


def test_finished_report_path_may_contain_commas_and_times_are_optional():
    message = parse_payload_message("/scratch/a,b/out.root,ID:4711-1-1-1")
    assert message == FinishedReport("4711-1-1-1", "/scratch/a,b/out.root", 0.0, 0.0)


def test_failure_report_gives_code_id_and_message():
    message = parse_payload_message("ERR_ATHENAMP_PROCESS 4711-1-1-1: Failed to process event range")
    assert isinstance(message, FailedReport)
    assert (message.code, message.range_id, message.message) == (
        "ERR_ATHENAMP_PROCESS", "4711-1-1-1", "Failed to process event range")


@pytest.mark.parametrize("garbage", [
    "hello pilot",
    "",
    "{\"eventRangeID\": \"4711-1-1-1\"}",
    "/scratch/out.root,CPU:1,WALL:1",
    "/scratch/out.root,ID:4711-1-1-1,CPU:fast,WALL:1",
    "/scratch/out.root,ID:4711-1-1-1,CPU:nan,WALL:1",
    "/scratch/out.root,ID:4711-1-1-1,CPU:-1,WALL:1",
    "ERR_ATHENAMP_PROCESS without a colon",
    "ERROR something went wrong",
    "out.root,ID:4711-1-1-1,CPU:1,WALL:1",
])
def test_anything_else_is_unreadable(garbage):
    with pytest.raises(UnreadableMessage):
        parse_payload_message(garbage)


def test_pilot_answer_is_one_json_line_the_payload_reads_back():
    text = ranges_message(RANGE)
    assert "\n" not in text and text.startswith("[{")
    assert parse_pilot_answer(text) == [RANGE]
    assert parse_pilot_answer(NO_MORE_EVENTS) is None


def test_framing_is_one_line_per_message():
    assert frame("Ready for events") == b"Ready for events\n"
    with pytest.raises(ValueError):
        frame("two\nlines")
