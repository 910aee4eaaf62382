"""The Harvester shared-file protocol from the pilot's side (shared/PROTOCOL.md, sections 1-2).

For programs that play the pilot's part towards Harvester: a payload wrapper,
another pilot, a site tool, a test harness. :class:`AccessPointClient` reads
what Harvester placed in one worker's access point and writes what Harvester
reads back, with the file names, layouts and hand-off rules hpcpilot itself
uses (it is a thin layer over :mod:`hpcpilot.harvester`)::

    from hpcpilot.api.communication import AccessPointClient, JobSpec

    client = AccessPointClient("/shared/harvester/worker-42")
    for job in client.jobs():
        if not isinstance(job, JobSpec):              # invalid: say so, never drop it
            client.set_state(job.pandaid, "failed", pilotErrorCode=int(job.code), pilotErrorDiag=job.diag)
            continue
        client.set_state(job.pandaid, "running", node="nid00042", coreCount=job.core_count)
        ...                                           # run it; write its outputs into client.job_dir(job.pandaid)
        entries = [client.file_declaration(client.job_dir(job.pandaid) / out.lfn) for out in job.outputs]
        entries.append(client.file_declaration(client.job_dir(job.pandaid) / job.log.lfn, "log", job.log.guid))
        client.declare_files(job.pandaid, entries)    # False: queued behind a dump not the client's
        client.write_job_report(job.pandaid, {"exitCode": 0})
        client.set_state(job.pandaid, "finished", transExitCode=0)
    client.heartbeat()
    client.flush()                                    # call again until it returns 0

Rules the client keeps, and checks before anything is written:

- Only the worker's own PandaIDs (those with a definition in the access
  point) are accepted: Harvester reads nothing for another job, and in a
  OneToOne access point the files of any job are the files of *the* job.
- ``worker_attributes.json`` is one flat object, rewritten whole and
  atomically: ``jobStatus`` plus attributes whose values are strings,
  numbers, booleans or null (PROTOCOL.md lists the keys PanDA takes; format
  times with :func:`utc_text`). Each write carries every attribute the
  client was given for the job so far: Harvester may read only the last one.
- ``event_status.dump.json`` entries use ``type`` (never ``filetype``),
  ``chksum`` as 8 hex digits without ``ad:``, absolute paths inside the
  access point (Harvester stages out from there; node-local files are out of
  its reach), never one of the files Harvester or the pilot keeps there
  (the job spec, secrets and all, would go to storage). Declare the job's
  log tarball as ``log``: without one, Harvester packs the job's directory
  itself when the worker ends. A dump Harvester has not yet renamed to
  ``.read`` is never written to: it is taken back (renamed away, atomic against Harvester's own
  rename) and its entries go out again, first, with the new ones. Only a
  dump that is not the client's holds entries back: they wait in a hidden
  journal and go out with :meth:`~AccessPointClient.flush` once Harvester has
  taken it. One client (or one pilot) declares for a job: a second one would
  replace the first one's waiting entries.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..atomicfile import json_bytes
from ..checksums import file_checksum
from ..config import Config, HarvesterFiles
from ..errors import ExitCode, WorkerError
from ..eventservice.declarations import failed_entries, finished_entry
from ..eventservice.harvester_events import read_ranges, request_ranges
from ..eventservice.ranges import EventRange, InvalidEventRange
from ..eventstatus import EventStatusPublisher
from ..harvester import AccessPoint, RawJob, is_utf8
from ..jobreport import trim_logfile_reports
from ..jobs import InvalidJob, JobSpec
from ..jobstate import FINAL_STATES, JobStatus, utc_text
from ..staging import declaration
from .data import TransferResult, checked_path

__all__ = ["AccessPointClient", "EventRange", "HarvesterFiles", "InvalidEventRange", "InvalidJob", "JobSpec",
           "JobStatus", "WorkerError", "utc_text", "FILE_TYPES", "STATES"]

STATES = tuple(status.value for status in JobStatus)  # starting, running, finished, failed
FILE_TYPES = ("output", "log", "checkpoint", "es_output", "zip_output")  # what Harvester stages out
EVENT_FILE_TYPES = ("es_output", "zip_output")  # Harvester also reads their eventRangeID and eventStatus
_ADLER32 = re.compile(r"[0-9a-f]{8}")
_SCALARS = (str, int, float, bool, type(None))
# Keys Harvester's JobSpec.set_attributes takes out of the attributes: "xml" becomes the output file report it
# sends PanDA instead of the declared files, "metaData" the job report (write_job_report's place).
_TAKEN_BY_HARVESTER = {"xml": "the output file report Harvester would send PanDA instead of the declared files",
                       "metaData": "the job report: use write_job_report"}


class AccessPointClient:
    """One worker's access point, seen from the pilot's side.

    ``root`` must already be laid out by Harvester (it fills it before the
    batch job starts): whether it is ManyToOne (a sub-directory per PandaID)
    or OneToOne (the job's files at the top) is read from it once, here.
    ``files`` names the exchanged files (a :class:`HarvesterFiles`, re-exported here; defaults: Harvester's
    shipped ones, e.g. ``HarvesterFiles(job_spec="pandaJobData.out")`` for the messenger's code default).

    One client at a time declares files for a worker's jobs: a client made
    later (a wrapper restarted) takes over the entries an earlier one left
    waiting for Harvester, and publishes them before its own. A client may be
    shared by threads (e.g. one per output it stages out and declares).

    Raises ValueError for file names that cannot be used, and for an empty ``root`` (not taken for the current
    directory: an unset variable, most likely) or one with a NUL byte. The job definitions
    are read by :meth:`jobs` and, once, by the first call given a PandaID or
    to :meth:`flush`: those raise :class:`WorkerError` when the access point
    cannot be read or holds no job (:meth:`flush` only when it cannot be read).
    """

    def __init__(self, root: Path | str, files: HarvesterFiles | None = None):
        files = Config(files=files or HarvesterFiles()).validated().files  # ConfigError is a ValueError
        self._access_point = AccessPoint(checked_path(root, "access point"), files)
        self._publisher = EventStatusPublisher(self._access_point)
        self._definitions: dict[int, RawJob | InvalidJob] | None = None  # read once, when first needed
        self._attributes: dict[int, dict[str, Any]] = {}  # per job, what set_state was given so far
        # Declaring and set_state read, add to and rewrite what is there: threads at once would lose entries.
        self._lock = threading.RLock()

    @property
    def root(self) -> Path:
        return self._access_point.root

    @property
    def files(self) -> HarvesterFiles:
        return self._access_point.files

    @property
    def many_to_one(self) -> bool:
        """True: one sub-directory per PandaID; False: OneToOne, the job's files at the top."""
        return self._access_point.many_to_one

    # -- Harvester -> pilot ------------------------------------------------

    def jobs(self) -> list[JobSpec | InvalidJob]:
        """Every job definition of the worker, read afresh and validated; an invalid one says why
        (``code``: the PanDA error code to declare it failed with, ``diag``: the reason)."""
        return self._access_point.read_jobs()

    def pandaids(self) -> list[int]:
        """The PandaIDs this client writes for: every job with a definition in the access point."""
        return list(self._known_definitions())

    def job_dir(self, pandaid: int) -> Path:
        """Where the job's files go (outputs, log tarball): its sub-directory, or the top for OneToOne."""
        self._check_known(pandaid)
        return self._access_point.job_dir(pandaid)

    # -- pilot -> Harvester: per job -----------------------------------------

    def set_state(self, pandaid: int, status: str | JobStatus, **attributes: Any) -> None:
        """Write the job's ``worker_attributes.json`` whole and atomically: ``jobStatus``, the ``attributes``
        given in earlier calls for the job and these ``attributes`` (a name given again takes its new value).
        Harvester may never see a passing state (it reads on its own cycle): what ``running`` said, e.g.
        ``node`` or ``startTime``, still reaches PanDA with ``finished``.

        ``status``: starting, running, finished or failed (only the last two are final for Harvester; they
        are also flushed to disk before they count as written).
        """
        state = _status(status)
        if "jobStatus" in attributes:
            raise ValueError("set_state: give the job status as the 'status' argument, not as jobStatus=")
        for name, value in attributes.items():
            _check_attribute(name, value)
        with self._lock:
            merged = {**self._attributes.get(pandaid, {}), **attributes}
            self._write_job_file(pandaid, lambda: self._access_point.write_attributes(
                pandaid, {"jobStatus": state.value, **merged}, durable=state.value in FINAL_STATES))
            self._attributes[pandaid] = merged

    def write_job_report(self, pandaid: int, report: Any) -> None:
        """Write the job's ``jobReport.json`` atomically (Harvester stores it as the job's metaData), every
        executor's large ``logfileReport`` blanked as the pilot does (``report`` itself is left as it is)."""
        written = json.loads(_serialised(report, f"job report of job {pandaid}"))  # a copy, to trim
        if isinstance(written, dict):
            written = trim_logfile_reports(written)
        self._write_job_file(pandaid, lambda: self._access_point.write_job_report(pandaid, written))

    def file_declaration(self, path: Path | str, kind: str = "output", guid: str | None = None) -> dict[str, Any]:
        """The ``event_status.dump.json`` entry for the file at ``path`` (``kind`` output or log): absolute
        path, size and adler32 taken by reading it once, ``guid`` (a new one if not given: right for an
        output; the log tarball takes the job's ``job.log.guid``, its logGUID, as the pilot gives it). Declare
        it with :meth:`declare_files`."""
        path = self._readable_file(path)
        return declaration(_file_kind(kind), path, file_checksum(path), guid or "")

    def transferred_declaration(self, result: TransferResult, kind: str = "output",
                                guid: str | None = None) -> dict[str, Any]:
        """As :meth:`file_declaration`, for a file that :func:`hpcpilot.api.data.stage_out` just wrote into the
        access point: its size and adler32 come from ``result``, so the file is not read again (on a shared
        filesystem that read would cost as much as the copy)."""
        if not result.ok:
            raise ValueError(f"the transfer to {result.transfer.destination} failed ({result.error_code}: "
                             f"{result.error_diag}): there is nothing to declare")
        path = self._readable_file(result.transfer.destination)
        return declaration(_file_kind(kind), path, result, guid or "")  # result has the size and adler32

    def range_finished(self, range_id: str, path: Path | str, guid: str | None = None) -> dict[str, Any]:
        """The entry of a finished event range whose output is at ``path`` (type es_output; read once)."""
        return finished_entry(range_id, self._readable_file(path), guid)

    @staticmethod
    def ranges_failed(range_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Status-only entries (no file) for event ranges that failed."""
        if isinstance(range_ids, str):  # its characters would each be declared a failed range
            raise TypeError(f"ranges_failed: give a list of range IDs, e.g. [{range_ids!r}], not one str")
        return failed_entries(range_ids)

    def declare_files(self, pandaid: int, entries: Iterable[Mapping[str, Any]]) -> bool:
        """Hand ``entries`` to Harvester in the job's ``event_status.dump.json``, after any still waiting.

        True when Harvester can see them now; False when they wait behind a dump that is not the client's,
        which Harvester has not yet taken: :meth:`flush` sends them once it has. Every entry is checked
        first (ValueError / TypeError naming the entry and what is wrong); none is declared if one is bad.
        """
        self._check_known(pandaid)
        checked = [self._checked_entry(index, entry) for index, entry in enumerate(entries)]
        with self._lock:
            return self._publisher.declare(pandaid, checked)

    def flush(self) -> int:
        """Publish the entries that wait, for every job whose dump Harvester has taken; returns how many
        jobs still wait (0: all declared). Call it again later until it returns 0. Entries an earlier client
        of this worker left waiting (a wrapper restarted) go out too.

        Raises :class:`WorkerError` when the job definitions, read here if no call read them before, cannot
        be read: its ``exit_code`` says why (77 the access point unreadable or malformed, 64 no thread could be
        started to read them). Entries an earlier client left waiting are then not sent: call again later.
        An access point with no jobs is no error: nothing of theirs can wait (0).
        """
        try:
            self._known_definitions()  # takes those over
        except WorkerError as error:
            if error.exit_code != ExitCode.NO_JOBS:
                raise
        with self._lock:
            return self._publisher.flush()

    @property
    def waiting(self) -> set[int]:
        """PandaIDs whose declared entries Harvester cannot see yet."""
        return self._publisher.waiting

    # -- pilot -> Harvester: the worker ------------------------------------

    def heartbeat(self) -> None:
        """Touch ``worker_heartbeat.json`` (Harvester looks at its mtime where the queue sets worker_heartbeat)."""
        self._access_point.touch_heartbeat()

    def request_kill(self, reason: str) -> None:
        """Ask Harvester to cancel the worker's batch job (``kill_worker.json``; ``reason`` is for people)."""
        self._access_point.request_kill(reason)

    # -- event service (files at the top; Harvester serves OneToOne workers) -

    def request_event_ranges(self, pandaid: int, n_ranges: int, task_id: int | str | None = None,
                             jobset_id: int | str | None = None) -> bool:
        """Ask Harvester for ``n_ranges`` event ranges of the job (``worker_requestevents.json``).

        ``task_id``/``jobset_id`` default to the job definition's. False when an earlier request is still
        there (Harvester deletes it once served): nothing is written, ask again later. TypeError when
        ``n_ranges`` is not an int, ValueError when it is under 1.
        """
        self._check_known(pandaid)
        if isinstance(n_ranges, bool) or not isinstance(n_ranges, int):
            raise TypeError(f"request_event_ranges: n_ranges {n_ranges!r}: give the number of ranges, an int")
        if task_id is None or jobset_id is None:
            job = self._valid_job(pandaid, "request_event_ranges needs task_id and jobset_id")
            # as the pilot asks: a NULL ID goes out as Harvester wrote it
            task_id = job.task_id or "NULL" if task_id is None else task_id
            jobset_id = job.jobset_id or "NULL" if jobset_id is None else jobset_id
        return request_ranges(self.root, self.files, pandaid, n_ranges, task_id, jobset_id)

    def event_ranges(self, pandaid: int) -> list[EventRange] | None:
        """The ranges of Harvester's latest answer for the job (``JobsEventRanges.json``, validated:
        InvalidEventRange names a bad one). None: no answer yet (or one half-written: read again later);
        []: no more events. The answer stays until the next one: tell new ranges by their eventRangeID."""
        self._check_known(pandaid)
        return read_ranges(self.root, self.files, pandaid)

    # -- checks ------------------------------------------------------------

    def _known_definitions(self) -> dict[int, RawJob | InvalidJob]:
        with self._lock:
            if self._definitions is None:
                items = self._access_point.read_definitions()
                definitions = {item.pandaid: item for item in items if item.pandaid}
                # Entries an earlier client (a wrapper that was restarted) left waiting are taken over: published
                # with this one's, never replaced by them.
                self._publisher.adopt(definitions)
                self._definitions = definitions
            return self._definitions

    def _check_known(self, pandaid: int) -> None:
        if isinstance(pandaid, bool) or not isinstance(pandaid, int):
            raise TypeError(f"PandaID {pandaid!r}: must be an int")
        known = self._known_definitions()
        if pandaid not in known:
            raise ValueError(f"PandaID {pandaid} is not a job of the access point {self.root} (its jobs: "
                             f"{', '.join(map(str, sorted(known))) or 'none'}): Harvester would read nothing "
                             "written for it")

    def _valid_job(self, pandaid: int, need: str) -> JobSpec:
        job = self._access_point.validated(self._known_definitions()[pandaid])
        if isinstance(job, InvalidJob):
            raise ValueError(f"{need}: job {pandaid} has an invalid definition ({job.diag}); give them")
        return job

    def _write_job_file(self, pandaid: int, write: Callable[[], None]) -> None:
        """Run ``write`` once the job's directory is known to be inside the access point and there (an invalid
        job's may be missing: it is made, as the pilot does to declare such a job failed)."""
        self._check_known(pandaid)
        if not self._access_point.job_dir_is_inside(pandaid):
            raise ValueError(f"job directory {self._access_point.job_dir(pandaid)} is a symlink out of the access "
                             f"point {self.root}: nothing is written there")
        self._access_point.job_dir(pandaid).mkdir(mode=0o755, parents=True, exist_ok=True)
        write()

    def _readable_file(self, path: Path | str) -> Path:
        path = self._declarable(Path(path).absolute(), f"file {path}")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such regular file to declare")
        return path

    def _declarable(self, path: Path, what: str) -> Path:
        """A file Harvester may stage out: inside the access point, and none of the files Harvester or the pilot
        keep there (the job spec, with its secrets, would go to storage as an output), by name or by link; under
        a path Harvester can store (UTF-8)."""
        if not is_utf8(str(path)):
            raise ValueError(f"{what}: its path {os.fsencode(path)!r} is not UTF-8, which Harvester cannot store "
                             f"(its database takes UTF-8): give it under the access point as {self.root} names it")
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"{what} is outside the access point {self.root}: Harvester stages out from the "
                             "shared access point; copy the file into the job's directory (job_dir) first")
        if self._access_point.is_reserved(path.name) or self._access_point.is_reserved(resolved.name):
            raise ValueError(f"{what} is a file Harvester or the pilot keeps for itself ({resolved.name}), "
                             "not one to stage out: give the output another name")
        return path

    def _checked_entry(self, index: int, entry: Mapping[str, Any]) -> dict[str, Any]:
        what = f"event_status entry {index}"
        if not isinstance(entry, Mapping):
            raise TypeError(f"{what}: must be a dict, got {type(entry).__name__}")
        entry = dict(entry)
        _serialised(entry, what)
        if "filetype" in entry:
            raise ValueError(f"{what}: has 'filetype'; Harvester reads the key 'type' (and drops the entry without it)")
        if "path" in entry:
            self._check_file_entry(entry, f"{what} ({entry.get('path')})")
        else:
            _require(entry, ("eventRangeID", "eventStatus"), f"{what}: an entry without 'path' is an event status")
        return entry

    def _check_file_entry(self, entry: dict[str, Any], what: str) -> None:
        if entry.get("type") not in FILE_TYPES:
            raise ValueError(f"{what}: 'type' {entry.get('type')!r}: choose one of {', '.join(FILE_TYPES)}")
        if not isinstance(entry["path"], str) or not Path(entry["path"]).is_absolute():
            raise ValueError(f"{what}: 'path' must be an absolute path (Harvester stages out from it as given)")
        self._declarable(Path(entry["path"]), what)
        chksum = entry.get("chksum")
        if chksum is not None and not (isinstance(chksum, str) and _ADLER32.fullmatch(chksum)):
            raise ValueError(f"{what}: 'chksum' {chksum!r}: adler32 as 8 lower-case hex digits, without 'ad:'")
        fsize = entry.get("fsize")
        if fsize is not None and (isinstance(fsize, bool) or not isinstance(fsize, int) or fsize < 0):
            raise ValueError(f"{what}: 'fsize' {fsize!r}: the size in bytes, an int")
        if entry["type"] in EVENT_FILE_TYPES:
            _require(entry, ("eventRangeID", "eventStatus"), f"{what}: type {entry['type']}")


def _file_kind(kind: str) -> str:
    if kind not in ("output", "log"):
        raise ValueError(f"file_declaration: kind {kind!r}: choose output or log (for an event range's output "
                         "use range_finished)")
    return kind


def _status(status: str | JobStatus) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        raise ValueError(f"job status {status!r}: choose one of {', '.join(STATES)}") from None


def _check_attribute(name: str, value: Any) -> None:
    """worker_attributes.json is one flat object whose values Harvester forwards to PanDA as they are."""
    if name in _TAKEN_BY_HARVESTER:
        raise ValueError(f"attribute {name}: Harvester takes it as {_TAKEN_BY_HARVESTER[name]}")
    if not isinstance(value, _SCALARS):
        raise TypeError(f"attribute {name}: {type(value).__name__} values cannot go into worker_attributes.json, "
                        "a flat object: give a string, number, boolean or None (jobMetrics: one 'key=value ...' string)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"attribute {name}: {value} is not a number JSON can carry")


def _serialised(content: Any, what: str) -> bytes:
    """``content`` as JSON; TypeError naming ``what`` when it cannot be."""
    try:
        return json_bytes(content)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} is not JSON-serialisable: {error}") from None


def _require(entry: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [key for key in keys if not isinstance(entry.get(key), str) or not entry[key]]
    if missing:
        raise ValueError(f"{what}: needs {' and '.join(repr(k) for k in missing)} (text); "
                         f"Harvester reads {' and '.join(keys)}")
