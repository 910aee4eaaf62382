"""The messages pilot and payload exchange, as AthenaMP speaks them with the PanDA pilot.

Conversation (payload -> pilot, pilot -> payload)::

    payload: Ready for events
    pilot:   [{"eventRangeID": "...", "startEvent": 1, "lastEvent": 10, "LFN": ..., "GUID": ..., "scope": ...}]
             or: No more events
    payload: /abs/path/out.root,ID:<eventRangeID>,CPU:<s>,WALL:<s>      (range finished)
             or: ERR_<CODE> <eventRangeID>: <message>                    (range failed)

A payload may send several ``Ready for events`` before reading the answers
(one per worker); answers come in the order of the requests.

Framing: each message is one line of UTF-8 text ending in ``\\n`` on a
``SOCK_STREAM`` UNIX socket. No message may contain a newline (JSON is sent
compact, on one line); a trailing ``\\r`` and surrounding blanks are ignored.
AthenaMP's yampl channel is message based; an adapter for it adds and strips
the newline and nothing else.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from .ranges import EventRange

# The environment variable that tells the payload where the channel is.
CHANNEL_ENV = "HPCPILOT_EVENT_CHANNEL"
READY = "Ready for events"
NO_MORE_EVENTS = "No more events"
ENCODING = "utf-8"
# A longer line is not a message of this protocol; the pilot drops the connection.
MAX_MESSAGE_BYTES = 64 * 1024

_FAILURE = re.compile(r"(ERR_[A-Za-z0-9_]+)\s+(\S+?):\s?(.*)", re.DOTALL)
_FIELD = re.compile(r"(ID|CPU|WALL):(.*)", re.IGNORECASE)
_ID_FIELD = re.compile(r",ID:", re.IGNORECASE)


class UnreadableMessage(ValueError):
    """A message that is not part of the protocol; the text says what was wrong."""


@dataclass(frozen=True)
class ReadyForEvents:
    pass


@dataclass(frozen=True)
class FinishedReport:
    range_id: str
    output_path: str
    cpu: float
    wall: float


@dataclass(frozen=True)
class FailedReport:
    range_id: str
    code: str
    message: str
    text: str  # the whole message, for the diagnostics


PayloadMessage = ReadyForEvents | FinishedReport | FailedReport


def frame(message: str) -> bytes:
    """One message as bytes on the wire."""
    if "\n" in message:
        raise ValueError("a channel message cannot contain a newline")
    return (message + "\n").encode(ENCODING)


def ranges_message(event_range: EventRange) -> str:
    """The pilot's answer carrying one range: a JSON list, as AthenaMP expects."""
    return json.dumps([event_range.to_dict()], separators=(",", ":"))


def finished_message(output_path: str, range_id: str, cpu: float, wall: float) -> str:
    return f"{output_path},ID:{range_id},CPU:{cpu:.3f},WALL:{wall:.3f}"


def failed_message(code: str, range_id: str, message: str) -> str:
    return f"{code} {range_id}: {' '.join(message.split())}"


def parse_payload_message(text: str) -> PayloadMessage:
    """Classify one line from the payload; raises UnreadableMessage for anything else."""
    text = text.strip()
    if text == READY:
        return ReadyForEvents()
    if text.startswith("ERR"):
        return _parse_failure(text)
    if text.startswith("/") or _ID_FIELD.search(text):
        return _parse_finished(text)
    raise UnreadableMessage(f"not a request, an output report or an ERR_ report: {_short(text)}")


def parse_pilot_answer(text: str) -> list[EventRange] | None:
    """The payload's side: the ranges of an answer, or None for ``No more events``."""
    text = text.strip()
    if text == NO_MORE_EVENTS:
        return None
    try:
        content = json.loads(text)
    except ValueError:
        raise UnreadableMessage(f"answer is neither JSON nor {NO_MORE_EVENTS!r}: {_short(text)}") from None
    if not isinstance(content, list):
        raise UnreadableMessage(f"answer must be a JSON list of ranges: {_short(text)}")
    return [EventRange.from_dict(item) for item in content]


def _parse_failure(text: str) -> FailedReport:
    match = _FAILURE.fullmatch(text)
    if not match:
        raise UnreadableMessage(f"error report not of the form 'ERR_<CODE> <eventRangeID>: <message>': {_short(text)}")
    code, range_id, message = match.groups()
    return FailedReport(range_id=range_id, code=code, message=message.strip(), text=text)


def _parse_finished(text: str) -> FinishedReport:
    """``<path>,ID:..,CPU:..,WALL:..``: fields are taken from the right, so a path may hold commas."""
    parts = text.split(",")
    fields: dict[str, str] = {}
    while len(parts) > 1 and (match := _FIELD.fullmatch(parts[-1].strip())):
        fields.setdefault(match.group(1).upper(), match.group(2).strip())
        parts.pop()
    path = ",".join(parts).strip()
    if "ID" not in fields or not fields["ID"]:
        raise UnreadableMessage(f"output report without ',ID:<eventRangeID>': {_short(text)}")
    if not path.startswith("/"):
        raise UnreadableMessage(f"output path {path!r} of range {fields['ID']} is not absolute")
    return FinishedReport(range_id=fields["ID"], output_path=path,
                          cpu=_seconds(fields, "CPU", text), wall=_seconds(fields, "WALL", text))


def _seconds(fields: dict[str, str], name: str, text: str) -> float:
    """A missing time counts as 0 (it is accounting, not the result); a malformed one is an error."""
    value = fields.get(name, "0")
    try:
        seconds = float(value)
    except ValueError:
        raise UnreadableMessage(f"{name}:{value!r} is not a number of seconds in {_short(text)}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise UnreadableMessage(f"{name}:{value!r} is not a non-negative number of seconds in {_short(text)}")
    return seconds


def _short(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
