"""A payload never outlives its rank: a guard process ends what a rank that died (even by SIGKILL) left running.

Payloads run in sessions of their own, so that a whole payload tree can be
signalled; that also puts them out of reach of whoever kills the rank (the
MPI launcher signals the ranks' process groups). Each rank starts one guard,
in a session of its own, and tells it through a pipe of every payload
session it starts and reaps. If the pipe closes without a goodbye, the rank
is gone: the guard SIGKILLs the sessions still registered, then every
process that carries a payload token of that rank (what a payload left
running outside its process group, daemons included), and exits. The token
search is best effort: a process whose environment cannot be read
(non-dumpable, setuid) or that wrote over it is not found.

Run as ``python -m hpcpilot.guard <token prefix>``; it reads the pipe on its
stdin, lines ``+<pgid>``, ``-<pgid>`` and ``bye``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

from .proctree import TOKEN_PREFIX, kill_until_gone, token_holders
from .stopping import STOP_SIGNALS

log = logging.getLogger(__name__)


class PayloadGuard:
    """The rank's side: start the guard, register payload sessions, say goodbye at the end."""

    def __init__(self) -> None:
        read_end, self._pipe = os.pipe()  # both ends close-on-exec: payloads never hold the pipe open
        self._broken = False
        self.process: subprocess.Popen | None = None
        try:
            with stop_signals_blocked():  # the guard is born with them blocked, until it ignores them
                self.process = subprocess.Popen([sys.executable, "-m", __name__, TOKEN_PREFIX], stdin=read_end,
                                                start_new_session=True)
        except OSError as error:  # the pilot still runs its jobs, as it did before there were guards
            self._broken = True
            log.warning("cannot start the payload guard (%s): payloads will outlive this rank if it is killed",
                        error)
        finally:
            os.close(read_end)

    def started(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def ended(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """The rank ends normally, its payloads all reaped: the guard leaves without ending anything."""
        if self._pipe >= 0:
            self._send(b"bye\n")
            self.abandon()

    def abandon(self) -> None:
        """The rank gives up (an error escaped it): the guard ends what its payloads left, as if it had died."""
        if self._pipe < 0:
            return
        os.close(self._pipe)
        self._pipe = -1
        if self.process is not None:
            self.process.wait()

    def _send(self, line: bytes) -> None:
        if self._broken or self._pipe < 0:  # no guard, or the rank gave up on it (abandon)
            return
        try:
            os.write(self._pipe, line)  # far below PIPE_BUF: written whole, even from many threads at once
        except OSError as error:  # the guard was killed: payloads run on, unguarded
            self._broken = True
            log.warning("payload guard gone (%s): payloads will outlive this rank if it is killed", error)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """The stop signals blocked in this thread, and in the processes it starts (a signal mask survives exec).

    A guard's Python takes a few hundred milliseconds to start and ignore
    them: a stop sent to every process of the job meanwhile would kill it.
    This thread's own stop signals wait, and are delivered at the end.
    """
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def guard(lines: Iterable[bytes]) -> set[int] | None:
    """The payload sessions left registered when ``lines`` end without a goodbye; None after one."""
    alive: set[int] = set()
    for line in lines:
        if line.startswith(b"+"):
            alive.add(int(line[1:]))
        elif line.startswith(b"-"):
            alive.discard(int(line[1:]))
        elif line.strip() == b"bye":
            return None
    return alive


def main() -> int:
    # A stop for the rank must not disarm its guard: a ^C meant for the pilot, or a batch system's warning
    # (Slurm's --signal=USR1@60 reaches every process of the job step, the guard's session too).
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since its start (stop_signals_blocked)
    left = guard(sys.stdin.buffer)
    if left is None:
        return 0
    for pgid in left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if len(sys.argv) > 1:
        prefix = sys.argv[1].encode() + b"."
        kill_until_gone(lambda: token_holders(lambda token: token.startswith(prefix)), "payloads of a dead rank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
