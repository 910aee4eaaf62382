"""Event-range outcomes as ``event_status.dump.json`` entries (shared/PROTOCOL.md, section 2).

Publish them with :class:`hpcpilot.eventstatus.EventStatusPublisher`, which never
replaces a dump Harvester has not taken yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..checksums import RunningChecksum, file_checksum


def finished_entry(range_id: str, staged_output: Path, guid: str | None = None,
                   checksum: RunningChecksum | None = None) -> dict[str, Any]:
    """A finished range whose output sits at ``staged_output`` (where Harvester stages it out from).

    ``checksum``: the one taken while the output was copied there; without it the file is read again.
    """
    path = Path(staged_output).absolute()
    checksum = checksum or file_checksum(path)
    entry: dict[str, Any] = {"type": "es_output", "path": str(path), "fsize": checksum.size,
                             "chksum": checksum.adler32, "eventRangeID": range_id, "eventStatus": "finished"}
    if guid:
        entry["guid"] = guid
    return entry


def failed_entries(range_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Status-only entries (no ``path``) for ranges that failed or were lost."""
    return [{"eventRangeID": range_id, "eventStatus": "failed"} for range_id in range_ids]
