"""One job's phases on its rank: begin, stage-in, payload, stage-out and declare.

Each phase takes the job's :class:`JobRun` and records a failure on it
instead of raising, so a job always reaches its final declaration.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import payload, staging
from ..checksums import CopyCancelled
from ..config import Config
from ..container import runtime_failure, runtime_of, wrap_command
from ..errors import ErrorCode, ExitCode, PilotError
from ..guard import PayloadGuard
from ..eventstatus import EventStatusPublisher
from ..harvester import AccessPoint
from ..jobstate import JobRun, JobStatus, worker_attributes
from ..redaction import redact_files
from ..scratchtree import remove_tree
from ..jobreport import PAYLOAD_REPORT_NAME, minimal_report, output_guids, payload_error, payload_report
from ..logsetup import JobLog, JobLogRouter
from ..memorymonitor import TIMESERIES_NAME
from ..monitor import MB, Monitor, tree_size
from ..sites import Site
from ..stopping import StopEvent
from .workers import in_thread_or_here

log = logging.getLogger(__name__)

PILOT_LOG_NAME = "pilot.log"


def job_logger(ctx: RankContext, run: JobRun) -> JobLog:
    return JobLog(log, run.pandaid, run.spec.secrets, ctx.log_router)


@dataclass
class RankContext:
    """What every job phase of one rank needs."""

    config: Config
    access_point: AccessPoint
    publisher: EventStatusPublisher
    rank: int
    host: str
    scratch_base: Path
    log_router: JobLogRouter
    monitor: Monitor
    site: Site
    guard: PayloadGuard | None = None  # ends the payloads if this rank dies
    stopping: StopEvent = field(default_factory=StopEvent)  # set by the rank's stop, for the work in its threads
    environment: dict[str, str] = field(default_factory=lambda: dict(os.environ))  # the payloads' base


class timed:
    """Adds the time the block takes to the job's ``phase``. (A class: a generator-based context manager
    costs twice as much to enter and leave, and each job passes through several.)"""

    __slots__ = ("run", "phase", "started")

    def __init__(self, run: JobRun, phase: str):
        self.run, self.phase = run, phase

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exception: object) -> None:
        self.run.seconds[self.phase] += time.monotonic() - self.started


def begin(ctx: RankContext, run: JobRun) -> None:
    """Scratch directory and job log. Harvester hears of the job once its payload runs (or it ends)."""
    with timed(run, "setup"):
        run.scratch = make_scratch(ctx, run.pandaid)
        ctx.log_router.open(run.pandaid)
        job_log = job_logger(ctx, run)
        job_log.detail("rank %d, %d core(s), scratch %s", ctx.rank, run.cores, run.scratch)
        job_log.detail("memory limit %s", ctx.monitor.memory_limit(run) or "none")
        if run.cores < run.spec.core_count:  # ATHENA_PROC_NUMBER shrinks with it (a minRamCount limit does not)
            job_log.warning("asks for %d cores, the rank has %d: runs on %d (raise --cores-per-rank)",
                            run.spec.core_count, run.cores, run.cores)


def make_scratch(ctx: RankContext, pandaid: int) -> Path:
    """A fresh directory on node-local storage; the shared filesystem if that fails."""
    try:
        return Path(tempfile.mkdtemp(prefix=f"job-{pandaid}-", dir=ctx.scratch_base))
    except OSError as error:
        fallback = ctx.access_point.state_dir / "scratch"
        log.warning("job %d: cannot create scratch in %s (%s); falling back to shared %s",
                    pandaid, ctx.scratch_base, error.strerror, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"job-{pandaid}-", dir=fallback))


def stage_in(ctx: RankContext, run: JobRun) -> None:
    """The job's inputs into its scratch. The rank's stop ends the copy within a chunk (a stopping pilot has
    no minutes to wait for gigabytes): the job is failed as not started, with the stop's code."""
    job_log = job_logger(ctx, run)
    mode = staging.stagein_mode(run.spec, ctx.config.stagein_mode)
    with timed(run, "stagein"), recorded(run, job_log):
        try:
            run.staged_in = staging.stage_in(run.spec, ctx.access_point.job_dir(run.pandaid), run.scratch, mode,
                                             ctx.stopping, ctx.config.limits.transfer_timeout)
        except CopyCancelled:
            job_log.warning("stage-in ended by the stop, its partial copy removed")
            run.fail(ctx.stopping.request.not_started())
            return
        job_log.detail("staged in %d file(s), %d bytes (%s)", len(run.spec.inputs), run.staged_in.size, mode)


def stage_in_allowance(ctx: RankContext, run: JobRun) -> float:
    """The seconds the job's stage-in may take before it counts as hung rather than slow: its inputs' own time
    limits, one after the other (one of unknown size gets the longest), and one fixed part more for the work
    around the copies. A slow copy ends at its own limit within a chunk; only a system call that never
    returns gets past this."""
    limit = ctx.config.limits.transfer_timeout
    return limit(0) + sum(limit(staging.UNKNOWN_SIZE if spec.fsize is None else spec.fsize)
                          for spec in run.spec.inputs)


def stage_out_allowance(ctx: RankContext, run: JobRun) -> float:
    """The same for its stage-out: the time limits of its outputs and of the payload outputs its log tarball
    packs, by their sizes in scratch, and one fixed part more for the tarball's other files and the
    declarations."""
    limit = ctx.config.limits.transfer_timeout
    names = [*(spec.lfn for spec in run.spec.outputs), *PAYLOAD_OUTPUTS]
    return limit(0) + sum(limit(_size_in(run.scratch, name)) for name in names)


def stage_in_hung(ctx: RankContext, run: JobRun, waited: float) -> PilotError:
    """The job's error when its stage-in was given up on after ``waited`` seconds, stuck in a system call (a
    hung filesystem): 1151, or at a stop, not started, as any stage-in the stop ended."""
    job_logger(ctx, run).error("stage-in hung for %.0f s, a system call on its inputs never returned: declaring "
                               "the job without it, its thread left behind; check the filesystem of %s", waited,
                               ctx.access_point.job_dir(run.pandaid))
    if ctx.stopping.is_set():
        return ctx.stopping.request.not_started()
    return PilotError(ErrorCode.STAGEIN_TIMEOUT, f"stage-in hung: no answer from the filesystem after {waited:.0f} s, "
                      "past the time limits of all its inputs")


def stage_out_hung(ctx: RankContext, run: JobRun, waited: float) -> None:
    """Say that the job's stage-out was given up on after ``waited`` seconds, stuck in a system call (a hung
    filesystem), and that the job stays undeclared, unless its declaration was done (its scratch's removal
    hangs, which follows it)."""
    if run.declared:
        log.error("job %d: stage-out hung for %.0f s after the job was declared, a system call on its scratch %s "
                  "never returned: its thread left behind", run.pandaid, waited, run.scratch)
        return
    log.error("job %d: stage-out hung for %.0f s, a system call on its files never returned: leaving the job "
              "undeclared (exit code %d), its thread behind; check the filesystem of %s", run.pandaid, waited,
              ExitCode.SITE_PROBLEM, ctx.access_point.job_dir(run.pandaid))


def run_payload(ctx: RankContext, run: JobRun) -> None:
    job_log = job_logger(ctx, run)
    run.status = JobStatus.RUNNING
    announce_after = ctx.config.declare_running_after
    if announce_after <= 0:
        declare_running(ctx, run)  # as the monitor's later call: a job directory full for now does not fail the job
    env = payload.payload_environment(run.spec, ctx.rank, run.scratch, ctx.access_point.job_dir(run.pandaid),
                                      ctx.environment, ctx.site.payload_environment(run.cores))
    with timed(run, "payload"), recorded(run, job_log):
        job_log.detail("payload: %s", run.spec.command)
        if not run.launch_unless_stopped(lambda: start_payload(ctx, run, env)):
            return  # a stop came first
        watch = ctx.monitor.watch(run, announce=lambda: declare_running(ctx, run), announce_after=announce_after)
        exit = run.process.wait()
        run.end_payload()
        ctx.monitor.unwatch(run)
        _end_leftovers(ctx, run, job_log)
        run.extra_attributes.update(watch.series.summary() if watch.series.count else {})
        run.process = None
        run.cpu_seconds = exit.cpu_seconds
        run.trans_exit_code = payload.shell_status(exit.returncode)
        job_log.detail("payload ended with %d after %.1f s CPU", exit.returncode, exit.cpu_seconds)
        error, changed = _exit_error(ctx, run, exit), _changed_inputs_error(run)
        if error and changed:
            job_log.error("also: %s", changed.diag)
        if error or changed:
            raise error or changed


def _changed_inputs_error(run: JobRun) -> PilotError | None:
    """1303 if a replica the payload read in place (link, direct) changed while it ran: the payload wrote into
    it through its link (the shared replica is then changed for every job that reads it) or it was replaced;
    either way the job ran on other bytes than those verified."""
    changed = staging.changed_replicas(run.staged_in) if run.staged_in else []
    if not changed:
        return None
    replica, _ = run.staged_in.in_place[changed[0]]
    return PilotError(ErrorCode.FILE_HANDLING, f"input(s) {', '.join(changed)} changed while the payload ran: "
                      f"it reads the replica itself ({replica}), which was written through its link or replaced, "
                      "for every job that reads it; run payloads that write into their inputs with "
                      "--stagein-mode copy, and stage the replica again")


def _exit_error(ctx: RankContext, run: JobRun, exit: payload.PayloadExit) -> PilotError | None:
    """The payload's exit as the job's error; a container runtime's own failure is a setup error (1110).
    The disk check, every disk_interval, does not see a short job: one that fails in a scratch short of
    space is failed for the space, and one whose stdout grew over the limit fails for it, as a longer one
    would."""
    error = _runtime_failure(run, exit.returncode) or payload.exit_error(exit)
    if error is not None and exit.returncode > 0:  # the disk check's order: space first, then stdout
        found = ctx.monitor.space_shortage(run.scratch) or ctx.monitor.stdout_excess(run.scratch)
        return PilotError(found.code, f"{error.diag}; {found.diag}") if found else error
    return error or ctx.monitor.stdout_excess(run.scratch)


def _runtime_failure(run: JobRun, returncode: int) -> PilotError | None:
    """The failure of the job's container runtime itself, if it failed; what it said is at the end of the
    payload's stderr."""
    if not run.container_runtime or returncode <= 0:
        return None
    said = staging.tail(run.scratch, payload.STDERR_NAME, RUNTIME_MESSAGE_BYTES).decode("utf-8", "replace")
    return runtime_failure(run.container_runtime, returncode, said)


RUNTIME_MESSAGE_BYTES = 4096  # the end of payload.stderr where a container runtime's own message is


def start_payload(ctx: RankContext, run: JobRun, env: dict[str, str], binds: Iterable[Path] = ()) -> payload.Payload:
    """The site's setup and the job's command line, inside the job's container if it names one (the scratch
    and ``binds``, directories outside it the payload uses, bound there)."""
    line = payload.shell_line(run.spec, ctx.site.setup_lines())
    if run.spec.container_name:
        argv = wrap_command(ctx.site, run.spec.container_name, line, run.scratch, env_names=env.keys(), binds=binds)
        run.container_runtime = runtime_of(argv)
        return payload.launch(argv, run.scratch, env, ctx.guard)
    return payload.launch_line(line, run.scratch, env, ctx.guard, ctx.config.exec_plain_commands)


def _end_leftovers(ctx: RankContext, run: JobRun, job_log: logging.LoggerAdapter) -> None:
    """Children that outlive the payload would hold cores and files: end them too.

    Those still in its process group now; those that left it at the monitor's
    next sweep of finished payloads (``Monitor.unwatch`` registered it).
    """
    killed = run.process.end_leftovers(ctx.config.limits.kill_grace)
    if killed:
        job_log.warning("processes left behind by the payload needed SIGKILL: %s", killed)


def abandon(ctx: RankContext, run: JobRun) -> None:
    """Declare a job that will never start (the pilot is stopping) with its error."""
    run.finish()
    declare_final(ctx, run, minimal_report(run))


def stage_out(ctx: RankContext, run: JobRun) -> None:
    """Outputs (if the job succeeded so far), job report, log tarball; then the final declaration."""
    if run.scratch is None:
        return abandon(ctx, run)
    try:
        _stage_out_and_declare(ctx, run)
    finally:
        clean_scratch(ctx, run)


def _stage_out_and_declare(ctx: RankContext, run: JobRun) -> None:
    job_log = job_logger(ctx, run)
    job_dir = ctx.access_point.job_dir(run.pandaid)
    with timed(run, "stageout"):
        own_report = payload_report(run)
        run.extra_attributes.update(payload_error(own_report))
        if not run.failed and not run.spec.event_service:  # event service outputs are declared per range
            with recorded(run, job_log):
                run.declared_files += staging.stage_out_outputs(run.spec, run.scratch, job_dir,
                                                                output_guids(own_report),
                                                                ctx.config.limits.transfer_timeout)
        report = own_report if own_report is not None else minimal_report(run)
        run.work_dir_bytes = tree_size(run.scratch)
        run.finish()
        job_log.info("%s (code %d) %s", run.status.value, run.error.code if run.error else 0,
                     run.error.diag if run.error else "")
        members = _log_members(ctx, run, job_log)
        own_files = {PILOT_LOG_NAME: ctx.log_router.close_job(run.pandaid),
                     PAYLOAD_REPORT_NAME: json.dumps(report).encode()}
        if ctx.config.keep_scratch:
            _keep_in_scratch(run, own_files)
        redact_files(run.scratch, [name for name in members if name in PAYLOAD_OUTPUTS], run.spec.secrets)
        with recorded(run, job_log):
            packed = {**_excerpts_of_the_too_large(run, members), **own_files}
            run.declared_files.append(staging.write_log_tarball(run.spec, run.scratch, job_dir, members, packed))
        if run.error and run.status is JobStatus.FINISHED:
            run.status = JobStatus.FAILED
    declare_final(ctx, run, report)


def _keep_in_scratch(run: JobRun, files: dict[str, bytes]) -> None:
    """A kept scratch holds the job's log and final report too, for whoever inspects it.

    Never through what the payload left under those names (a symlink, a FIFO)
    nor into a scratch it replaced: the old entry is removed, a new file made.
    """
    try:
        staging.check_scratch_is_ours(run.scratch)
        for name, content in files.items():
            path = run.scratch / name
            path.unlink(missing_ok=True)
            with open(path, "xb") as handle:
                handle.write(content)
    except (OSError, PilotError) as error:
        log.warning("job %d: cannot keep its log and report in scratch: %s", run.pandaid, getattr(error, "diag", error))


PAYLOAD_OUTPUTS = (payload.STDOUT_NAME, payload.STDERR_NAME)


def _log_members(ctx: RankContext, run: JobRun, job_log: logging.LoggerAdapter) -> list[str]:
    """The files of scratch for the log tarball; one over ``max_stdout_mb`` is left out (a payload can make
    a terabyte-sized sparse file in an instant, which would take hours to pack). The job log and job report
    are not looked for: the pilot packs its own from memory in their place."""
    limit = ctx.config.limits.max_stdout_mb * MB
    members = []
    for name in (*PAYLOAD_OUTPUTS, TIMESERIES_NAME):
        size = _size_in(run.scratch, name)
        if size > limit:
            job_log.warning("%s is %d MB, over max_stdout_mb (%d MB): only its first and last %d MB go into "
                            "the log tarball", name, size // MB, ctx.config.limits.max_stdout_mb,
                            staging.EXCERPT_BYTES // MB)
        else:
            members.append(name)
    return members


def _excerpts_of_the_too_large(run: JobRun, members: list[str]) -> dict[str, bytes]:
    """For each payload output left out of the log tarball (over the limit), its two ends, to see how it began
    and ended."""
    left_out = [name for name in PAYLOAD_OUTPUTS if name not in members]
    return {name: ends for name in left_out if (ends := staging.excerpt(run.scratch, name, run.spec.secrets))}


def _size_in(scratch: Path | None, name: str) -> int:
    try:
        return os.lstat(os.path.join(scratch, name)).st_size if scratch else 0
    except OSError:
        return 0


def declare_state(ctx: RankContext, run: JobRun) -> None:
    with run.declaring:
        _write_attributes(ctx, run)


def declare_running(ctx: RankContext, run: JobRun) -> None:
    """The monitor's call for a payload that has run ``declare_running_after`` seconds: unless the job ended
    meanwhile (its final state is never replaced), Harvester learns that it runs."""
    with run.declaring:
        if run.end_time is None:
            try:
                _write_attributes(ctx, run)
            except PilotError as error:
                job_logger(ctx, run).warning("%s", error.diag)


def _write_attributes(ctx: RankContext, run: JobRun) -> None:
    try:
        ctx.access_point.write_attributes(run.pandaid, worker_attributes(run), durable=run.end_time is not None)
    except OSError as error:
        raise PilotError(ErrorCode.FILE_HANDLING, f"cannot declare the job in "
                         f"{ctx.access_point.job_dir(run.pandaid)}: {error.strerror}") from None


def declare_final(ctx: RankContext, run: JobRun, report: Any) -> None:
    """jobReport and the staged file entries, then the final state (the commit point), then publication."""
    try:
        ctx.access_point.write_job_report(run.pandaid, report)
    except OSError as error:  # the job's metadata only: the job is declared without it
        job_logger(ctx, run).error("cannot write its job report; declared without it: %s", error)
    try:
        _stage_entries(ctx, run)
        declare_state(ctx, run)
        ctx.publisher.publish(run.pandaid)
        run.declared = True
    except (OSError, PilotError) as error:
        job_logger(ctx, run).error("cannot declare its final state, Harvester will not see it: %s",
                              getattr(error, "diag", error))


def _stage_entries(ctx: RankContext, run: JobRun) -> None:
    """The job's file entries, staged for publication. Entries that cannot be staged fail the job, which is
    then still declared: failed, and run again by PanDA, rather than seen running for ever."""
    if not run.declared_files:
        return
    try:
        ctx.publisher.stage(run.pandaid, run.declared_files)
    except OSError as error:
        failure = PilotError(ErrorCode.FILE_HANDLING, f"cannot stage its file declarations in "
                             f"{ctx.publisher.journal_path(run.pandaid)}: {error.strerror or error}")
        job_logger(ctx, run).error("%s", failure.diag)
        run.fail(failure)
        run.status = JobStatus.FAILED
        run.declared_files = []


def clean_scratch(ctx: RankContext, run: JobRun) -> None:
    if run.scratch is None or ctx.config.keep_scratch:
        return
    if run.scratch.is_symlink():  # the payload replaced it: remove the link, never what it points to
        run.scratch.unlink()
    elif mounted := remove_tree(run.scratch):
        job_logger(ctx, run).warning("scratch %s left in place: the payload left %s mounted inside, which the "
                                     "pilot cannot unmount (removing it would delete what is mounted there)",
                                     run.scratch, ", ".join(mounted))
    elif run.scratch.exists() and not _removed_once_leftovers_end(ctx, run.scratch):
        job_logger(ctx, run).warning("scratch %s could not be removed whole (an immutable file the payload "
                                     "left, say): what remains takes the node's space", run.scratch)


def _removed_once_leftovers_end(ctx: RankContext, scratch: Path) -> bool:
    """A process the payload left outside its group lives until the monitor's next sweep, and may write in
    scratch meanwhile, faster than it is removed: end it now, and remove again."""
    ctx.monitor.sweep_leftovers()
    return not remove_tree(scratch) and not scratch.exists()


def terminate_in_background(run: JobRun, grace: float) -> None:
    """End a payload's process tree without blocking the caller for the grace period; with the caller blocked,
    when no thread can be started: a payload that took every process its user may have (a fork bomb under
    ``ulimit -u``) would otherwise be declared killed and run on."""
    process = run.process
    if process is not None:  # ending it needs no new thread nor process
        in_thread_or_here(lambda: process.terminate(grace), f"kill-{run.pandaid}")


class recorded:
    """Turn a failure inside the block into the job's error (the first one counts). (A class, as ``timed``.)"""

    __slots__ = ("run", "job_log")

    def __init__(self, run: JobRun, job_log: logging.LoggerAdapter):
        self.run, self.job_log = run, job_log

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type | None, error: BaseException | None, trace: object) -> bool:
        if not isinstance(error, PilotError):
            return False
        self.job_log.error("error %d: %s", error.code, error.diag)
        self.run.fail(error)
        return True
