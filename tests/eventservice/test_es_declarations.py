"""Range outcomes in the exact shape of event_status.dump.json entries."""
import zlib

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
