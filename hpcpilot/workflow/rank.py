"""Running one rank's share of jobs: a pipeline of phases sharing the rank's cores.

Jobs move stage-in -> payload -> stage-out, as tasks in a thread pool (a
payload's thread goes on with its stage-out). Payloads start only when
enough of the rank's cores are free, while the next jobs' stage-in and the
last jobs' stage-out overlap them, so the
cores wait for I/O as little as possible. Only the calling (main) thread
touches MPI: it runs the loop below and calls ``tick`` between events.

A stage-in or stage-out that outlasts all its files' time limits is stuck in
a system call that a hung shared filesystem never answers (a slow copy ends
at its own limit): the main thread gives up on it and leaves its thread
behind (see workers). A job given up on in stage-in is declared failed; one
given up on in stage-out stays undeclared, as its declaration may be what
hangs (exit code 64).
"""
from __future__ import annotations

import logging
import math
import queue
import time
import traceback
from collections import deque
from typing import Callable

from ..errors import ErrorCode, PilotError
from ..jobreport import minimal_report
from ..jobs import JobSpec
from ..jobstate import JobResult, JobRun
from ..lifetime import Deadline
from ..stopping import StopRequest
from . import jobflow
from .jobflow import RankContext
from .workers import HangClock, HangWatch, Workers

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
WATCHED_PHASES = ("stagein", "stageout")  # file work that a hung filesystem can keep for ever
PREFETCH = 2  # jobs staged in ahead of free cores


class RankRunner:
    """Runs ``jobs`` on ``cores`` cores; reports each result through ``report``."""

    def __init__(self, ctx: RankContext, jobs: list[JobSpec], cores: int, deadline: Deadline,
                 report: Callable[[JobResult], None], started: Callable[[int], None] = lambda pandaid: None):
        self.ctx = ctx
        self.cores = cores
        self.free_cores = cores
        self.deadline = deadline
        self.waiting = deque(JobRun(job, ctx.rank, ctx.host, min(job.core_count, cores)) for job in jobs)
        self.staging: dict[int, JobRun] = {}
        self.hangs = HangWatch()  # the stage-ins and stage-outs under way
        self.given_up: set[int] = set()  # in stage-out: left undeclared
        self.ready: deque[JobRun] = deque()
        self.running: dict[int, JobRun] = {}
        self.stopping: StopRequest | None = None
        self.unfinished = len(self.waiting)
        self.report = report
        self.started = started
        self.events: queue.SimpleQueue[tuple[str, JobRun]] = queue.SimpleQueue()  # C-level: cheap hand-offs
        # never more threads than jobs: a cores_per_rank of 10**9 (a typo) would ask for a thread per core
        max_payloads = max(1, min(cores // max(1, min((r.cores for r in self.waiting), default=1)), len(jobs)))
        self.pool = Workers(max_payloads + 2 * PREFETCH, f"rank{ctx.rank}")

    def run(self, tick: Callable[[], None] = lambda: None) -> None:
        """Run every job to its declaration; ``tick`` runs every TICK_SECONDS or so (not after every event:
        it polls MPI, which costs more than a short job's event)."""
        next_tick = 0.0
        try:
            while self.unfinished:
                self._start_what_fits()
                try:
                    phase, run = self.events.get(timeout=TICK_SECONDS)
                    self._advance(phase, run)
                except queue.Empty:
                    pass
                if time.monotonic() >= next_tick:
                    tick()
                    self._give_up_on_the_hung()
                    self.pool.restore()
                    next_tick = time.monotonic() + TICK_SECONDS / 2
        finally:
            self.pool.close()

    def _start_what_fits(self) -> None:
        while self.waiting and len(self.staging) + len(self.ready) < PREFETCH:
            run = self.waiting.popleft()
            self.staging[run.pandaid] = run
            self.started(run.pandaid)
            self._submit("stagein", run)
        while self.ready and self.ready[0].cores <= self.free_cores:
            run = self.ready.popleft()
            if not self.deadline.fits(run.spec.max_walltime):
                run.fail(PilotError(ErrorCode.WALLTIME, f"not started: its maxWalltime {run.spec.max_walltime} s "
                                    f"does not fit in the {self.deadline.remaining():.0f} s the pilot has left"))
                self._submit("stageout", run)
                continue
            self.free_cores -= run.cores
            self.running[run.pandaid] = run
            self._submit("payload", run)

    def stop(self, request: StopRequest) -> None:
        """Graceful stop: nothing new starts, running payloads end, every job is declared."""
        self.stopping = request
        not_started = request.not_started()
        self.hangs.stop()  # a stage-in ends within a chunk of its copy at a stop (a stage-out goes on)
        while self.waiting:
            run = self.waiting.popleft()
            run.fail(not_started)
            self._submit("abandon", run)
        while self.ready:
            run = self.ready.popleft()
            run.fail(not_started)
            self._submit("stageout", run)
        for run in list(self.running.values()):  # some may have ended already, their cores not yet freed
            if run.stop_payload(PilotError(request.code, f"payload stopped: {request.reason}")):
                self._terminate(run)

    def _terminate(self, run: JobRun) -> None:
        jobflow.terminate_in_background(run, min(self.ctx.config.limits.kill_grace, self.ctx.config.stop_wait))

    def _start_clock(self, phase: str, run: JobRun) -> None:
        if phase == "stagein":
            clock = HangClock(jobflow.stage_in_allowance(self.ctx, run), self.ctx.config.stop_wait)
        else:  # a job's outputs go out despite a stop: they are its work done
            clock = HangClock(jobflow.stage_out_allowance(self.ctx, run), stop_grace=math.inf)
        if self.stopping:
            clock.stop()
        self.hangs.start(phase, run, clock)

    def _give_up_on_the_hung(self) -> None:
        for phase, run, waited in self.hangs.overrun():
            if phase == "stagein" and self.staging.pop(run.pandaid, None) is not None:
                self._give_up_on_stagein(run, waited)
            elif phase == "stageout":
                self._give_up_on_stageout(run, waited)

    def _give_up_on_stagein(self, run: JobRun, waited: float) -> None:
        """Declare the job failed without its stage-in, whose thread stays stuck where it is; another thread
        takes its place. At a stop the job counts as not started, as any stage-in the stop ended."""
        run.fail(jobflow.stage_in_hung(self.ctx, run, waited))
        run.seconds["stagein"] += waited
        self.pool.add()
        self._submit("stageout", run)

    def _give_up_on_stageout(self, run: JobRun, waited: float) -> None:
        """Count the job as ended but undeclared: Harvester fails it with the worker, or a rerun on this access
        point runs it again (declaring it from here could hang as well, or race its thread's declaration)."""
        jobflow.stage_out_hung(self.ctx, run, waited)
        self.given_up.add(run.pandaid)
        self.pool.add()
        self.unfinished -= 1
        self.report(JobResult.of_run(run))

    def _advance(self, phase: str, run: JobRun) -> None:
        if phase in WATCHED_PHASES:
            self.hangs.end(phase, run.pandaid)
        if phase == "stagein":
            if self.staging.pop(run.pandaid, None) is None:
                return  # given up on as hung, and declared
            if self.stopping and not run.failed:
                run.fail(self.stopping.not_started())
            if run.failed:
                self._submit("stageout", run)
            else:
                self.ready.append(run)
        elif phase == "payload":  # its thread goes on with the stage-out
            self.free_cores += run.cores
            self.running.pop(run.pandaid, None)
        elif run.pandaid not in self.given_up:  # stageout or abandon: the job is declared
            self.unfinished -= 1
            self.report(JobResult.of_run(run))

    def _submit(self, phase: str, run: JobRun) -> None:
        self.pool.submit(self._run_phase, phase, run)

    def _run_phase(self, phase: str, run: JobRun) -> None:
        """One phase in a pool thread; after a payload, its stage-out follows in the same thread (one
        hand-over less per job), once the main thread has been told that the cores are free."""
        for step in (phase, "stageout") if phase == "payload" else (phase,):
            try:
                self._run_guarded(step, run)
            finally:
                self.events.put((step, run))

    def _run_guarded(self, phase: str, run: JobRun) -> None:
        try:
            if phase in WATCHED_PHASES:
                self._start_clock(phase, run)
            _PHASES[phase](self.ctx, run)
        except Exception as error:  # a bug must not lose the job: it still gets declared
            log.error("job %d: unexpected error in %s:\n%s", run.pandaid, phase, traceback.format_exc())
            run.fail(PilotError(ErrorCode.GENERAL, f"pilot error in {phase}: {error!r}"))
            if phase in ("stageout", "abandon"):
                _declare_after_crash(self.ctx, run)


def _stage_in_phase(ctx: RankContext, run: JobRun) -> None:
    jobflow.begin(ctx, run)
    if not run.failed:
        jobflow.stage_in(ctx, run)


def _declare_after_crash(ctx: RankContext, run: JobRun) -> None:
    """A bug in stage-out: the job is still declared failed, with a minimal job report, and counted as
    declared. Its files are not: what was gathered before the bug cannot be trusted (Harvester makes a log
    tarball of its own for a job that declares none). Its log lines go too: kept, they would stay for the rest
    of the pilot's life."""
    try:
        run.finish()
        run.declared_files = []
        jobflow.declare_final(ctx, run, minimal_report(run))
    except Exception:
        log.exception("job %d: could not declare it failed", run.pandaid)
    finally:
        ctx.log_router.close_job(run.pandaid)


_PHASES = {"stagein": _stage_in_phase, "payload": jobflow.run_payload, "stageout": jobflow.stage_out,
           "abandon": jobflow.abandon}
