"""Why the pilot stops early: signals, the stop file, the deadline; and what each means for jobs.

A stop is graceful: no new payloads, running ones terminated, every job
declared with the stop's PanDA code, and the pilot exits with its code.
"""
from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

from .errors import ErrorCode, ExitCode, PilotError, signal_error_code, signal_exit_code
from .nodename import node_name

# Signals that ask for a graceful stop (batch systems send SIGTERM or SIGUSR1 before the kill; SIGHUP comes when
# the terminal of an interactive allocation, salloc or ssh, goes away).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGQUIT, signal.SIGXCPU, signal.SIGHUP)
# Stop signals that stay ignored when the pilot was started ignoring them: nohup asks for no stop at a hangup.
KEPT_IGNORED = (signal.SIGHUP,)


@dataclass(frozen=True)
class StopRequest:
    code: ErrorCode  # declared for the jobs the stop ends
    exit_code: int  # the pilot's exit code
    reason: str

    @classmethod
    def for_signal(cls, signum: int, rank: int) -> "StopRequest":
        name = signal.Signals(signum).name
        return cls(signal_error_code(signum), signal_exit_code(signum),
                   f"{name} received by rank {rank} on {node_name()}")

    @classmethod
    def for_stop_file(cls, path: str, there_at_start: bool = False) -> "StopRequest":
        reason = (f"stop file {path} was there when the jobs were to start (an earlier stop's? remove it to run "
                  "them)" if there_at_start else f"stop file {path} appeared")
        return cls(ErrorCode.SIGTERM, signal_exit_code(signal.SIGTERM), reason)

    @classmethod
    def for_deadline(cls) -> "StopRequest":
        return cls(ErrorCode.WALLTIME, ExitCode.MAX_TIME, "pilot lifetime (less its safety margin) reached")

    def not_started(self) -> PilotError:
        """The error of a job the stop keeps from starting."""
        return PilotError(self.code, f"not started: {self.reason}")


class StopEvent(threading.Event):
    """A rank's stop, for the work of its other threads to see (e.g. an input copy, which ends at its next
    chunk): set once, with the request that the jobs it ends are declared with."""

    request: StopRequest | None = None

    def stop(self, request: StopRequest) -> None:
        self.request = request
        self.set()


class SignalWatch:
    """Records the first stop signal; the main loop turns it into a StopRequest."""

    def __init__(self, rank: int = 0):
        self.rank = rank  # known once MPI has started; the handlers are installed before
        self.signum: int | None = None
        self.watched: tuple[int, ...] | None = None  # chosen at the first install, as the pilot was started
        self.ignored: tuple[int, ...] = ()  # the KEPT_IGNORED the pilot was started ignoring

    def install(self) -> "SignalWatch":
        """Handle the stop signals; again once MPI has started, for its libraries may take one for themselves
        (UCX takes SIGHUP, to raise its log level): those the pilot was started ignoring are ignored again, or a
        hangup under nohup would turn UCX's debug log on for the rest of the run."""
        if self.watched is None:
            self.ignored = tuple(signum for signum in KEPT_IGNORED if signal.getsignal(signum) == signal.SIG_IGN)
            self.watched = tuple(signum for signum in STOP_SIGNALS if signum not in self.ignored)
        for signum in self.watched:
            signal.signal(signum, self._record)
        for signum in self.ignored:
            signal.signal(signum, signal.SIG_IGN)
        return self

    def _record(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    def pending(self) -> StopRequest | None:
        return None if self.signum is None else StopRequest.for_signal(self.signum, self.rank)
