"""Range outcomes in the exact shape of event_status.dump.json entries."""
import zlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hpcpilot.eventservice.declarations import failed_entries, finished_entry
from hpcpilot.eventservice.ranges import is_valid_range_id
from hpcpilot.workflow.eventservice import RANGE_ID_DOT, staged_name


def test_finished_range_is_an_es_output_entry_with_size_and_bare_adler32(tmp_path):
    output = tmp_path / "4711-1-1-1.events.txt"
    output.write_bytes(b"some events\n")
    entry = finished_entry("4711-1-1-1", output, guid="g-1")
    assert entry == {"type": "es_output", "path": str(output), "fsize": 12,
                     "chksum": f"{zlib.adler32(b'some events' + bytes([10])):08x}",
                     "eventRangeID": "4711-1-1-1", "eventStatus": "finished", "guid": "g-1"}


def test_failed_ranges_are_status_only_entries():
    assert failed_entries(["a-1", "a-2"]) == [{"eventRangeID": "a-1", "eventStatus": "failed"},
                                              {"eventRangeID": "a-2", "eventStatus": "failed"}]


def test_slow_declarations_are_spaced_out_to_a_tenth_of_rank_0s_time():
    """A quick declaration is followed by the next after DECLARE_EVERY; one that took 81 ms (the journal of
    10,000 ranges rewritten while Harvester has not taken the dump) by the next after ten times that."""
    from hpcpilot.workflow.esdispatch import DECLARE_EVERY, declaration_due

    assert declaration_due(100.0, 100.001) == pytest.approx(100.001 + DECLARE_EVERY)
    assert declaration_due(100.0, 100.081) == pytest.approx(100.081 + 0.81)


def test_answers_a_rank_took_are_forgotten_and_those_it_never_took_are_found():
    """Rank 0 keeps its answers to a rank only until the rank says it took them (kept, they added up to every
    range of a long job); when the rank ends, those given after the last one it took are its lost ranges."""
    from hpcpilot.eventservice import EventRange
    from hpcpilot.workflow.esdispatch import AnswerLedger

    ranges = [EventRange(f"4711-1-1-{i}", i * 10 + 1, i * 10 + 10, "EVNT.1", "guid", "mc") for i in range(1000)]
    ledger = AnswerLedger(2)
    for done, event_range in enumerate(ranges):
        ledger.give(1, event_range)
        ledger.taken(1, done)  # the rank asks again having taken all but the last answer
    assert ledger.kept(1) == 1
    ledger.give(1, None)  # "no more events": no range to fail
    assert ledger.never_taken(1, 999) == [ranges[-1]]
    ledger.give(0, ranges[0])
    assert ledger.never_taken(0, 0) == [ranges[0]]


PANDA_RANGE_ID = "13569003-4016399436-19927451553-1-2"  # <taskid>-<jobid>-<fileid>-<n>-<n>


@pytest.mark.parametrize("name, staged", [("out.root", f"out.root.{PANDA_RANGE_ID}"),
                                          (f"{PANDA_RANGE_ID}.out", f"{PANDA_RANGE_ID}.out.{PANDA_RANGE_ID}"),
                                          (f"out.root.{PANDA_RANGE_ID}", f"out.root.{PANDA_RANGE_ID}")])
def test_a_panda_range_output_is_staged_under_harvester_s_name(name: str, staged: str) -> None:
    assert staged_name(name, PANDA_RANGE_ID) == staged


def test_ranges_whose_ids_end_alike_are_staged_apart() -> None:
    """Range IDs may have dots: ``x`` and ``y.x`` were both staged as ``out.y.x``, one output over the other."""
    assert staged_name("out.y", "x") == "out.y.x"
    assert staged_name("out", "y.x") == "out.y~x"
    assert staged_name("out.y.x", "y.x") == "out.y.x.y~x"


def range_id_of(staged: str) -> str:
    """What a staged name says of its range: the part after its last dot."""
    return staged.rsplit(".", 1)[1].replace(RANGE_ID_DOT, ".")


@given(st.text(), st.from_regex(r"[0-9A-Za-z._\-]{1,20}", fullmatch=True))
@example(name="out", range_id="y.x")
def test_a_staged_name_tells_its_range_so_no_two_ranges_share_one(name: str, range_id: str) -> None:
    assert is_valid_range_id(range_id)
    assert range_id_of(staged_name(name, range_id)) == range_id
