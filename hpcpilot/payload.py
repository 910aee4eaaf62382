"""Launching the payload: environment, command, and what its exit means.

A PanDA payload command *is* a shell line (``transformation jobPars``): it
runs through ``bash -c`` inside the job's own scratch directory, in a session
of its own so that its whole process tree can be signalled. A line of plain
words, which bash would only look up and exec, is exec'd straight away
(see plainexec): one process start less per job.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .atomicfile import open_in_place
from .errors import ErrorCode, PilotError, out_of_space, signal_error_code
from .guard import PayloadGuard
from .jobs import JobSpec
from .plainexec import plain_command
from .proctree import TOKEN_ENV, ProcessTree, new_token

STDOUT_NAME = "payload.stdout"
STDERR_NAME = "payload.stderr"
# Set, it switches Athena to multi-process mode with that many workers: a value of the pilot's own environment
# (a whole node's, exported for the batch job) would have one-core payloads fork as many, slot after slot.
MULTI_PROCESS_VARIABLE = "ATHENA_PROC_NUMBER"


def payload_environment(job: JobSpec, rank: int, scratch: Path, job_dir: Path,
                        base: Mapping[str, str], site_variables: Mapping[str, str]) -> dict[str, str]:
    """The payload's environment: the pilot's, the site's (core counts included), the job's identity."""
    env = dict(base)
    env.pop(MULTI_PROCESS_VARIABLE, None)  # the site's sets it for a job of several cores
    env.update(site_variables)
    env.update({
        "PANDAID": str(job.pandaid),
        "PandaID": str(job.pandaid),
        "HPCPILOT_RANK": str(rank),
        "HPCPILOT_SCRATCH": str(scratch),
        "HPCPILOT_JOB_DIR": str(job_dir),
        TOKEN_ENV: new_token(),
        "TMPDIR": str(scratch),
    })
    return env


@dataclass
class PayloadExit:
    returncode: int  # negative: killed by that signal
    cpu_seconds: float


class Payload:
    """One running payload process, started in its own session, and its whole process tree."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], guard: PayloadGuard | None = None,
                 executable: str | None = None):
        with open(_output_file(cwd, STDOUT_NAME), "wb", buffering=0) as out, \
                open(_output_file(cwd, STDERR_NAME), "wb", buffering=0) as err:
            self.process = subprocess.Popen(argv, executable=executable, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, start_new_session=True)
        self.tree = ProcessTree(self.process.pid, env[TOKEN_ENV], session_id=self.process.pid)
        self.guard = guard
        if guard is not None:
            guard.started(self.process.pid)  # its session's id, and its process group's

    @property
    def pid(self) -> int:
        return self.process.pid

    def has_exited(self) -> bool:
        """True once the payload has ended; it is left for :meth:`wait` to reap."""
        if self.process.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped by wait() in another thread a moment ago
            return True

    def wait(self) -> PayloadExit:
        """Wait for the payload and collect the CPU time of it and the children it waited for."""
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        if self.guard is not None:
            self.guard.ended(self.process.pid)
        return PayloadExit(self.process.returncode, usage.ru_utime + usage.ru_stime)

    def terminate(self, grace: float) -> list[int]:
        """SIGTERM to every process of the payload, SIGKILL to those left after ``grace`` seconds.

        Also ends what a finished payload left behind (children that outlived it),
        searching every environment of our uid for its token: thorough but costly.
        """
        return self.tree.kill(grace)

    def end_leftovers(self, grace: float) -> list[int]:
        """After :meth:`wait`: end what the payload left in its process group, cheaply.

        Processes that left the group are for a ``LeftoverSweep`` to end
        (``Monitor.unwatch`` hands the payload's token to the monitor's).
        """
        return self.tree.end_leftovers(grace)


def _output_file(cwd: Path, name: str) -> int:
    """The payload's ``name`` in scratch, new or emptied. An event service payload is started again in the
    scratch its predecessor left: a symlink or FIFO it put there is replaced, never written through (into a
    file outside scratch) nor waited on (for ever, for a reader)."""
    return open_in_place(os.path.join(cwd, name), 0o666)


@functools.cache
def bash() -> str:
    """bash by its full path: found once, not searched along PATH by every launch."""
    return shutil.which("bash") or "bash"


def shell_line(job: JobSpec, setup_lines: list[str]) -> str:
    """The site's setup lines, then the job's own command line."""
    return "\n".join([*setup_lines, job.command])


def launch_line(line: str, cwd: Path, env: dict[str, str], guard: PayloadGuard | None = None,
                exec_plain: bool = True) -> Payload:
    """Run the shell line ``line``: exec'd directly when it is a plain command (and ``exec_plain``), else
    through ``bash -c``."""
    plain = plain_command(line, str(cwd), env) if exec_plain else None
    if plain is not None:
        try:
            return Payload(plain.argv, cwd, plain.env, guard, executable=plain.program)
        except OSError:
            pass  # no #! line, a missing interpreter...: bash does what it does with those, or says why not
    return launch([bash(), "-c", line], cwd, env, guard)


def launch(argv: list[str], cwd: Path, env: dict[str, str], guard: PayloadGuard | None = None) -> Payload:
    try:
        return Payload(argv, cwd, env, guard)
    except OSError as error:  # a scratch without space (or inodes) for payload.stdout: the node's fault
        code = ErrorCode.NO_LOCAL_SPACE if out_of_space(error) else ErrorCode.SETUP_FAILED
        raise PilotError(code, f"cannot start payload {argv[0]}: {error}") from None


def exit_error(exit: PayloadExit) -> PilotError | None:
    """The job error a payload exit means, or None for success."""
    if exit.returncode < 0:
        signum = -exit.returncode
        return PilotError(signal_error_code(signum), f"payload killed by signal {signal_name(signum)}")
    if exit.returncode > 0:
        hint = _EXIT_HINTS.get(exit.returncode, "")
        return PilotError(ErrorCode.PAYLOAD_EXIT, f"payload exited with code {exit.returncode}{hint}")
    return None


def shell_status(returncode: int) -> int:
    """An exit as a shell reports it, 128 + the signal for a killed process: what a payload behind bash
    gets, and never negative, as PanDA takes a transExitCode."""
    return 128 - returncode if returncode < 0 else returncode


_EXIT_HINTS = {126: " (command not executable)", 127: " (command not found)"}


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
