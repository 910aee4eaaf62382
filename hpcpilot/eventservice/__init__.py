"""Event service mode: ranges from Harvester, fed to a payload over a local channel.

- :mod:`.ranges`            EventRange, validated as it comes from outside
- :mod:`.harvester_events`  worker_requestevents.json / JobsEventRanges.json; RangeFeed
- :mod:`.messages`          the AthenaMP <-> pilot message protocol and its framing
- :mod:`.channel`           EventChannel, the pilot's UNIX socket server
- :mod:`.client`            the payload's end, for Python payloads
- :mod:`.declarations`      outcomes as event_status.dump.json entries
- :mod:`.reference_payload` a runnable payload for tests and demonstrations
"""
from .channel import (BAD_MESSAGE_CODE, ChannelStats, EventChannel, RangeFailed, RangeFinished, RangeProvider,
                      RangeResult, RangesLost, ResultSink)
from .client import EventChannelClient
from .declarations import failed_entries, finished_entry
from .harvester_events import RangeFeed, RejectedRange, read_answer, read_ranges, request_ranges
from .messages import CHANNEL_ENV, NO_MORE_EVENTS, READY
from .ranges import EventRange, InvalidEventRange

__all__ = [
    "BAD_MESSAGE_CODE", "CHANNEL_ENV", "ChannelStats", "EventChannel", "EventChannelClient", "EventRange",
    "InvalidEventRange", "NO_MORE_EVENTS", "READY", "RangeFailed", "RangeFeed", "RangeFinished", "RangeProvider",
    "RangeResult", "RangesLost", "RejectedRange", "ResultSink", "failed_entries", "finished_entry", "read_answer",
    "read_ranges", "request_ranges",
]
