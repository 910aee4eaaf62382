"""What Harvester's shared-file messenger does with the files a pilot writes, restated for tests.

Harvester (HSF/harvester, ``harvestermessenger/shared_file_messenger.py``)
cannot be installed here; these functions perform the same operations on the
same files, so a test can show that a real Harvester would take what the
pilot declared:

- :func:`take_declarations` is its ``get_files_to_stage_out``: rename
  ``event_status.dump.json`` to ``.read`` (or read a ``.read`` still there),
  load it whole, turn every key into an int PandaID, group the entries with a
  ``path`` by the path's base name (the LFN), take ``fsize``/``chksum``/
  ``guid`` as given (else stat, adler32, a new uuid), and keep an event
  status update (``eventRangeID``, ``eventStatus``) for every entry without
  a path and every ``es_output``/``zip_output`` entry. An entry that lacks a
  key it needs (``type`` with a path; ``eventStatus`` for an event) is
  dropped with an error, as Harvester logs and skips it.
- :func:`acknowledge` is its ``acknowledge_events_files``: ``.read`` becomes
  ``.read.<UTC time>``.
- :func:`work_attributes` is its ``get_work_attributes``; :func:`final_status`
  the job status Harvester takes from them (only finished and failed count).
"""
from __future__ import annotations

import datetime
import json
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READ_SUFFIX = ".read"
POST_PROCESS_ATTRIBUTES = "post_process_job_attrs.json"  # Harvester's own, merged into the attributes
FILE_TYPES_NOT_ZIPPED = ("log", "output", "checkpoint")
EVENT_FILE_TYPES = ("es_output", "zip_output")


@dataclass
class Taken:
    """What one reading of a dump gave Harvester."""

    files: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # PandaID -> LFN -> files
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # PandaID -> status updates
    errors: list[str] = field(default_factory=list)  # entries Harvester would drop, and why
    raw: list[Any] = field(default_factory=list)  # the entries as the dump holds them


def adler32_as_harvester_computes(path: str) -> str:
    value = 1
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def take_declarations(job_dir: Path, dump_name: str = "event_status.dump.json") -> Taken | None:
    """One monitor cycle's reading of a job directory's dump; None if there is nothing to read."""
    dump = Path(job_dir) / dump_name
    taken_name = dump.with_name(dump.name + READ_SUFFIX)
    if not taken_name.exists():
        if not dump.exists():
            return None
        os.rename(dump, taken_name)  # so that the pilot cannot overwrite it while it is read
    taken = Taken()
    try:
        with open(taken_name) as handle:  # Harvester's open(): the locale's encoding
            content = json.load(handle)
    except ValueError as error:
        taken.errors.append(f"not JSON: {error}")
        taken_name.unlink()  # Harvester removes a dump it cannot load
        return taken
    if not isinstance(content, dict):
        taken.errors.append("not a JSON object")
        taken_name.unlink()
        return taken
    for key, entries in content.items():
        pandaid = int(key)  # not guarded in Harvester: a bad key fails the whole worker's check
        if not isinstance(entries, list):
            taken.errors.append(f"entries of {key} are not a list")
            taken_name.unlink()
            return taken
        for entry in entries:
            taken.raw.append(entry)
            try:
                _take_entry(taken, pandaid, entry)
            except (KeyError, TypeError, OSError) as error:
                taken.errors.append(f"{key}: {entry!r}: {type(error).__name__} {error}")
    if not taken.raw:
        taken_name.unlink()  # Harvester removes a dump without entries
    return taken


def _take_entry(taken: Taken, pandaid: int, entry: dict[str, Any]) -> None:
    range_id = entry["eventRangeID"] if "eventRangeID" in entry else None
    if "path" in entry:
        path = entry["path"]
        lfn = os.path.basename(path)
        declared = {"path": path,
                    "fsize": entry["fsize"] if "fsize" in entry else os.stat(path).st_size,
                    "type": entry["type"]}
        if declared["type"] in FILE_TYPES_NOT_ZIPPED:
            declared["isZip"] = 0
        elif declared["type"] == "zip_output":
            declared["isZip"] = 1
        elif "isZip" in entry:
            declared["isZip"] = entry["isZip"]
        declared["guid"] = entry["guid"] if "guid" in entry else str(uuid.uuid4())
        declared["chksum"] = entry["chksum"] if "chksum" in entry else adler32_as_harvester_computes(path)
        taken.files.setdefault(pandaid, {}).setdefault(lfn, []).append(declared)
        if declared["type"] not in EVENT_FILE_TYPES:
            return
        declared["eventRangeID"] = range_id
    taken.events.setdefault(pandaid, []).append({"eventRangeID": range_id, "eventStatus": entry["eventStatus"]})


def acknowledge(job_dir: Path, dump_name: str = "event_status.dump.json") -> None:
    """Harvester's database has the entries: the ``.read`` file gets a time suffix (it is never deleted)."""
    taken_name = Path(job_dir) / (dump_name + READ_SUFFIX)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d_%H_%M_%S.%f")
    try:
        os.rename(taken_name, taken_name.with_name(f"{taken_name.name}.{stamp}"))
    except FileNotFoundError:
        pass


def work_attributes(job_dir: Path, attributes_name: str = "worker_attributes.json",
                    report_name: str = "jobReport.json") -> dict[str, Any]:
    """The job's attributes as Harvester collects them each cycle (a file that does not load is skipped)."""
    attributes: dict[str, Any] = {}
    for name, merge in ((attributes_name, "replace"), (report_name, "metaData"), (POST_PROCESS_ATTRIBUTES, "update")):
        path = Path(job_dir) / name
        if not path.exists():
            continue
        try:
            with open(path) as handle:
                content = json.load(handle)
        except ValueError:
            continue
        if merge == "replace":
            attributes = content
        elif merge == "metaData":
            attributes["metaData"] = content
        else:
            attributes.update(content)
    return attributes


def final_status(attributes: dict[str, Any]) -> str | None:
    """The job status Harvester takes from the attributes: finished or failed, else none yet."""
    status = attributes.get("jobStatus")
    return status if status in ("finished", "failed") else None
