"""The rows of hpcpilot_summary.json: one per job, every field of its JobResult in order."""
import dataclasses
import json

from hpcpilot.jobstate import JobResult


def test_a_row_holds_every_field_of_the_result_in_order_as_asdict_gave_them():
    result = JobResult(4711, "failed", 1305, "payload exited with code 3", 1, "node7", 0.012, 3.5, 0.25,
                       declared=False)
    row = result.summary_row()
    assert list(row) == [f.name for f in dataclasses.fields(JobResult)]
    assert json.dumps(row) == json.dumps(dataclasses.asdict(result))
    assert row["declared"] is False and row["code"] == 1305
