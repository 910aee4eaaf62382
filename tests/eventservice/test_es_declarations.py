"""Range outcomes in the exact shape of event_status.dump.json entries."""
import zlib

import pytest

from hpcpilot.eventservice.declarations import failed_entries, finished_entry


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
    from hpcpilot.workflow.eventservice import DECLARE_EVERY, declaration_due

    assert declaration_due(100.0, 100.001) == pytest.approx(100.001 + DECLARE_EVERY)
    assert declaration_due(100.0, 100.081) == pytest.approx(100.081 + 0.81)
