"""The reference payload on its own: deterministic events, output naming, and its command line."""
import os
import subprocess
import sys

import pytest
from channel_harness import PAYLOAD_MODULE, make_ranges

from hpcpilot.eventservice import CHANNEL_ENV
from hpcpilot.eventservice.reference_payload import HEADER, event_summary, process


def test_an_event_depends_only_on_its_number():
    assert event_summary(42) == event_summary(42)
    assert event_summary(42) != event_summary(43)
    assert event_summary(42).split()[0] == "42"


def test_a_range_is_written_to_a_file_named_after_it(tmp_path):
    event_range = make_ranges(1, events_per_range=3, first_event=7)[0]
    path = process(event_range, tmp_path, work_ms=0)
    assert path == tmp_path / f"{event_range.eventRangeID}.events.txt"
    assert path.read_text() == HEADER + event_summary(7) + event_summary(8) + event_summary(9)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left


@pytest.mark.timeout(60)
def test_without_a_channel_the_payload_says_so_and_fails(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != CHANNEL_ENV}
    done = subprocess.run([sys.executable, "-m", PAYLOAD_MODULE], cwd=tmp_path, env=env, timeout=50,
                          capture_output=True, text=True)
    assert done.returncode == 3 and CHANNEL_ENV in done.stderr


@pytest.mark.timeout(60)
def test_a_channel_nobody_listens_on_is_an_error_after_retrying(tmp_path):
    env = {**os.environ, CHANNEL_ENV: str(tmp_path / "nobody.sock")}
    code = ("import hpcpilot.eventservice.client as c; c.EventChannelClient.from_environment(connect_timeout=0.3)")
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=50, capture_output=True, text=True)
    assert done.returncode != 0 and "FileNotFoundError" in done.stderr
