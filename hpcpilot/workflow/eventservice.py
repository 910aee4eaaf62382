"""Event service jobs: every rank runs a payload on the ranges of one job; rank 0 hands them out.

Rank 0 reads ranges from Harvester (``JobsEventRanges.json``, asking through
``worker_requestevents.json``) and gives one to whichever payload asks next,
its own included, so a slow rank never holds up the others. Each rank copies
a finished range's output to the job directory and tells rank 0, which
declares it in ``event_status.dump.json`` within a fraction of a second.
A killed allocation loses only the ranges in flight: an earlier run's
declared ranges are not handed out again.

Rank 0's side, the source of ranges and the declarer, is esdispatch's.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import payload, staging
from ..checksums import KERNEL_CHUNK_SIZE, NEVER, CopyCancelled, RunningChecksum
from ..errors import ErrorCode, PilotError
from ..memorymonitor import summed_summaries
from ..eventservice.channel import MAX_SOCKET_PATH
from ..eventservice import EventChannel, EventRange, RangeFailed, RangeFinished, RangesLost
from ..eventservice.declarations import finished_entry
from ..jobs import JobSpec
from ..jobstate import JobRun
from ..stopping import StopRequest
from . import jobflow
from .esdispatch import END_OF_JOB, TAG_RANGE, TAG_REPORT, Dispatcher, RankOutcome, failed_ranges
from .jobflow import RankContext
from .workers import Hung

log = logging.getLogger(__name__)

TICK_SECONDS = 0.01
PREFETCH = 8  # ranges a rank holds ready, so its payload never waits for a round trip to rank 0


def staged_name(name: str, range_id: str) -> str:
    """The name of a range's output in the job directory: the payload's, if it ends with ``.<rangeID>``, else
    that name with ``.<rangeID>`` appended (Harvester's convention for event outputs). Payloads may give every
    range's output the same name (``<rangeID>/out.root``); staged under that name, each would overwrite the
    one declared before. (A name that merely begins with one range's ID may end with another's.)

    The part after the last dot is the range's: a dot in the ID is written ``~`` (no ID has one), else the
    ranges ``x`` and ``y.x`` could both be staged as ``out.y.x``. PanDA's IDs have no dot: their names are
    as Harvester's convention has them."""
    suffix = "." + range_id.replace(".", RANGE_ID_DOT)
    return name if name.endswith(suffix) else name + suffix


RANGE_ID_DOT = "~"  # outside the characters of a range ID (ranges.is_valid_range_id); safe in URLs and paths


def _socket_path(scratch: Path) -> Path | None:
    """The channel's socket in the job's scratch; None (a private temp dir) where that path is too
    long for a UNIX socket address."""
    path = scratch / "channel"
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def _outside_scratch(channel_address: str, scratch: Path) -> list[Path]:
    """The channel's directory where it is not the job's scratch: a payload in a container must have it
    bound too (podman and shifter bind only what they are told; Apptainer /tmp, not any temp dir)."""
    directory = Path(channel_address).parent
    return [] if directory.is_relative_to(scratch) else [directory]


# -- every rank: its payload and its channel ------------------------------------------------------------------


@dataclass
class RankEventWork:
    """One rank's payload for the job, fed through an event channel; driven by the rank's main loop."""

    ctx: RankContext
    run: JobRun
    ask: Callable[[], None]
    report_entries: Callable[[list[dict]], None]
    keeping_alive: Callable[..., Any]  # runs long file work while the rank's watch goes on (Supervisor's)
    filing: Callable[..., Any]  # the same for file work that should take no time (Supervisor's)
    outcome: RankOutcome = field(init=False)
    ranges: "queue.Queue[Any]" = field(default_factory=queue.Queue)  # received, not yet given to the payload
    asked: int = 0  # requests to rank 0 not answered yet
    no_more: bool = False
    restarts: int = 0
    done: bool = False
    process: Any = None
    channel: Any = None  # the payload's EventChannel, once the inputs are in

    def __post_init__(self) -> None:
        self.outcome = RankOutcome(self.ctx.rank, cores=self.run.cores)
        self.job_log = jobflow.job_logger(self.ctx, self.run)

    def start(self) -> None:
        declares = self.ctx.rank == 0  # one rank speaks for the job
        jobflow.begin(self.ctx, self.run)
        self._stage_in()
        if self.run.failed:
            raise self.run.error
        if self.ctx.stopping.is_set():  # came as the copy ended: no payload starts after a stop
            raise self.ctx.stopping.request.not_started()
        self.channel = EventChannel(self._provide, socket_path=_socket_path(self.run.scratch)).start()
        self.run.status = jobflow.JobStatus.RUNNING
        if declares:
            self.filing(lambda: jobflow.declare_state(self.ctx, self.run), "declaring the job running")
        self._launch()
        # Under the same limits as any payload (walltime, memory, disk, looping), across restarts: the monitor
        # follows run.process, and a payload it kills fails the job instead of being restarted.
        self.ctx.monitor.watch(self.run)

    def _stage_in(self) -> None:
        """Every rank copies the inputs, which may take minutes, while it keeps its watch; a copy stuck past all
        the inputs' time limits (a hung filesystem) fails the job, or at a stop counts as not started."""
        try:
            self.keeping_alive(lambda: jobflow.stage_in(self.ctx, self.run),
                               jobflow.stage_in_allowance(self.ctx, self.run))
        except Hung as hung:
            self.run.fail(jobflow.stage_in_hung(self.ctx, self.run, hung.waited))

    def give(self, answer: EventRange | None) -> None:
        self.outcome.received += 1
        self.asked -= 1
        self.no_more = self.no_more or answer is None
        self.ranges.put(answer)

    def step(self, wait: float = 0.0) -> None:
        """Ask for ranges to keep PREFETCH at hand, hand on results (waiting up to ``wait`` s for one)."""
        while not self.no_more and self.asked + self.ranges.qsize() < PREFETCH:
            self.asked += 1
            self.ask()
        entries = []
        try:
            entries += self._entries_for(self.channel.results.get(timeout=wait) if wait else
                                         self.channel.results.get_nowait())
        except queue.Empty:
            pass
        while not self.channel.results.empty():
            entries += self._entries_for(self.channel.results.get())
        if entries:
            self.report_entries(entries)
        if self.process is not None and self.process.has_exited() and self.channel.results.empty():
            self._payload_ended()

    def stop(self, request: StopRequest) -> None:
        """Graceful stop: no more ranges; the payload ends; what is in flight is declared failed."""
        self.outcome.error = self.outcome.error or PilotError(request.code, f"stopped: {request.reason}")
        if self.channel is not None:  # none yet while the inputs are copied (the stop ends the copy)
            self.channel.no_more_ranges()
        self.ranges.put(None)
        jobflow.terminate_in_background(self.run, self.ctx.config.limits.kill_grace)

    def _provide(self) -> EventRange | None:  # called on the channel's thread
        return self.ranges.get()

    def _launch(self) -> None:
        env = payload.payload_environment(self.run.spec, self.ctx.rank, self.run.scratch,
                                          self.ctx.access_point.job_dir(self.run.pandaid), self.ctx.environment,
                                          {**self.ctx.site.payload_environment(self.run.cores),
                                           **self.channel.environment()})
        self.job_log.info("payload: %s (event service, channel %s)", self.run.spec.command, self.channel.address)
        self.process = jobflow.start_payload(self.ctx, self.run, env,
                                             binds=_outside_scratch(self.channel.address, self.run.scratch))
        self.run.process = self.process

    def _entries_for(self, result: Any) -> list[dict]:
        if isinstance(result, RangeFinished):
            try:
                entry = self._stage_out(result)
            except PilotError as error:
                return self._failed([result.range_id], error.code, error.diag)
            return [entry]
        if isinstance(result, RangeFailed):
            return self._failed([result.range_id], ErrorCode.ES_RECOVERABLE,
                                f"failed in the payload: {result.code} {result.message}")
        if isinstance(result, RangesLost):
            return self._failed(list(result.range_ids), ErrorCode.ES_RECOVERABLE, f"lost: {result.reason}")
        return []

    def _failed(self, range_ids: list[str], code: int, diag: str) -> list[dict]:
        return failed_ranges(self.job_log, range_ids, code, diag)

    def _unstarted(self) -> list[str]:
        """The ranges received and never given to the payload (the stop's None is no range)."""
        unstarted = []
        while not self.ranges.empty():
            answer = self.ranges.get_nowait()
            if answer is not None:
                unstarted.append(answer.eventRangeID)
        return unstarted

    def _stage_out(self, result: RangeFinished) -> dict:
        """Copy the range's output to the job directory, checksummed in passing.

        Written straight under its final name, without a temp file and rename:
        nobody reads it before it is declared, and a range not declared is
        processed again (its output rewritten) by a rerun. The name carries the
        range ID, so no other range's output is ever written over it.
        """
        name = staged_name(os.path.basename(result.output_path), result.range_id)
        if self.ctx.access_point.is_reserved(os.path.basename(result.output_path)) or \
                self.ctx.access_point.is_reserved(name):
            raise PilotError(ErrorCode.BAD_FILE_NAME, f"output {name!r}: the name of a file the pilot or Harvester "
                             "keeps for itself; not staged")
        target = self.ctx.access_point.job_dir(self.run.pandaid) / name
        try:  # any path the payload reports: below a file, too long, with a NUL byte, swapped meanwhile
            source = staging.inside_scratch(self.run.scratch, os.path.relpath(
                os.path.join(self.run.scratch, result.output_path), self.run.scratch))  # an absolute path stays
            size = os.stat(source).st_size
            staging.check_output_size(name, size)
            running = self._copy_out(source, target, size)  # on disk before it is declared, like any output
        except (OSError, ValueError) as error:
            raise PilotError(ErrorCode.STAGEOUT_FAILED, f"cannot stage out {name}: {error}") from None
        staging.check_not_emptied(name, target, running)
        return finished_entry(result.range_id, target, checksum=running)

    def _copy_out(self, source: Path, target: Path, size: int) -> RunningChecksum:
        """Within the time limit of any output's copy, while the rank's watch goes on (telling the other ranks it
        lives, looking for stops): one of more than a chunk may take minutes, and the fdatasync of even a small
        one seconds on a loaded shared filesystem. A stop ends a copy of more than a chunk, or keeps it from
        starting: a stopping pilot has no minutes to give one range, which PanDA hands out again; a single chunk
        is worth finishing."""
        limit = self.ctx.config.limits.transfer_timeout(size)
        stop = self.ctx.stopping if size > KERNEL_CHUNK_SIZE else NEVER
        hung_after = limit + self.ctx.config.limits.transfer_timeout(0)  # a copy past its limit ends within a chunk
        try:
            return self.keeping_alive(lambda: staging.copy_out_in_time(source, target, limit, stop), hung_after)
        except Hung as hung:
            if not self.ctx.stopping.is_set():
                raise PilotError(ErrorCode.STAGEOUT_TIMEOUT, "copy of its output hung: no answer from the "
                                 f"filesystem after {hung.waited:.0f} s") from None
            raise self._ended_by_stop() from None
        except CopyCancelled:
            raise self._ended_by_stop() from None

    def _ended_by_stop(self) -> PilotError:
        request = self.ctx.stopping.request
        return PilotError(request.code, f"copy of its output ended by the stop: {request.reason}")

    def _payload_ended(self) -> None:
        exit = self.process.wait()
        self.outcome.cpu_seconds += exit.cpu_seconds
        self.process.terminate(self.ctx.config.limits.kill_grace)  # what it left behind
        self.process = self.run.process = None
        if self.run.failed:  # the monitor stopped it at a limit
            self.outcome.error = self.outcome.error or self.run.error
        if exit.returncode == 0 and self.channel.exhausted or self.outcome.error is not None:
            return self._finish()
        self.restarts += 1
        self.job_log.error("payload ended with %d before the ranges ran out (restart %d of %d)",
                           exit.returncode, self.restarts, self.ctx.config.payload_restarts)
        if self.restarts > self.ctx.config.payload_restarts:
            self.outcome.error = PilotError(ErrorCode.ES_FATAL, f"payload failed {self.restarts} times, last with "
                                            f"exit code {exit.returncode}; no more restarts")
            return self._finish()
        self._launch_again()

    def _launch_again(self) -> None:
        """A payload that cannot be started again (its scratch full, a FIFO its predecessor left as its
        payload.stdout, its scratch swapped for a symlink) ends this rank's work on the job with that error, as
        any failed start does."""
        try:
            staging.check_scratch_is_ours(self.run.scratch)
            self._launch()
        except PilotError as error:
            self.job_log.error("cannot restart the payload: %s", error.diag)
            self.outcome.error = error
            self._finish()

    def _finish(self) -> None:
        watch = self.ctx.monitor.unwatch(self.run)
        if watch is not None and watch.series.count:
            self.outcome.memory = watch.series.summary()
        self.channel.stop()
        entries = []
        while not self.channel.results.empty():
            entries += self._entries_for(self.channel.results.get())
        entries += self._failed(self._unstarted(), self.outcome.failure_code, "the payload ended before it took them")
        if entries:
            self.report_entries(entries)
        self.done = True


# -- the job, on every rank ------------------------------------------------------------------------------------


def run_event_service_job(ctx: RankContext, comm: Any, job: JobSpec, cores: int, supervisor: Any) -> JobRun:
    """All ranks process the ranges of ``job``; rank 0 declares them and then the job. The rank's ``supervisor``
    ticks between steps, and runs the file work the ranks wait for while they tell each other they are alive."""
    tick, keeping_alive = supervisor.tick, supervisor.keeping_alive
    run = JobRun(job, ctx.rank, ctx.host, min(job.core_count, cores))
    dispatcher: Dispatcher | None = None
    sent: list[Any] = []

    def ask() -> None:
        if dispatcher is not None:
            dispatcher.want(0, work.outcome.received)
        else:
            sent.append(comm.isend(("want", work.outcome.received), dest=0, tag=TAG_REPORT))

    def report_entries(entries: list[dict]) -> None:
        if dispatcher is not None:
            dispatcher.add_entries(entries)
        else:
            sent.append(comm.isend(("entries", entries), dest=0, tag=TAG_REPORT))

    work = RankEventWork(ctx, run, ask, report_entries, keeping_alive, supervisor.filing)
    if ctx.rank == 0:
        dispatcher = Dispatcher(ctx, comm, job, work.give, work.job_log, supervisor.filing)
    supervisor.on_stop = lambda request: _stop(work, dispatcher, request)
    _start(work)
    with jobflow.timed(run, "payload"):
        while not work.done:
            if dispatcher is not None:
                dispatcher.serve()
            while dispatcher is None and comm.iprobe(source=0, tag=TAG_RANGE):
                work.give(comm.recv(source=0, tag=TAG_RANGE))
            work.step(wait=TICK_SECONDS)  # wakes as soon as the payload reports a range
            tick()
    if dispatcher is None:
        _finish_on_other_rank(comm, work, sent, tick)
    elif not _finish_on_rank_0(ctx, work, dispatcher, tick, keeping_alive):
        return run  # its scratch is left to the stuck stage-out, which removes it last, if it ever ends
    supervisor.filing(lambda: jobflow.clean_scratch(ctx, run), "removing the job's scratch")  # many files: seconds
    return run


def _finish_on_other_rank(comm: Any, work: RankEventWork, sent: list[Any], tick: Callable[[], None]) -> None:
    """This rank's outcome to rank 0, rank 0's last answers taken, every report this rank sent delivered."""
    comm.send(("done", work.outcome), dest=0, tag=TAG_REPORT)
    _drain_answers(comm, tick)
    for request in sent:
        request.wait()


def _finish_on_rank_0(ctx: RankContext, work: RankEventWork, dispatcher: Dispatcher, tick: Callable[[], None],
                      keeping_alive: Callable[..., Any]) -> bool:
    """Every rank served until all are done; the ranges none started failed, the rest declared, then the job.
    False when the job's stage-out was given up on as hung: the job is left undeclared."""
    dispatcher.rank_done(0, work.outcome)
    while not dispatcher.all_done():
        dispatcher.serve()
        tick()
        time.sleep(TICK_SECONDS)
    error = dispatcher.first_error()
    dispatcher.fail_unstarted(error.code if error else ErrorCode.ES_RECOVERABLE)
    dispatcher.declare_pending()
    dispatcher.wait_for_sends()
    return _declared_unless_hung(ctx, work.run, lambda: _declare_job(ctx, work, dispatcher), keeping_alive)


def _declared_unless_hung(ctx: RankContext, run: JobRun, declare: Callable[[], None],
                          keeping_alive: Callable[..., Any]) -> bool:
    """The job's stage-out and declaration (its log tarball: gigabytes, maybe) while the rank's watch goes on,
    within the time limits of its files as any job's stage-out, stop or not: a slow copy ends at its own
    limit, so past them a system call never returned (a hung filesystem). The job is then left undeclared,
    as the other ranks' jobs are (see rank): the declaration may be what hangs, its thread may still complete
    it, and ending the pilot (Supervisor.filing) would lose that. Harvester fails it with the worker, or a
    rerun runs it again; the pilot's exit code is 64."""
    try:
        keeping_alive(declare, jobflow.stage_out_allowance(ctx, run), stop_grace=math.inf)
    except Hung as hung:
        jobflow.stage_out_hung(ctx, run, hung.waited)
        return False
    return True


def _drain_answers(comm: Any, tick: Callable[[], None]) -> None:
    """Take rank 0's answers sent after this rank stopped taking them (rank 0 fails their ranges), up to its
    last: left in the queue, they would be taken as ranges of the next job. Rank 0 may be long in coming (copying
    a range's output): meanwhile this rank goes on saying it is alive, lest rank 0 take it for dead."""
    while True:
        while not comm.iprobe(source=0, tag=TAG_RANGE):
            tick()
            time.sleep(TICK_SECONDS)  # not a blocking receive: MPICH's busy-polls a core
        if comm.recv(source=0, tag=TAG_RANGE) == END_OF_JOB:
            return


def _start(work: RankEventWork) -> None:
    try:
        work.start()
    except (OSError, RuntimeError) as error:  # e.g. the event channel's socket, or a thread for it
        _start_failed(work, PilotError(ErrorCode.SETUP_FAILED, f"cannot start the event service payload: {error}"))
    except PilotError as error:
        _start_failed(work, error)


def _start_failed(work: RankEventWork, error: PilotError) -> None:
    work.job_log.error("cannot start: %s", error.diag)
    work.outcome.error = error
    work.done = True


def _stop(work: RankEventWork, dispatcher: Dispatcher | None, request: StopRequest) -> None:
    if dispatcher is not None:
        dispatcher.stopping = True
    if not work.done:
        work.stop(request)


def _declare_job(ctx: RankContext, work: RankEventWork, dispatcher: Dispatcher) -> None:
    """The job's final state from every rank's outcome: finished unless no events came or a rank failed. Its
    counts are of the ranges declared, by this run or an earlier one."""
    run, outcomes, earlier = work.run, list(dispatcher.outcomes.values()), dispatcher.source.earlier
    error = dispatcher.first_error()
    declared = dispatcher.declared
    finished = declared.finished + len(earlier)
    if error is not None:
        run.fail(error)
    elif dispatcher.source.handed_out == 0 and not earlier:
        run.fail(PilotError(ErrorCode.ES_NO_EVENTS, "no event ranges received from Harvester"))
    n_events = declared.events + sum(r.n_events for r in earlier)
    failed = declared.failed + dispatcher.source.earlier_failed
    run.cpu_seconds = sum(o.cpu_seconds for o in outcomes)  # cpuConsumptionTime: the payloads of every rank
    run.cores = sum(o.cores for o in outcomes)  # coreCount, which PanDA multiplies by the walltime: every rank's
    run.extra_attributes.update(summed_summaries([o.memory for o in outcomes]))
    run.extra_attributes.update(nEvents=n_events, nEventRangesFinished=finished, nEventRangesFailed=failed)
    jobflow.stage_out(ctx, run)
    log.info("job %d: %d event ranges finished (%d events), %d failed, on %d ranks",
             run.pandaid, finished, n_events, run.extra_attributes["nEventRangesFailed"], len(outcomes))
