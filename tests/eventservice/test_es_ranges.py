"""EventRange: Harvester's key names in and out, and clear errors for ranges that cannot be used."""
import pytest

from hpcpilot.eventservice import EventRange, InvalidEventRange

HARVESTER_RANGE = {"eventRangeID": "4711-123-1-2-11-1", "startEvent": 11, "lastEvent": 20,
                   "LFN": "EVNT.pool.root.1", "GUID": "0b4f0000-1111-2222-3333-444455556666", "scope": "mc15_13TeV"}


def test_range_round_trips_with_harvesters_key_names():
    event_range = EventRange.from_dict(HARVESTER_RANGE)
    assert event_range.eventRangeID == "4711-123-1-2-11-1"
    assert event_range.n_events == 10
    assert event_range.to_dict() == HARVESTER_RANGE


def test_event_numbers_given_as_digit_strings_become_integers():
    event_range = EventRange.from_dict({**HARVESTER_RANGE, "startEvent": "11", "lastEvent": "20"})
    assert (event_range.startEvent, event_range.lastEvent) == (11, 20)


def test_extra_keys_are_ignored_and_a_pfn_is_kept():
    event_range = EventRange.from_dict({**HARVESTER_RANGE, "attemptNr": 2, "PFN": "/scratch/EVNT.pool.root.1"})
    assert event_range.PFN == "/scratch/EVNT.pool.root.1"
    assert event_range.to_dict() == {**HARVESTER_RANGE, "PFN": "/scratch/EVNT.pool.root.1"}


def test_range_is_frozen():
    event_range = EventRange.from_dict(HARVESTER_RANGE)
    with pytest.raises(AttributeError):
        event_range.startEvent = 1


@pytest.mark.parametrize("changes, named", [
    ({"eventRangeID": 17}, "eventRangeID"),
    ({"eventRangeID": ""}, "eventRangeID"),
    ({"eventRangeID": "a b"}, "eventRangeID"),
    ({"eventRangeID": "a,ID:b"}, "eventRangeID"),
    ({"startEvent": "ten"}, "startEvent"),
    ({"startEvent": True}, "startEvent"),
    ({"startEvent": 1.5}, "startEvent"),
    ({"startEvent": None}, "startEvent"),
    ({"lastEvent": -3}, "lastEvent"),
    ({"lastEvent": 10}, "lastEvent 10 is before startEvent 11"),
    ({"LFN": "../EVNT.pool.root.1"}, "LFN"),
    ({"LFN": "/abs/EVNT.pool.root.1"}, "LFN"),
    ({"LFN": ""}, "LFN"),
    ({"GUID": None}, "GUID"),
    ({"scope": 5}, "scope"),
    ({"scope": "two\nlines"}, "scope"),
])
def test_bad_range_is_rejected_with_an_error_naming_the_key(changes, named):
    with pytest.raises(InvalidEventRange, match=named):
        EventRange.from_dict({**HARVESTER_RANGE, **changes})


def test_missing_key_is_named():
    incomplete = dict(HARVESTER_RANGE)
    del incomplete["GUID"]
    with pytest.raises(InvalidEventRange, match="'GUID' must be a string, got None"):
        EventRange.from_dict(incomplete)


@pytest.mark.parametrize("raw", [None, [], "4711-1", 3])
def test_a_range_that_is_not_an_object_is_rejected(raw):
    with pytest.raises(InvalidEventRange, match="must be a JSON object"):
        EventRange.from_dict(raw)


@pytest.mark.parametrize("number", ["²", "١٢", "1_000"])
def test_event_numbers_are_ascii_digits(number):
    with pytest.raises(InvalidEventRange):
        EventRange.from_dict({**HARVESTER_RANGE, "startEvent": number})


@pytest.mark.parametrize("number", ["9" * 5000, 2**63, str(2**63), 10**4000],
                         ids=["5000-digit string", "2**63", "2**63 as string", "4001-digit int"])
def test_an_event_number_beyond_64_bits_is_an_invalid_range_not_a_crash(number):
    with pytest.raises(InvalidEventRange, match="lastEvent.*beyond any event number"):
        EventRange.from_dict({**HARVESTER_RANGE, "lastEvent": number})
