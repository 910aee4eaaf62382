"""Rank 0's side of an event service job: the source of its ranges, the answers to every rank, the declarations.

Every range received is declared, finished or failed, before the job's
final state: when the job ends early (a graceful stop, a failure), the
ranges received but never started (queued on a rank, on their way to it, or
still at rank 0) are declared failed. The job itself is final then and no
rerun picks them up, but PanDA hands failed ranges out again to another job.
The dump entry of a failed range is status only (PROTOCOL.md, section 2:
Harvester forwards ``eventRangeID`` and ``eventStatus`` of each entry and
nothing else), so its PanDA error code and diagnostic go to the job's log.

Ranks talk to rank 0 on one tag, so their messages arrive in the order they
were sent (MPI orders messages between two ranks only within a tag): a
rank's last results always come before its "done".
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomicfile import read_bytes, read_json
from ..errors import ErrorCode, PilotError
from ..eventservice import EventRange, RangeFeed, RejectedRange
from ..eventservice.declarations import failed_entries
from ..eventservice.harvester_events import append_lines
from ..jobs import JobSpec
from ..mpi import any_source, new_status
from .jobflow import RankContext

log = logging.getLogger(__name__)

TAG_REPORT, TAG_RANGE = 31, 32  # rank -> rank 0: ("want" | "entries" | "done", body); rank 0 -> rank: answers
END_OF_JOB = "end of job"  # rank 0's last answer to a rank that is done: no more ranges will follow
DECLARE_EVERY = 0.2  # seconds: how long finished ranges may wait to be declared together
DECLARE_SHARE = 0.1  # of rank 0's time, at most, for declaring (see declaration_due)
FEED_POLL_SECONDS = 0.5
WAIT = object()  # "no range yet, ask again later"


@dataclass
class RankOutcome:
    """What one rank did for the job, sent to rank 0 when it is done."""

    rank: int
    cores: int = 0  # its payload's: the job's coreCount is every rank's
    memory: dict[str, int] = field(default_factory=dict)  # its payload's summary (maxRSS...), across restarts
    error: PilotError | None = None
    received: int = 0  # answers taken from rank 0: those sent after them never reached the rank
    cpu_seconds: float = 0.0  # of its payloads: the job's CPU time is every rank's

    @property
    def failure_code(self) -> int:
        """The code for ranges this rank received and could not run."""
        return self.error.code if self.error else ErrorCode.ES_RECOVERABLE


def failed_ranges(job_log: Any, range_ids: list[str], code: int, diag: str) -> list[dict]:
    """Status-only dump entries for ranges that failed; their code and diagnostic are logged."""
    if range_ids:
        job_log.warning("%d event range(s) failed (%d: %s): %s", len(range_ids), code, diag, ", ".join(range_ids))
    return failed_entries(range_ids)


class RangeSource:
    """Ranges of one job from Harvester's files, minus those an earlier run already declared.

    Every range received is also kept in a journal in the job directory:
    Harvester's answer file holds only its latest answer, so after a kill the
    ranges received but not finished would otherwise be lost to the rerun.
    """

    def __init__(self, ctx: RankContext, job: JobSpec, batch: int, filing: Callable[..., Any]):
        self.filing = filing  # Supervisor's: Harvester's files and the journals, fsynced, may take seconds
        self.feed = RangeFeed(ctx.access_point.root, ctx.config.files, job.pandaid, job.task_id or "NULL",
                              job.jobset_id or "NULL", batch=batch)
        self.journal = ctx.access_point.path(job.pandaid, ctx.config.files.received_ranges)
        self.error: PilotError | None = None  # its journal cannot be kept: no more ranges are handed out
        declared, received = filing(lambda: (declared_ranges(ctx, job.pandaid), self._read_journal()),
                                    "reading the event ranges an earlier run received and declared")
        self.ranges: deque[EventRange] = deque(r for r in received if r.eventRangeID not in declared)
        self.known = set(declared) | {r.eventRangeID for r in self.ranges}
        # what an earlier run of this job declared still counts for the job
        self.earlier = [r for r in received if declared.get(r.eventRangeID) == "finished"]
        self.earlier_failed = sum(status == "failed" for status in declared.values())
        self.waiting_since: float | None = None  # since when Harvester's answer is awaited with nothing at hand
        self.wait_timeout = ctx.config.event_wait_timeout
        self.next_poll = 0.0
        self.handed_out = 0
        self.rejected: list[RejectedRange] = []  # malformed ranges with an ID, to be declared failed

    def take(self) -> Any:
        """A range, None when there will be no more, or WAIT."""
        if self.error is not None:
            return None
        if not self.ranges and time.monotonic() >= self.next_poll:
            self.next_poll = time.monotonic() + FEED_POLL_SECONDS
            self.filing(self._poll, "reading and asking Harvester for event ranges")
        if self.ranges:
            self.waiting_since = None
            self.handed_out += 1
            return self.ranges.popleft()
        if self.feed.exhausted or self._waited_too_long():
            return None
        return WAIT

    def take_rejected(self) -> list[RejectedRange]:
        rejected, self.rejected = self.rejected, []
        return rejected

    def _poll(self) -> None:
        """Harvester's new ranges, kept in the journal; a request for more when few are left."""
        self._receive([r for r in self.feed.new_ranges() if r.eventRangeID not in self.known])
        self._reject(self.feed.take_rejected())

    def _waited_too_long(self) -> bool:
        """Whether Harvester left this wait for ranges (not the job) unanswered longer than the timeout."""
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        return time.monotonic() - self.waiting_since > self.wait_timeout

    def _reject(self, rejected: list[RejectedRange]) -> None:
        """Those with an ID are to be declared failed, once; without one there is nothing to declare."""
        for entry in rejected:
            if entry.range_id is not None and entry.range_id not in self.known:
                self.known.add(entry.range_id)
                self.rejected.append(entry)


    def _receive(self, ranges: list[EventRange]) -> None:
        if ranges:
            try:
                append_lines(self.journal, [json.dumps(r.to_dict()) for r in ranges])
            except OSError as error:  # the ranges are kept: they are declared, failed at least, with the job
                self._journal_failed(error)
            self.known.update(r.eventRangeID for r in ranges)
            self.ranges.extend(ranges)

    def _read_journal(self) -> list[EventRange]:
        try:
            return _read_range_journal(self.journal)
        except OSError as error:
            self._journal_failed(error)
            return []

    def _journal_failed(self, error: OSError) -> None:
        if self.error is None:
            self.error = PilotError(ErrorCode.FILE_HANDLING, f"cannot keep the journal of received event ranges "
                                    f"{self.journal}: {error.strerror or error}")
            log.error("job %s: %s; no more ranges are handed out", self.feed.pandaid, self.error.diag)


def _read_range_journal(path: Path) -> list[EventRange]:
    """Ranges an earlier run received; a line torn by a kill is skipped."""
    ranges = []
    try:
        lines = read_bytes(path).decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            ranges.append(EventRange.from_dict(json.loads(line)))
        except (ValueError, TypeError):
            continue
    return ranges


def declared_ranges(ctx: RankContext, pandaid: int) -> dict[str, str]:
    """{range ID: status} of the ranges in the dump, in what Harvester took, and staged: never to be
    processed again."""
    files = [*ctx.publisher.dumps_seen(pandaid), ctx.publisher.journal_path(pandaid)]
    found: dict[str, str] = {}
    for path in files:
        try:
            content = read_json(path)
        except (OSError, ValueError):
            continue
        lists = [entries for entries in content.values() if isinstance(entries, list)] \
            if isinstance(content, dict) else []
        found.update((e["eventRangeID"], e.get("eventStatus")) for entries in lists for e in entries
                     if isinstance(e, dict) and isinstance(e.get("eventRangeID"), str))
    return found


def declaration_due(started: float, ended: float) -> float:
    """When the declaration after one made from ``started`` to ``ended`` is due: DECLARE_EVERY later, or later
    still when it was slow. While Harvester has not taken the dump, every declaration takes it back and rewrites
    it with all the ranges declared since, which grows with them (81 ms at 10,000): spaced out, they keep to
    DECLARE_SHARE of rank 0's time, and Harvester, which takes the dump once per cycle, loses nothing."""
    return ended + max(DECLARE_EVERY, (ended - started) / DECLARE_SHARE)


class AnswerLedger:
    """Per rank, rank 0's answers in the order given, as long as the rank may not have taken them: those it
    never took are failed when it ends. A rank asking again says how many it took, and those are forgotten
    (kept, they added up to every range of a long job)."""

    def __init__(self, ranks: int):
        self._given: dict[int, deque[EventRange | None]] = {rank: deque() for rank in range(ranks)}
        self._forgotten = dict.fromkeys(range(ranks), 0)

    def give(self, rank: int, answer: EventRange | None) -> None:
        self._given[rank].append(answer)

    def taken(self, rank: int, received: int) -> None:
        given = self._given[rank]
        while self._forgotten[rank] < received and given:
            given.popleft()
            self._forgotten[rank] += 1

    def never_taken(self, rank: int, received: int) -> list[EventRange]:
        """The ranges given to a rank that ended having taken ``received`` answers; it is then forgotten."""
        self.taken(rank, received)
        return [answer for answer in self._given.pop(rank) if answer is not None]

    def kept(self, rank: int) -> int:
        return len(self._given[rank])


@dataclass
class DeclaredCounts:
    """The ranges declared to Harvester (staged for the dump), by status, and the events of those finished:
    what the job reports. A range the payload finished whose entry could not be staged is not among them."""

    finished: int = 0
    failed: int = 0
    events: int = 0

    def add(self, entries: list[dict], events_of: dict[str, int]) -> None:
        """Count ``entries`` just staged, taking each range's events from ``events_of``."""
        for entry in entries:
            events = events_of.pop(entry["eventRangeID"], 0)
            if entry["eventStatus"] == "finished":
                self.finished += 1
                self.events += events
            else:
                self.failed += 1


class Dispatcher:
    """Rank 0's side: answers every rank's request for a range, declares what ranks report."""

    def __init__(self, ctx: RankContext, comm: Any, job: JobSpec, local_give: Callable[[Any], None], job_log: Any,
                 filing: Callable[..., Any]):
        self.ctx, self.comm, self.job, self.job_log = ctx, comm, job, job_log
        self.filing = filing  # Supervisor's, for its declarations: each fsyncs a file on the shared filesystem
        self.source = RangeSource(ctx, job, batch=max(8, 4 * comm.size), filing=filing)
        self.local_give = local_give
        self.wants: deque[int] = deque()
        self.answers = AnswerLedger(comm.size)
        self.pending_entries: list[dict] = []
        self.next_declaration = time.monotonic() + DECLARE_EVERY
        self.outcomes: dict[int, RankOutcome] = {}
        self.declared = DeclaredCounts()
        self.events_of: dict[str, int] = {}  # of each range handed out and not declared yet
        self.error: PilotError | None = None  # ranges cannot be declared
        self.stopping = False
        self._sent: list[Any] = []

    def want(self, rank: int, received: int) -> None:
        """Rank ``rank`` asks for another range, having taken ``received`` answers so far."""
        self.wants.append(rank)
        self.answers.taken(rank, received)

    def add_entries(self, entries: list[dict]) -> None:
        self.pending_entries.extend(entries)

    def serve(self) -> None:
        self._receive()
        while self.wants:
            answer = None if self.stopping else self.source.take()
            if answer is WAIT:
                break
            self._give(self.wants.popleft(), answer)
        for rejected in self.source.take_rejected():
            self._fail([rejected.range_id], ErrorCode.ES_FATAL, f"malformed event range: {rejected.reason}")
        if self.pending_entries and time.monotonic() >= self.next_declaration:
            self.declare_pending()

    def declare_pending(self) -> None:
        started = time.monotonic()
        if self.pending_entries and self.error is None:
            self.filing(self._declare, "declaring event ranges")
        self.next_declaration = declaration_due(started, time.monotonic())

    def _declare(self) -> None:
        try:
            self.ctx.publisher.stage(self.job.pandaid, self.pending_entries)
            self.declared.add(self.pending_entries, self.events_of)  # staged: Harvester will see them
            self.pending_entries = []
            self.ctx.publisher.publish(self.job.pandaid)
        except OSError as error:  # no range can be declared: none is handed out any more
            self.error = PilotError(ErrorCode.FILE_HANDLING, f"cannot declare event ranges in "
                                    f"{self.ctx.publisher.journal_path(self.job.pandaid)}: {error.strerror or error}")
            self.job_log.error("%s", self.error.diag)
            self.stopping = True

    def all_done(self) -> bool:
        return len(self.outcomes) == self.comm.size

    def rank_done(self, rank: int, outcome: RankOutcome) -> None:
        """The rank takes no more answers: none go to it any more, and the ranges it never took are failed."""
        self.outcomes[rank] = outcome
        self.wants = deque(asker for asker in self.wants if asker != rank)
        never_taken = self.answers.never_taken(rank, outcome.received)
        self._fail([r.eventRangeID for r in never_taken], outcome.failure_code, f"rank {rank} ended before taking them")
        if rank != 0:
            self._sent.append(self.comm.isend(END_OF_JOB, dest=rank, tag=TAG_RANGE))

    def wait_for_sends(self) -> None:
        """Every answer, END_OF_JOB included, delivered: none is left in flight when the job ends."""
        for request in self._sent:
            request.wait()
        self._sent = []

    def first_error(self) -> PilotError | None:
        """The error that ends the job, if a rank had one."""
        errors = [self.source.error, self.error, *(o.error for o in self.outcomes.values())]
        return next((error for error in errors if error is not None), None)

    def fail_unstarted(self, code: int) -> None:
        """Ranges still here when every rank is done (the job ended early): declared failed, not lost."""
        unstarted, self.source.ranges = list(self.source.ranges), deque()
        self._fail([r.eventRangeID for r in unstarted], code, "the job ended before they were handed out")

    def _fail(self, range_ids: list[str], code: int, diag: str) -> None:
        self.add_entries(failed_ranges(self.job_log, range_ids, code, diag))

    def _give(self, rank: int, answer: EventRange | None) -> None:
        self.answers.give(rank, answer)
        if answer is not None:
            self.events_of[answer.eventRangeID] = answer.n_events
        if rank == 0:
            self.local_give(answer)
        else:
            self._sent.append(self.comm.isend(answer, dest=rank, tag=TAG_RANGE))

    def _receive(self) -> None:
        """Every rank's messages, in the order each rank sent them."""
        if self.comm.size == 1:
            return
        while self.comm.iprobe(source=any_source(), tag=TAG_REPORT):
            status = new_status()
            kind, body = self.comm.recv(source=any_source(), tag=TAG_REPORT, status=status)
            rank = status.Get_source()
            if kind == "want":
                self.want(rank, body)
            elif kind == "entries":
                self.add_entries(body)
            else:
                self.rank_done(rank, body)
