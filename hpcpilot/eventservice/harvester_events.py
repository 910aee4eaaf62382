"""Asking Harvester for event ranges and reading its answers (shared/PROTOCOL.md, section 2).

Both files sit at the top of the access point (an event-service job has a
worker of its own):

- ``worker_requestevents.json`` (pilot -> Harvester), published atomically
  and only when no earlier request is still there; Harvester deletes it once
  it has answered;
- ``JobsEventRanges.json`` (Harvester -> pilot), ``{"<PandaID>": [range, ...]}``.

How the pilot tells what is new in JobsEventRanges.json
--------------------------------------------------------
Harvester rewrites the whole file *in place* for every answer (it opens it
for writing, which truncates, then dumps the JSON), and deletes the request
file afterwards. So the file holds only the latest answer, it stays there
until the next one, and a read may catch it half-written.

- A half-written file is a prefix of a JSON object, which never parses:
  an unparsable file means "not yet", read again later.
- New content is recognised by ``eventRangeID``: the feed remembers every ID
  it has taken and ignores those on re-reads. PanDA's range IDs end with the
  attempt number, so a retried range comes back under a new ID. File
  metadata is not used: an in-place write keeps the inode, shared-filesystem
  mtimes are coarse, and two answers can have the same size.
- A file whose ranges are all known means "nothing new" (e.g. the previous
  answer, read while a request is pending). Only an empty list means
  "no more events".
- Ranges already in the file when the feed starts (pre-placed by Harvester)
  are taken like any answer. An optional journal of taken IDs lets a
  restarted pilot skip the ranges its predecessor took.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomicfile import publish_json_if_absent, read_bytes, read_json
from ..config import HarvesterFiles
from .ranges import EventRange, InvalidEventRange, is_valid_range_id

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_WAIT_TIMEOUT = 600.0
# Polls in a row a file may stay unreadable before the pilot says so: a half-written answer is for a moment.
UNREADABLE_PATIENCE = 5


def request_ranges(ap_root: Path, files: HarvesterFiles, pandaid: int, n_ranges: int,
                   task_id: int | str, jobset_id: int | str) -> bool:
    """Ask Harvester for ``n_ranges`` ranges; False if an earlier request is still waiting to be served."""
    if n_ranges < 1:
        raise ValueError(f"n_ranges {n_ranges}: must be at least 1")
    request = {str(pandaid): {"nRanges": int(n_ranges), "taskID": _number(task_id), "jobsetID": _number(jobset_id)}}
    published = publish_json_if_absent(Path(ap_root) / files.request_events, request)
    if published:
        log.info("asked Harvester for %d event ranges of job %s", n_ranges, pandaid)
    return published


def _number(value: int | str) -> int | str:
    """An ID as a JSON number, as PanDA's job definition carries it and Harvester's own requests pass it on:
    Harvester hands it to the PanDA server unchanged, whose acquire_event_ranges takes only an int."""
    text = str(value).strip()
    return int(text) if text.isascii() and text.isdigit() else value


def read_answer(ap_root: Path, files: HarvesterFiles, pandaid: int,
                watch: "UnreadableFile | None" = None) -> list[Any] | None:
    """The raw range entries for ``pandaid``, or None if there is no complete answer for it (yet).

    ``watch`` hears whether the file could be read, to warn when it stays unreadable.
    """
    path = Path(ap_root) / files.event_ranges
    watch = watch or UnreadableFile(path)
    try:
        content = read_json(path)
    except FileNotFoundError:
        watch.fine()
        return None
    except (OSError, ValueError) as error:  # half-written by Harvester, most likely
        log.debug("%s not readable yet: %s", path.name, error)
        watch.unreadable(str(error))
        return None
    shape = _wrong_shape(content, pandaid)
    if shape:  # never a half-written answer (that does not parse): Harvester's next answer may replace it
        watch.unreadable(shape)
        return None
    watch.fine()
    return content.get(str(pandaid))


def _wrong_shape(content: Any, pandaid: int) -> str | None:
    """What makes parsed JSON no answer of Harvester's for ``pandaid``; None if it is one."""
    if not isinstance(content, dict):
        return f"a JSON {type(content).__name__}, not an object of range lists by PandaID"
    entries = content.get(str(pandaid))
    if entries is not None and not isinstance(entries, list):
        return f"the ranges of job {pandaid} are a JSON {type(entries).__name__}, not a list"
    return None


def read_ranges(ap_root: Path, files: HarvesterFiles, pandaid: int) -> list[EventRange] | None:
    """The ranges for ``pandaid`` in JobsEventRanges.json; None means "not yet"; [] means no more events.

    Raises InvalidEventRange if an entry is not a valid range.
    """
    entries = read_answer(ap_root, files, pandaid)
    return None if entries is None else [EventRange.from_dict(entry) for entry in entries]


class UnreadableFile:
    """Warns, once, when a file Harvester writes stays unreadable for UNREADABLE_PATIENCE polls in a row (a
    directory, text that is not JSON, JSON of another shape): else the job would wait silently until the wait
    timeout fails it, or say so at every poll."""

    def __init__(self, path: Path):
        self.path = path
        self.polls = 0

    def fine(self) -> None:
        self.polls = 0

    def unreadable(self, reason: str) -> None:
        self.polls += 1
        if self.polls == UNREADABLE_PATIENCE:
            log.warning("%s stays unreadable (%s); waiting for Harvester to replace it", self.path, reason)


@dataclass(frozen=True)
class RejectedRange:
    """An entry of Harvester's answer that is not a usable range; declare it failed if it has an ID."""

    range_id: str | None
    reason: str


class RangeFeed:
    """New ranges of one job, fetched from Harvester batch by batch; see the module docstring.

    :meth:`next_range` is the provider for :class:`~.channel.EventChannel`: it
    blocks until a range arrives, and returns None once Harvester said there
    are no more, the feed is closed, or ``wait_timeout`` passed without an
    answer (then :attr:`timed_out` is set).
    """

    def __init__(self, ap_root: Path, files: HarvesterFiles, pandaid: int, task_id: int | str,
                 jobset_id: int | str, batch: int = DEFAULT_BATCH, low_water: int | None = None,
                 poll_interval: float = DEFAULT_POLL_INTERVAL, wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
                 journal: Path | None = None):
        self.ap_root = Path(ap_root)
        self.files = files
        self.pandaid = pandaid
        self.task_id = task_id
        self.jobset_id = jobset_id
        self.batch = batch
        # Ask for the next batch while this many are still buffered, so the payload does not wait.
        self.low_water = max(1, batch // 2) if low_water is None else low_water
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.journal = journal
        self.rejected: list[RejectedRange] = []
        self.timed_out = False
        self._buffer: list[EventRange] = []
        self._seen: set[str] = _read_journal(journal)
        self._exhausted = False
        self._request_pending = False
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._answer_watch = UnreadableFile(self.ap_root / files.event_ranges)
        self._request_watch = UnreadableFile(self.ap_root / files.request_events)

    @property
    def exhausted(self) -> bool:
        """Harvester answered with an empty list: no more events will come."""
        return self._exhausted

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def taken(self) -> int:
        """How many distinct range IDs the feed has read (valid or not)."""
        return len(self._seen)

    def poll(self) -> int:
        """Read the answer file once, keep what is new, ask for more when running low; returns how many are new."""
        with self._lock:
            served = self._request_pending and not (self.ap_root / self.files.request_events).exists()
            entries = read_answer(self.ap_root, self.files, self.pandaid, self._answer_watch)
            new = 0 if entries is None else self._absorb(entries)
            if served:
                self._request_pending = False
            elif self._request_pending:
                self._check_request_file()
            self._request_if_low()
            return new

    def new_ranges(self) -> list[EventRange]:
        """Poll once and take every range not handed out before."""
        self.poll()
        with self._lock:
            ranges, self._buffer = self._buffer, []
        self._request_if_low()
        return ranges

    def next_range(self, timeout: float | None = None) -> EventRange | None:
        """The next range, waiting for Harvester if needed; None when there will be none."""
        deadline = time.monotonic() + (self.wait_timeout if timeout is None else timeout)
        while True:
            with self._lock:
                if self._buffer:
                    event_range = self._buffer.pop(0)
                    self._request_if_low()
                    return event_range
                if self._exhausted or self._closed.is_set():
                    return None
            if self.poll() or self._exhausted:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._give_up()
            self._closed.wait(min(self.poll_interval, remaining))

    def take_rejected(self) -> list[RejectedRange]:
        """The entries rejected since the last call, to be declared failed."""
        with self._lock:
            rejected, self.rejected = self.rejected, []
        return rejected

    def close(self) -> None:
        """Wake a waiting :meth:`next_range`, which then returns None."""
        self._closed.set()

    def _give_up(self) -> None:
        self.timed_out = True
        log.warning("no event ranges from Harvester for job %s within %.0f s; giving up waiting",
                    self.pandaid, self.wait_timeout)
        return None

    def _request_if_low(self) -> None:
        with self._lock:
            if self._exhausted or self._request_pending or self._closed.is_set():
                return
            if len(self._buffer) >= self.low_water:
                return
            if not request_ranges(self.ap_root, self.files, self.pandaid, self.batch, self.task_id, self.jobset_id):
                log.debug("a request for ranges is still waiting to be served")
            # Either ours or one left by an earlier pilot: in both cases wait for Harvester to serve it.
            self._request_pending = True

    def _check_request_file(self) -> None:
        """Harvester deletes a request it served, and takes only a regular file for one: anything else
        there stops every request."""
        path = self.ap_root / self.files.request_events
        if path.exists() and not path.is_file():
            self._request_watch.unreadable("not a regular file: no request can be made while it is there")
        else:
            self._request_watch.fine()

    def _absorb(self, entries: list[Any]) -> int:
        if not entries:
            if not self._exhausted:
                log.info("Harvester has no more event ranges for job %s", self.pandaid)
            self._exhausted = True
            return 0
        fresh = self._unseen(entries)
        for key, entry in fresh:
            self._take(entry)
        _append_journal(self.journal, [key for key, _ in fresh if is_valid_range_id(key)])
        if fresh:
            log.info("got %d new event ranges for job %s", len(fresh), self.pandaid)
        return len(fresh)

    def _unseen(self, entries: list[Any]) -> list[tuple[str, Any]]:
        """(identity, entry) of the entries not read before, each once: a range repeated within one answer
        would otherwise run, and be declared, twice."""
        unseen = []
        for entry in entries:
            key = _identity(entry)
            if key in self._seen:
                if any(key == seen_key for seen_key, _ in unseen):
                    log.warning("job %s: Harvester's answer holds event range %s more than once; repeat ignored",
                                self.pandaid, key)
                continue
            self._seen.add(key)
            unseen.append((key, entry))
        return unseen

    def _take(self, entry: Any) -> None:
        try:
            self._buffer.append(EventRange.from_dict(entry))
        except InvalidEventRange as error:
            range_id = entry.get("eventRangeID") if isinstance(entry, dict) else None
            range_id = range_id if isinstance(range_id, str) and is_valid_range_id(range_id) else None
            log.error("job %s: unusable event range from Harvester: %s", self.pandaid, error)
            self.rejected.append(RejectedRange(range_id, str(error)))


def _identity(entry: Any) -> str:
    """The eventRangeID; an entry without a usable one is known by its whole content."""
    range_id = entry.get("eventRangeID") if isinstance(entry, dict) else None
    if isinstance(range_id, str):
        return range_id
    return "#" + json.dumps(entry, sort_keys=True, default=str)


def _read_journal(journal: Path | None) -> set[str]:
    if journal is None:
        return set()
    try:
        return {line for line in read_bytes(journal).decode("utf-8", "replace").splitlines() if line}
    except FileNotFoundError:
        return set()


def _append_journal(journal: Path | None, keys: list[str]) -> None:
    if journal is None or not keys:
        return
    journal.parent.mkdir(parents=True, exist_ok=True)
    append_lines(journal, keys)


def append_lines(path: Path, lines: list[str]) -> None:
    """Append ``lines`` to a journal, each on a line of its own, also after a last line torn by a crash
    mid-append (glued to it, the first new line would be lost with it)."""
    with open(path, "a+b") as handle:  # "a": every write goes to the end, wherever the reads left off
        prefix = b"\n" if _last_line_torn(handle) else b""
        handle.write(prefix + "".join(line + "\n" for line in lines).encode())


def _last_line_torn(handle: Any) -> bool:
    if handle.seek(0, os.SEEK_END) == 0:
        return False
    handle.seek(-1, os.SEEK_END)
    return handle.read(1) != b"\n"
