"""Event ranges: the unit of work of the event service, as Harvester and PanDA spell them.

A range comes from outside the node (``JobsEventRanges.json``), so every
field is checked before the pilot uses it: a bad one raises
:class:`InvalidEventRange` naming the key and the value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import JobDefinitionError
from ..jobs import validate_lfn

# The channel protocol separates fields with ',', ':' and ' ', and the reference
# payload names output files after the ID, so an ID is restricted to characters
# that are safe in both (PanDA's IDs are digits and '-').
_RANGE_ID = re.compile(r"[0-9A-Za-z._\-]{1,200}")
MAX_TEXT_LENGTH = 1024
# PanDA keeps event numbers in 64-bit columns; a longer number is no event number (and a string of
# thousands of digits would trip Python's int conversion limit).
MAX_EVENT_NUMBER = 2**63 - 1


class InvalidEventRange(ValueError):
    """An event range that the pilot cannot hand to a payload; the message says why."""


@dataclass(frozen=True)
class EventRange:
    """One range of events of one input file; field names follow Harvester's keys."""

    eventRangeID: str
    startEvent: int
    lastEvent: int
    LFN: str
    GUID: str
    scope: str
    # Local path of the input, when the pilot knows it; AthenaMP opens this file.
    PFN: str | None = field(default=None, compare=False)

    @property
    def n_events(self) -> int:
        return self.lastEvent - self.startEvent + 1

    @classmethod
    def from_dict(cls, raw: Any) -> "EventRange":
        """Parse and validate one range as Harvester writes it; extra keys are ignored."""
        if not isinstance(raw, Mapping):
            raise InvalidEventRange(f"an event range must be a JSON object, got {type(raw).__name__}: {_short(raw)}")
        range_id = _range_id(raw)
        start = _event_number(raw, "startEvent", range_id)
        last = _event_number(raw, "lastEvent", range_id)
        if last < start:
            raise InvalidEventRange(f"event range {range_id}: lastEvent {last} is before startEvent {start}")
        pfn = raw.get("PFN")
        return cls(
            eventRangeID=range_id,
            startEvent=start,
            lastEvent=last,
            LFN=_lfn(raw, range_id),
            GUID=_text(raw, "GUID", range_id),
            scope=_text(raw, "scope", range_id),
            PFN=None if pfn is None else _text(raw, "PFN", range_id),
        )

    def to_dict(self) -> dict[str, Any]:
        """Harvester's (and AthenaMP's) key names; ``PFN`` only when known."""
        content: dict[str, Any] = {
            "eventRangeID": self.eventRangeID,
            "startEvent": self.startEvent,
            "lastEvent": self.lastEvent,
            "LFN": self.LFN,
            "GUID": self.GUID,
            "scope": self.scope,
        }
        if self.PFN is not None:
            content["PFN"] = self.PFN
        return content


def is_valid_range_id(text: str) -> bool:
    return bool(_RANGE_ID.fullmatch(text))


def _range_id(raw: Mapping[str, Any]) -> str:
    value = raw.get("eventRangeID")
    if not isinstance(value, str):
        raise InvalidEventRange(f"event range {_short(raw)}: 'eventRangeID' must be a string, got {_short(value)}")
    if not is_valid_range_id(value):
        raise InvalidEventRange(f"event range: 'eventRangeID' {_short(value)} must be 1-200 characters "
                                "of letters, digits, '.', '_' or '-'")
    return value


def _event_number(raw: Mapping[str, Any], key: str, range_id: str) -> int:
    """An int, or a string of digits (some PanDA servers send numbers as strings); never a bool."""
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidEventRange(f"event range {range_id}: {key!r} must be an integer, got {_short(value)}")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]+", value.strip()):  # str.isdigit also takes '²', which int() refuses
            raise InvalidEventRange(f"event range {range_id}: {key!r} {_short(value)} is not an integer")
        if len(value.strip()) > len(str(MAX_EVENT_NUMBER)):
            raise InvalidEventRange(f"event range {range_id}: {key!r} {_short(value)} is beyond any event number")
        value = int(value)
    if value < 0:
        raise InvalidEventRange(f"event range {range_id}: {key!r} {value} is negative")
    if value > MAX_EVENT_NUMBER:
        raise InvalidEventRange(f"event range {range_id}: {key!r} {_short(value)} is beyond any event number")
    return value


def _text(raw: Mapping[str, Any], key: str, range_id: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise InvalidEventRange(f"event range {range_id}: {key!r} must be a string, got {_short(value)}")
    if len(value) > MAX_TEXT_LENGTH or "\n" in value or "\0" in value:
        raise InvalidEventRange(f"event range {range_id}: {key!r} {_short(value)} is not a plain one-line value")
    return value


def _lfn(raw: Mapping[str, Any], range_id: str) -> str:
    lfn = _text(raw, "LFN", range_id)
    try:
        return validate_lfn(lfn, "LFN")
    except JobDefinitionError as error:
        raise InvalidEventRange(f"event range {range_id}: {error.diag}") from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
