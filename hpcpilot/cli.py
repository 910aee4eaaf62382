"""Command line: argument parsing only; builds the Config and calls the workflow."""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import signal
import stat
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from . import __version__, logsetup
from .batchscript import add_batch_script_arguments, run_batch_script
from .config import LOG_LEVELS, ConfigError, load_config
from .errors import ExitCode
from .guard import stop_signals_blocked
from .mpi import launched_size, run_or_abort, world
from .sites import SitePluginError, run_sites, select_site
from .staging import STAGEIN_MODES
from .stopping import SignalWatch

log = logging.getLogger(__name__)

RUN_DESCRIPTION = """\
Run every job that Harvester placed in the access point, then leave the
files Harvester reads (worker_attributes.json, jobReport.json,
event_status.dump.json in each job directory) and hpcpilot_summary.json.

Start it under the launcher for HPC mode (mpiexec -n N, srun, aprun) or
alone for grid mode. Settings come, in rising priority, from defaults, the
YAML file (--config or $HPCPILOT_CONFIG), HPCPILOT_* environment variables
(HPCPILOT_CORES_PER_RANK=4, HPCPILOT_FILES__JOB_SPEC=pandaJobData.out) and
these flags. Every setting and its default is in hpcpilot/config.py (Config,
Limits, HarvesterFiles); an unknown one is an error that lists the known ones.
No more jobs are ever asked for (no pull mode): files.request_jobs is never
written, only kept from being the name of another file.

exit codes: 0 every job ran and was declared (whatever its own outcome);
2 bad command line (an unknown option, a value of the wrong kind); 64 some
job could not be declared in the access point, hpcpilot_summary.json could
not be written, a rank fell silent for rank_silence_limit (600 s: it died or
hangs), a rank's file work it waits for (an event service job's
declarations) outlasted transfer_timeout_base or rank_silence_limit, whichever
is longer (a hung filesystem), reading the job definitions outlasted
startup_limit (1800 s: a hung filesystem), another pilot is running on the
same access point, or a rank could start no thread (ulimit -u: no job runs
unwatched); 65 bad
configuration or site (a number out of range here too, settings that differ
between ranks, an MPI not wired to the launcher); 66 the demo access point
cannot be written; 70 internal error; 77 access point unreadable or
malformed; 81 the pilot's lifetime ran out; 82 no jobs; 128+N stopped by
signal N (143 also for the stop file hpcpilot_stop)."""

DEMO_DESCRIPTION = """\
Write an access point laid out as Harvester lays it, with 16 jobs (--jobs;
the 14th and 15th fail on purpose: a wrong input checksum, 1171, and a
payload exit, 1305), and the jobs' input replicas in DIR-replicas beside
it; run them as 'hpcpilot run' does, with the same options; print the
outcome and where to look on standard output (the log, with the per-job
table, goes to standard error).

exit codes: as 'hpcpilot run' (0 also when the two jobs fail as meant); 66
the demo access point cannot be written (or DIR or DIR-replicas has files in
it: it may be a real worker's); 141 its reader left before the outcome was
all written (| head -1; 129: its terminal hung up): the jobs were run all
the same (a run that ended otherwise than 0 keeps its own exit code)."""

BATCH_SCRIPT_DESCRIPTION = """\
Print a batch script that runs 'hpcpilot run' under the site's scheduler and
launcher (standard output, or the file --output names): its directives, the
SIGUSR1 before the walltime limit (Slurm's --signal, else a timer in the
script), output files in the access point. With --harvester-template it
keeps Harvester's placeholders ({nNode}, {accessPoint}, ...) for its
submitter to fill in; --nodes, --walltime and --access-point are then not
needed. Nothing is submitted.

exit codes: 0 the script was written; 2 a bad request or site (the message
says which); 141 its reader left before it was all written (| head)."""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scratch", type=_path, metavar="DIR",
                        help="node-local directory for job scratch (default: the site's scratch candidates, then "
                             "$TMPDIR, then the system temp dir; when none can be used, the access point's "
                             ".hpcpilot/scratch, with a warning)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    parser.add_argument("--cores-per-rank", type=int, metavar="N",
                        help="cores each rank may use; payloads share them by coreCount "
                             "(default: the CPUs the launcher bound this rank to, if it bound each rank to "
                             "CPUs of its own; else the node's CPUs shared among its ranks)")
    parser.add_argument("--keep-scratch", action="store_true", default=None,
                        help="keep each job's scratch directory for debugging")
    parser.add_argument("--stagein-mode", choices=STAGEIN_MODES,
                        help="copy inputs to scratch (default), symlink them, or let the payload read in place")
    parser.add_argument("--progress-interval", type=float, metavar="SECONDS",
                        help="how often rank 0 logs a progress line (default 30)")
    parser.add_argument("--site", metavar="NAME",
                        help="site plugin for scratch, payload setup, containers (default: the one detected, "
                             "else generic); see 'hpcpilot sites'")
    parser.add_argument("--lifetime", type=float, metavar="SECONDS",
                        help="the pilot's lifetime (0: none of its own); the batch job's end time (Slurm, PBS, "
                             "Cobalt) also counts; the pilot stops lifetime_margin (default 180 s) before the "
                             "earlier of the two")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    parser.add_argument("--mpi", action="store_true", help="initialise MPI even without a recognised launcher")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpilot", description="An MPI-parallel pilot for PanDA jobs "
                                     "placed by Harvester on supercomputers, grids and single machines.",
                                     epilog="'hpcpilot COMMAND --help' says what a command needs, where its "
                                     "settings come from and its exit codes.")
    parser.add_argument("--version", action="version", version=f"hpcpilot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the jobs of an access point", description=RUN_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--access-point", type=_path, metavar="DIR",
                     help="the worker's access point, where Harvester placed the jobs (required here or as the "
                          "setting access_point)")
    _add_run_options(run)
    demo = commands.add_parser("demo", help="write a demo access point (16 jobs) and run it",
                               description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--dir", type=_path, metavar="DIR",
                      help="where to write it, a new or empty directory (default: ./hpcpilot-demo-<time>); "
                           "the replicas go to DIR-replicas")
    demo.add_argument("--jobs", type=_at_least_one, default=16, metavar="N", help="number of jobs (default 16)")
    _add_run_options(demo)
    add_batch_script_arguments(commands.add_parser(
        "batch-script", help="print a batch script (or Harvester template) that runs the pilot at a site",
        description=BATCH_SCRIPT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    commands.add_parser("sites", help="list the site plugins; * marks the one detected here",
                        description="List the site plugins registered under the entry point group hpcpilot.sites, "
                        "one line each (scheduler, launcher, cores and memory per node, scratch, container "
                        "runtimes); * marks the one detected here, which 'hpcpilot run' takes unless --site or the "
                        "setting site_name names another. Exit codes: 0; 65 when two packages register one name.")
    return parser


def _path(text: str) -> Path:
    """A directory argument; an empty one (an unset variable in a batch script) would mean the current one."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a directory")
    return Path(text)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    names = ("access_point", "scratch", "cores_per_rank", "keep_scratch", "stagein_mode",
             "progress_interval", "log_level", "lifetime")
    return {**{name: getattr(args, name, None) for name in names}, "site_name": getattr(args, "site", None)}


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(count: int = 2) -> None:
    """glibc gives each thread a heap arena of its own; the pilot's job threads would multiply its RSS."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):
        pass


def run_in_utf8_mode() -> None:
    """Start again in Python's UTF-8 mode (same process, before MPI starts) when the locale's encoding is another.

    Under LC_ALL=C or POSIX with PYTHONUTF8=0, as a batch node may give,
    Python encodes file names, command lines and environment values as ASCII:
    a job whose command or file names hold one non-ASCII character (UTF-8 in
    its definition) could not be run nor staged. Under a Latin-1 locale a
    non-ASCII access point was declared to Harvester by paths it cannot open
    (its bytes taken as Latin-1, written as UTF-8). UTF-8 mode reads the
    bytes of such names alike, and ``-X utf8`` is the pilot's alone: its
    payloads keep the environment they were given.
    """
    if sys.getfilesystemencoding() != "utf-8" and not sys.flags.utf8_mode:
        os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command itself, not a call from Python code
        run_in_utf8_mode()
    limit_malloc_arenas()
    with _quiet_when_reader_leaves():
        args = build_parser().parse_args(argv)  # --help and --version print, then exit
        if args.command == "batch-script":
            return run_batch_script(args)
        if args.command == "sites":
            return run_sites(args)
    # Installed before MPI starts and kept until the process exits: a stop signal is never fatal. MPI finalizes
    # after main returns (mpi4py, at exit); a rank a late signal killed there would leave MPICH's segment in
    # /dev/shm and the signal as the launcher's exit code, when every job is already declared.
    return _run_command(args, SignalWatch().install())


@contextmanager
def _quiet_when_reader_leaves(outcome: int = ExitCode.SUCCESS) -> Iterator[None]:
    """A command whose reader went away (``| head -1``) ends as a Unix tool killed by SIGPIPE would: exit
    128+SIGPIPE, no traceback. Not 0: the output was not all delivered (a script piped to sbatch that quit early
    was not submitted), and a pipeline under ``set -o pipefail`` fails as it would with cat. A terminal that
    hung up (an ssh session gone) is a reader gone too: 128+SIGHUP, as its hangup ends a Unix tool. A failure the
    command already had (``outcome``, its exit code: a demo's run that stopped early) says more and is kept.
    Only for the commands that print: a pilot's own pipes (to its guard, its payloads) must not end it so."""
    try:
        try:
            yield
        finally:
            if sys.stdout is not None:  # None: started with standard output closed
                sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
    except OSError as error:
        gone = _reader_gone_code(error)
        if gone is None:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush would fail again
        sys.exit(outcome or gone)


def _reader_gone_code(error: OSError) -> int | None:
    """The exit code of a command whose output ``error`` found no reader for; None for another error (a disk's
    EIO on a file is one)."""
    if isinstance(error, BrokenPipeError):
        return 128 + signal.SIGPIPE
    if error.errno == errno.EIO and _hung_up_terminal(sys.stdout):
        return 128 + signal.SIGHUP
    return None


def _hung_up_terminal(stream: Any) -> bool:
    """A hung-up terminal fails every write with EIO, an empty one too; a live one takes it (then the EIO came
    from elsewhere, e.g. a disk that failed a read)."""
    try:
        fd = stream.fileno()
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            return False
        os.write(fd, b"")
    except OSError as error:
        return error.errno == errno.EIO
    except (AttributeError, ValueError):  # no standard output (None), or closed
        return False
    return False


def _run_command(args: argparse.Namespace, signals: SignalWatch) -> int:
    with stop_signals_blocked():  # one sent as MPI starts waits for the handlers, not taken by MPI's (lost)
        comm = world(force_mpi=args.mpi)
        signals.install()  # again: MPI's start may have taken a stop signal (UCX takes SIGHUP)
    signals.rank = comm.rank
    if not _mpi_sees_every_task(comm):
        return ExitCode.GENERAL
    prepared = _settings_and_site(args, comm.rank)
    if isinstance(prepared, str):
        print(prepared, file=sys.stderr)
    if not _every_rank_ready(comm, prepared):
        return ExitCode.GENERAL
    config, site = prepared
    command = _run_demo if args.command == "demo" else _run
    return run_or_abort(comm, lambda: command(args, config, comm, site, signals), ExitCode.EXCEPTION)


def _mpi_sees_every_task(comm: Any) -> bool:
    """False, said, when the launcher started more tasks than MPI has ranks: an MPI not wired to the launcher
    (srun's --mpi) starts each task as a whole worker of one rank, all on one access point; the run lock would
    stop all but one, and srun --kill-on-bad-exit would then stop that one too, failing every job."""
    started = launched_size()
    if started is None or started <= comm.size:
        return True
    print(f"hpcpilot: the launcher started {started} tasks, but MPI sees {comm.size} rank(s): it is not wired to "
          "the launcher (under srun, give the --mpi plugin your MPI uses, e.g. srun --mpi=pmi2 for MPICH); "
          "stopping before touching the access point", file=sys.stderr)
    return False


def _settings_and_site(args: argparse.Namespace, rank: int) -> tuple[Any, Any] | str:
    """This rank's settings and site, or the message saying why it cannot have them."""
    try:
        config = load_config(args.config, cli=_cli_settings(args))
    except ConfigError as error:
        return f"hpcpilot: configuration error: {error}"
    if args.command == "run" and config.access_point is None:
        return ("hpcpilot run: the access point is required: --access-point DIR (or access_point in the config "
                "file, or HPCPILOT_ACCESS_POINT)")
    logsetup.configure(rank, config.log_level)
    try:
        site = select_site(config.site_name or None)  # a misspelt or broken site stops every rank before any job
    except SitePluginError as error:
        return f"hpcpilot: site error: {error} (see 'hpcpilot sites')"
    return config, site


def _every_rank_ready(comm: Any, prepared: tuple[Any, Any] | str) -> bool:
    """Whether every rank has its settings and site, and the worker's own alike (collective). A mistake in one
    rank's environment alone (mpiexec -env, a node's own setup) must stop the others too: they would wait for it
    until startup_limit, or declare its jobs where Harvester does not look."""
    ready = not isinstance(prepared, str)
    gathered = comm.allgather(_worker_settings(prepared[0]) if ready else None)
    unready = [rank for rank, settings in enumerate(gathered) if settings is None]
    if unready:
        if ready:
            print(f"hpcpilot: rank {comm.rank} stops too: rank(s) {_ranks(unready)} cannot start (their message "
                  "says why)", file=sys.stderr)
        return False
    differing = [rank for rank, settings in enumerate(gathered) if settings != gathered[0]]
    if comm.rank in differing:
        names = ", ".join(name for name, value in gathered[comm.rank].items() if value != gathered[0][name])
        print(f"hpcpilot: configuration error: rank {comm.rank}'s {names} differ from rank 0's: every rank must "
              "see the worker as Harvester laid it out", file=sys.stderr)
    elif differing:
        print(f"hpcpilot: rank {comm.rank} stops too: rank(s) {_ranks(differing)} have other worker-wide settings "
              "than rank 0 (access point, Harvester file names, secret_keys, rank_silence_limit, startup_limit)",
              file=sys.stderr)
    return not differing


def _worker_settings(config: Any) -> dict[str, Any]:
    """The settings every rank must share: where and under which names jobs are declared, what is redacted, and
    how long a rank waits for the others (a rank with a shorter limit than its peers' pace aborts them all)."""
    files = {f"files.{name}": value for name, value in asdict(config.files).items()}
    where = config.access_point and config.access_point.absolute()  # a relative one: from each rank's directory
    return {"access_point": where, "secret_keys": config.secret_keys, "rank_silence_limit": config.rank_silence_limit,
            "startup_limit": config.startup_limit, **files}


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:10])) + (", ..." if len(ranks) > 10 else "")


def _run(args: argparse.Namespace, config: Any, comm: Any, site: Any, signals: SignalWatch) -> int:
    from .workflow.hpc import run_worker

    return run_worker(config, comm, site, signals)


def _run_demo(args: argparse.Namespace, config: Any, comm: Any, site: Any, signals: SignalWatch) -> int:
    from dataclasses import replace

    from .demo import default_directory, make_demo
    from .workflow.hpc import run_worker

    root = None
    if comm.rank == 0:
        try:
            root = make_demo(args.dir or default_directory(), args.jobs, config.files)
            log.info("demo access point written to %s", root)
        except OSError as error:
            log.error("cannot write the demo access point (choose another with --dir): %s", error)
    root = comm.bcast(root, root=0)
    if root is None:
        return ExitCode.MKDIR
    config = replace(config, access_point=root)
    exit_code = run_worker(config, comm, site, signals)
    summary = config.access_point / config.files.summary
    if comm.rank == 0 and summary.exists():
        with _quiet_when_reader_leaves(exit_code):  # the outcome only: while the jobs run, no pipe ends the pilot
            _print_demo_outcome(summary)
    return exit_code


def _print_demo_outcome(summary_path: Path) -> None:
    """The outcome and where to look: the table of jobs is already in the log (standard error)."""
    summary = json.loads(summary_path.read_text())
    print(f"{summary['finished']} finished, {summary['failed']} failed; access point: {summary_path.parent}")
    print(f"what Harvester reads is in {summary_path.parent}/<PandaID>/: worker_attributes.json, jobReport.json, "
          f"event_status.dump.json, the outputs and the log tarball; every job's row is in {summary_path.name}")


if __name__ == "__main__":
    sys.exit(main())
