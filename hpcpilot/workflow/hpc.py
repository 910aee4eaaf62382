"""The HPC workflow: rank 0 reads and scatters, every rank runs its share, rank 0 collects.

Grid mode is this same flow on one rank. Ranks never read job definitions
from the access point: they get them through MPI only.
"""
from __future__ import annotations

import gc
import heapq
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import scratchroot
from ..config import Config
from ..errors import ExitCode, PilotError, WorkerError
from ..guard import PayloadGuard
from ..eventstatus import EventStatusPublisher
from ..harvester import AccessPoint, RawJob
from ..jobs import SECRET_KEYS, InvalidJob, JobSpec
from ..jobstate import JobResult, JobRun, invalid_job_attributes
from ..lifetime import Deadline, pilot_deadline
from ..logsetup import JobLogRouter
from ..monitor import Monitor
from ..mpi import node_cpu_sets, wait_idly
from ..nodename import node_name
from ..runlock import RunLock
from ..sites import Site
from ..stopping import SignalWatch, StopRequest
from . import jobflow
from .jobflow import RankContext
from .progress import Collector, Reporter
from .jobflow import terminate_in_background
from .liveness import startup_watch
from .rank import RankRunner
from .resume import EARLIER_RUN, split_declared
from .supervisor import Supervisor

log = logging.getLogger(__name__)

SHARE_TAG = 11


@dataclass
class WorkPlan:
    """What rank 0 decided: this rank's share, the event service jobs (run by all ranks together),
    the jobs already declared (invalid, or final from an earlier run), and the total."""

    share: list[JobSpec | InvalidJob] = field(default_factory=list)  # validated by this rank
    event_jobs: list[JobSpec] = field(default_factory=list)
    already_declared: list[JobResult] = field(default_factory=list)
    total: int = 0


def run_worker(config: Config, comm: Any, site: Site, signals: SignalWatch) -> int:
    """Run every job of the access point on the ranks of ``comm`` at ``site``; returns the exit code.
    ``signals`` holds the stop signals received so far (installed before MPI started: never fatal)."""
    with RunLock() as lock:  # rank 0 takes it at start-up, before it changes anything
        return _run_worker(config, comm, site, signals, lock)


def _run_worker(config: Config, comm: Any, site: Site, signals: SignalWatch, lock: RunLock) -> int:
    started = time.time()
    secret_keys = (*SECRET_KEYS, *filter(None, (k.strip() for k in config.secret_keys.split(","))))
    cores = config.cores_per_rank or default_cores_per_rank(comm)
    every_ranks_cores = comm.gather(cores, root=0)  # what rank 0 deals by
    with startup_watch(comm, config.startup_limit):  # up to the last read of what an earlier run left
        access_point = AccessPoint(config.access_point, config.files, secret_keys)
        plan, status = _distribute(access_point, comm, lock, every_ranks_cores)
        if status != ExitCode.SUCCESS:
            return status
        ctx = _rank_context(config, access_point, comm.rank, site)
        if comm.rank == 0:
            _take_over_from_earlier_run(ctx, plan)
    deadline = _agree_on_deadline(config, comm)
    if comm.rank == 0:
        _announce(plan, comm.size, cores, ctx.scratch_base)
    try:
        ctx.monitor.start()
        supervisor = Supervisor(ctx, comm, deadline, signals)
        results = _run_share(ctx, plan, cores, deadline, supervisor, comm)
        results += _run_event_jobs(ctx, plan.event_jobs, cores, supervisor, comm)
        supervisor.settle()  # before the clean-up below: waiting for the guard to go, a rank says nothing
    except BaseException:
        ctx.guard.abandon()  # a rank that fails leaves no payload behind, as one that dies
        raise
    finally:
        ctx.monitor.stop()  # also ends what finished payloads left behind
        ctx.guard.close()
    _wrap_up(ctx)
    exit_code = _finish(access_point, results, comm.size, started, supervisor.stop_request) if comm.rank == 0 else None
    exit_code = comm.bcast(exit_code, root=0)
    wait_idly(comm)  # rank 0 keeps the run lock until every rank has published its last declarations
    return exit_code


def _take_over_from_earlier_run(ctx: RankContext, plan: WorkPlan) -> None:
    """Rank 0: an earlier run's kill request goes, and what it staged for jobs it declared final, and for
    event service jobs, is published."""
    _withdraw_earlier_kill_request(ctx.access_point)
    ctx.publisher.adopt([*(result.pandaid for result in plan.already_declared
                           if result.rank == EARLIER_RUN and result.declared),
                         *(job.pandaid for job in plan.event_jobs)])


def _announce(plan: WorkPlan, ranks: int, cores: int, scratch_base: Path) -> None:
    log.info("running %d job(s) on %d rank(s), %d core(s) per rank, scratch under %s",
             plan.total, ranks, cores, scratch_base)
    available = len(os.sched_getaffinity(0))
    if cores > available:  # a setting meant for other nodes, or for no binding
        log.warning("cores_per_rank %d is more than the %d CPU(s) rank 0 may run on: its payloads will "
                    "share them", cores, available)


def _withdraw_earlier_kill_request(access_point: AccessPoint) -> None:
    try:
        if access_point.withdraw_kill_request():
            log.warning("removed %s, left by an earlier run of this worker that gave up: Harvester would cancel "
                        "this run for it", access_point.files.kill_worker)
    except OSError as error:
        log.warning("cannot remove the earlier run's %s (%s): Harvester may cancel this run for it",
                    access_point.files.kill_worker, error.strerror)


def _wrap_up(ctx: RankContext) -> None:
    """Publish what can be (giving Harvester a moment to take a dump still there), say what must wait,
    remove this rank's scratch root."""
    give_up = time.monotonic() + ctx.config.final_flush_wait
    while (waiting := ctx.publisher.flush()) and time.monotonic() < give_up:
        time.sleep(0.2)
    if waiting:
        log.warning("%d job(s) keep output declarations staged in %s: Harvester has not yet taken a previous "
                    "%s the pilot could not add them to (see above); running the pilot again on this access "
                    "point publishes them",
                    waiting, ctx.config.files.pending_declarations, ctx.config.files.event_status)
    if not ctx.config.keep_scratch:  # what a job's scratch removal left was named in a warning then
        scratchroot.remove_own(ctx.scratch_base)


def _agree_on_deadline(config: Config, comm: Any) -> Deadline:
    """Rank 0 asks the batch system once; every rank keeps the same deadline."""
    deadline = pilot_deadline(config.lifetime, config.lifetime_margin, os.environ) if comm.rank == 0 else None
    if comm.rank == 0 and deadline.reached():
        log.warning("the pilot's lifetime is already within its safety margin (lifetime_margin %.0f s): no job "
                    "will start; give a longer --lifetime or a smaller lifetime_margin", config.lifetime_margin)
    return comm.bcast(deadline, root=0)


def _distribute(access_point: AccessPoint, comm: Any, lock: RunLock, every_ranks_cores: list[int] | None
                ) -> tuple[WorkPlan, int]:
    """Rank 0 reads the definitions and scatters them; each rank validates its own share (rank 0 only
    reads, however many ranks there are). Jobs rank 0 finds invalid (unreadable ones, event service ones)
    go into its own share, declared failed first thing with the heartbeat kept (tens of thousands take
    minutes)."""
    shares, plan, status = None, WorkPlan(), ExitCode.SUCCESS
    with _collector_paused():
        if comm.rank == 0:
            try:
                definitions, plan.already_declared = _read_undeclared(access_point, lock)
                plan.total = len(definitions) + len(plan.already_declared)
                readable = [item for item in definitions if isinstance(item, RawJob)]
                event_jobs = [access_point.validated(item) for item in readable if item.event_service]
                plan.event_jobs = [job for job in event_jobs if isinstance(job, JobSpec)]
                invalid = [job for job in [*definitions, *event_jobs] if isinstance(job, InvalidJob)]
                shares = balanced_shares([item for item in readable if not item.event_service], every_ranks_cores)
                shares[0] = [*invalid, *shares[0]]
            except WorkerError as error:
                log.error("%s", error)
                status = error.exit_code
        wait_idly(comm)  # the other ranks sleep while rank 0 reads
        status = comm.bcast(status, root=0)
        if status != ExitCode.SUCCESS:
            return plan, status
        plan.share = [access_point.validated(item) for item in _scatter_keeping_own(comm, shares)]
        plan.event_jobs = comm.bcast(plan.event_jobs, root=0)
    return plan, status


def _scatter_keeping_own(comm: Any, shares: list[list[RawJob]] | None) -> list[RawJob]:
    """``comm.scatter`` from rank 0, except that rank 0's own share is neither pickled nor unpickled."""
    if comm.size == 1:
        return shares[0]
    if comm.rank != 0:
        return comm.recv(source=0, tag=SHARE_TAG)
    sent = [comm.isend(shares[rank], dest=rank, tag=SHARE_TAG) for rank in range(1, comm.size)]
    for request in sent:
        request.wait()
    return shares[0]


def _read_undeclared(access_point: AccessPoint, lock: RunLock
                     ) -> tuple[list[RawJob | InvalidJob], list[JobResult]]:
    """(jobs to run, results of jobs an earlier run declared): on an access point no pilot ran on
    before, every job is to run and no job directory needs a second look. Another pilot still running on
    it ends this one (WorkerError) before anything is changed."""
    definitions = access_point.read_definitions()
    earlier_run = access_point.note_run()
    lock.take(access_point.run_lock)
    if not earlier_run:
        return definitions, []
    return split_declared(access_point, definitions)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while tens of thousands of definitions are read, unpickled and validated:
    they hold no cycles, yet each collection would walk them all again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def balanced_shares(jobs: list[RawJob], rank_cores: list[int]) -> list[list[RawJob]]:
    """Deal jobs heaviest first, each to the rank with the smallest share of its cores dealt so far (the lowest of
    equals: jobs of one size go round-robin), so that the ranks' shares of work match their cores. A job weighs
    the cores it asks for, at most the rank's: it runs on no more."""
    counts = [job.core_count for job in jobs]
    shares: list[list[RawJob]] = [[] for _ in rank_cores]
    dealt = [(0.0, rank) for rank in range(len(rank_cores))]  # a heap of (cores dealt / the rank's cores, rank)
    for index in sorted(range(len(jobs)), key=lambda index: -counts[index]):
        load, rank = dealt[0]
        shares[rank].append(jobs[index])
        heapq.heapreplace(dealt, (load + min(counts[index], rank_cores[rank]) / rank_cores[rank], rank))
    return shares


def _declare_invalid(access_point: AccessPoint, job: InvalidJob, rank: int, host: str) -> JobResult:
    log.error("job %d: invalid definition, declared failed: %d %s", job.pandaid, job.code, job.diag)
    declared = access_point.job_dir_is_inside(job.pandaid)
    try:
        if declared:
            access_point.job_dir(job.pandaid).mkdir(mode=0o755, parents=True, exist_ok=True)
            access_point.write_attributes(job.pandaid, invalid_job_attributes(job, host))
            access_point.write_job_report(job.pandaid, {"exitCode": int(job.code), "exitMsg": job.diag})
    except OSError as error:
        log.error("job %d: cannot declare it failed: %s", job.pandaid, error)
        declared = False
    return JobResult.of_invalid(job, rank, host, declared)


def _rank_context(config: Config, access_point: AccessPoint, rank: int, site: Site) -> RankContext:
    router = JobLogRouter(rank)
    logging.getLogger("hpcpilot").addHandler(router)
    monitor = Monitor(config.limits, kill=lambda run: terminate_in_background(run, config.limits.kill_grace),
                      core_memory=site.memory_per_core())
    if rank == 0:
        log.info("site %s: %s", site.name, site.describe())
    return RankContext(config, access_point, EventStatusPublisher(access_point), rank, node_name(),
                       scratch_base(config, site, access_point), router, monitor, site, PayloadGuard())


def default_cores_per_rank(comm: Any) -> int:
    """The cores this rank may use (collective)."""
    own = os.sched_getaffinity(0)
    return cores_of_rank(own, node_cpu_sets(comm, own))


def cores_of_rank(own: set[int], node_sets: list[set[int]]) -> int:
    """A rank the launcher bound to CPUs of its own (srun --cpu-bind, aprun -cc, mpiexec -bind-to) has them
    all; ranks that share CPUs share them evenly."""
    every = set().union(*node_sets)
    if sum(len(cpus) for cpus in node_sets) == len(every):  # no CPU in two sets
        return len(own)
    return max(1, len(every) // len(node_sets))


def scratch_base(config: Config, site: Site, access_point: AccessPoint) -> Path:
    """Node-local storage: --scratch, else (or when it is unusable) as the site chooses it; the shared
    filesystem as last resort only, not while a node-local directory can still be had."""
    for wanted in dict.fromkeys([config.scratch, None]):
        try:
            # absolute: the payload runs in its scratch, where a path relative to the pilot's names nothing
            parent = site.choose_scratch(wanted, os.environ).absolute()
            parent.mkdir(parents=True, exist_ok=True)
            root = scratchroot.make_root(parent, keep=config.keep_scratch)
            scratchroot.reclaim_dead_roots_in_background(parent, own=root)
            return root
        except (OSError, PilotError) as error:
            log.warning("node-local scratch unusable: %s%s", error, "; trying the site's choice" if wanted else "")
    fallback = access_point.state_dir / "scratch"
    log.warning("no node-local scratch could be created; using the shared filesystem at %s", fallback)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _run_share(ctx: RankContext, plan: WorkPlan, cores: int, deadline: Deadline, supervisor: Supervisor,
               comm: Any) -> list[JobResult]:
    """Run this rank's jobs; rank 0 also collects everyone's results and learns of every stop."""
    valid = [job for job in plan.share if isinstance(job, JobSpec)]
    invalid = _declare_invalid_share(ctx, plan.share, supervisor)
    if comm.rank == 0:
        collector = Collector(comm, plan.total, plan.already_declared + invalid, ctx.config.progress_interval)
        runner = RankRunner(ctx, valid, cores, deadline, collector.add, collector.note_started)
        supervisor.on_stop = runner.stop
        runner.run(tick=lambda: (collector.poll(), supervisor.tick()))
        results = collector.wait_for_all(tick=supervisor.tick)
        for request in collector.stop_requests:
            supervisor.adopt(request)
        return results
    reporter = Reporter(comm)
    reporter.send_declared(invalid)
    runner = RankRunner(ctx, valid, cores, deadline, reporter.send_result, reporter.send_started)
    supervisor.on_stop = runner.stop
    runner.run(tick=supervisor.tick)
    reporter.close(supervisor.stop_request, tick=supervisor.keep_alive)
    return []


def _declare_invalid_share(ctx: RankContext, share: list[JobSpec | InvalidJob],
                           supervisor: Supervisor) -> list[JobResult]:
    """This rank's invalid jobs, declared failed one by one (tens of thousands take minutes): the heartbeat
    and the other ranks must not take the rank for dead meanwhile."""
    declared = []
    for job in share:
        if isinstance(job, InvalidJob):
            declared.append(_declare_invalid(ctx.access_point, job, ctx.rank, ctx.host))
            supervisor.keep_alive()
    return declared


def _run_event_jobs(ctx: RankContext, jobs: list[JobSpec], cores: int, supervisor: Supervisor,
                    comm: Any) -> list[JobResult]:
    """Event service jobs, one after the other, each on every rank; skipped alike on all ranks once stopping."""
    if not jobs:
        return []
    from .eventservice import run_event_service_job  # only a worker with such jobs pays for importing it

    results = []
    for job in jobs:
        supervisor.adopt(_agreed_stop(supervisor, comm))
        if supervisor.stop_request is not None:
            run = JobRun(job, ctx.rank, ctx.host, min(job.core_count, cores))
            if comm.rank == 0:
                run.fail(PilotError(supervisor.stop_request.code, f"not started: {supervisor.stop_request.reason}"))
                supervisor.filing(lambda: jobflow.abandon(ctx, run), "declaring a job the stop kept from starting")
                results.append(JobResult.of_run(run))
            continue
        run = run_event_service_job(ctx, comm, job, cores, supervisor)
        if comm.rank == 0:
            results.append(JobResult.of_run(run))
    return results


def _agreed_stop(supervisor: Supervisor, comm: Any) -> StopRequest | None:
    """The stop every rank goes by before the next event service job. Ranks done early wait for the others
    asleep and watching (a blocking collective spins on a core, and a stop sent to this rank alone must
    reach the ranks still running); any rank's stop counts, so that no rank skips a job the others run."""
    supervisor.on_stop = lambda request: None  # the last job has ended: nothing runs to be stopped
    wait_idly(comm, tick=supervisor.tick)
    return next(filter(None, comm.allgather(supervisor.stop_request)), None)


def _finish(access_point: AccessPoint, results: list[JobResult], ranks: int, started: float,
            stop: StopRequest | None) -> int:
    elapsed = time.time() - started
    summary = {
        "ranks": ranks, "elapsed_s": round(elapsed, 3), "stopped": stop.reason if stop else None,
        "finished": sum(r.status == "finished" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "undeclared": sum(not r.declared for r in results),
        "jobs": [r.summary_row() for r in sorted(results, key=lambda r: r.pandaid)],
    }
    summary_written = _write_summary(access_point, summary)
    log.info("worker done in %.1f s: %d finished, %d failed\n%s",
             elapsed, summary["finished"], summary["failed"], result_table(results))
    if stop is not None:
        log.warning("stopped early (%s): exit code %d", stop.reason, stop.exit_code)
        return stop.exit_code
    undeclared = [r.pandaid for r in results if not r.declared]
    if undeclared:
        log.error("%d job(s) could not be declared in the access point (%s): exit code %d",
                  len(undeclared), ", ".join(map(str, undeclared[:10])), ExitCode.SITE_PROBLEM)
        return ExitCode.SITE_PROBLEM
    return ExitCode.SUCCESS if summary_written else ExitCode.SITE_PROBLEM


def _write_summary(access_point: AccessPoint, summary: dict) -> bool:
    """The pilot's own summary; the jobs are declared already, so a full or failing access point costs
    only this file (the exit code says so)."""
    try:
        access_point.write_summary(summary)
        return True
    except OSError as error:
        log.error("cannot write %s in the access point: %s: exit code %d", access_point.files.summary,
                  error.strerror, ExitCode.SITE_PROBLEM)
        return False


def result_table(results: list[JobResult]) -> str:
    header = f"{'PandaID':>10} {'status':<8} {'code':>5} {'rank':>4} {'stagein':>8} {'payload':>8} {'stageout':>8}  diagnostic"
    rows = [
        f"{r.pandaid:>10} {r.status:<8} {r.code:>5} {r.rank:>4} {r.stagein_s:>8.2f} {r.payload_s:>8.2f} "
        f"{r.stageout_s:>8.2f}  {r.diag[:80]}"
        for r in sorted(results, key=lambda r: r.pandaid)
    ]
    return "\n".join([header, *rows])
