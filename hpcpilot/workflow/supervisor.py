"""The per-rank watch kept between job events: stop requests, heartbeat, pending declarations.

A stop that starts on one rank (signal, stop file, deadline) is announced to
every other rank, so all of them stop gracefully together. A rank that falls
silent (see liveness) ends the whole pilot instead: nothing could wait for it.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from concurrent import futures
from typing import Any, Callable, TypeVar

from ..errors import ExitCode
from ..lifetime import Deadline
from ..mpi import abort_every_rank, any_source, wait_idly
from ..stopping import SignalWatch, StopRequest
from .jobflow import RankContext
from .liveness import PeerWatch
from .workers import HangClock, Helper, Hung

log = logging.getLogger(__name__)

STOP_TAG = 23
FLUSH_INTERVAL = 10.0
ALIVE_POLL_SECONDS = 0.1
KILL_FILE_WAIT = 5.0  # seconds: a hung filesystem must not keep a rank that gives up from aborting
T = TypeVar("T")


class Supervisor:
    def __init__(self, ctx: RankContext, comm: Any, deadline: Deadline, signals: SignalWatch,
                 on_stop: Callable[[StopRequest], None] = lambda request: None):
        self.ctx = ctx
        self.comm = comm
        self.deadline = deadline
        self.signals = signals
        self.on_stop = on_stop  # what stops the current work; each phase sets its own
        self.stop_request: StopRequest | None = None
        self._sent: list[Any] = []  # isend requests, which keep their buffers alive; a rank announces once
        self._received = 0
        self._stop_file_looked_for = False  # one there at the first look may be an earlier stop's
        self.peers = PeerWatch(comm, ctx.config.rank_silence_limit)
        self._helper = Helper(f"rank{ctx.rank}-alive")  # for the file work the rank waits for (keeping_alive)
        self._next = {"heartbeat": 0.0, "stop_file": 0.0, "flush": time.monotonic() + FLUSH_INTERVAL}

    def tick(self) -> None:
        self.keep_alive()
        if self.stop_request is None:
            self._look_for_stop()
        if self._due("flush", FLUSH_INTERVAL):  # a dump taken back is rewritten, fsynced: seconds, maybe
            self.filing(self.ctx.publisher.flush, "publishing staged declarations")

    def keep_alive(self) -> None:
        """What tells Harvester and the other ranks that this rank lives; alone, where stops cannot be acted on
        yet (many invalid jobs declared before the first runs)."""
        if silent := self.peers.silent_peer():
            self._give_up(*silent)
        if self.ctx.rank == 0 and self._due("heartbeat", self.ctx.config.heartbeat_interval):
            self._heartbeat()

    def keeping_alive(self, work: Callable[[], T], hung_after: float = math.inf, stop_grace: float | None = None
                      ) -> T:
        """``work`` (file copies the main thread would wait for, e.g. an event service job's stage-in on every
        rank at once) on the rank's helper thread while this rank says it is alive and looks for a stop: one sets
        ``ctx.stopping``, which ends an input copy at its next chunk. Nothing else of ``tick`` runs meanwhile
        (the publisher's flush, itself such work, is not for two threads).

        Work still going after ``hung_after`` seconds (``stop_grace``, by default a third of ``stop_bound``,
        after a stop, if it has a ``hung_after`` at all) is stuck in a system call a hung filesystem never
        answers: Hung is raised, its thread left behind (the next work gets a new one). Work without one (a
        job's declaration) is waited for, stop or not. Never called from such work: it would wait behind itself."""
        clock = HangClock(hung_after, self.ctx.config.stop_wait if stop_grace is None else stop_grace)
        done = self._helper.start(work)
        while not futures.wait([done], timeout=ALIVE_POLL_SECONDS).done:
            self.keep_alive()
            if self.stop_request is None:
                self._look_for_stop()
            if self.stop_request is not None:
                clock.stop()
            if clock.overrun():
                self._helper.abandon()
                raise Hung(clock.waited())
        return done.result()

    def filing(self, work: Callable[[], T], what: str) -> T:
        """``work`` on a filesystem (declarations, Harvester's files, scratch) while this rank says it is alive,
        as ``keeping_alive``: an fsync of a loaded shared filesystem takes seconds, maybe more than
        rank_silence_limit. Work still going, stop or not, after the time limit of one file's copy (that of an
        empty file), or rank_silence_limit if longer, is taken for a hung filesystem: this rank ends the pilot,
        as its silence made its peers do before it said it was alive meanwhile."""
        hung_after = max(self.ctx.config.limits.transfer_timeout(0), self.ctx.config.rank_silence_limit)
        try:
            return self.keeping_alive(work, hung_after, stop_grace=math.inf)
        except Hung as hung:
            self._abort(f"{what} has not ended after {hung.waited:.0f} s", "its filesystem hangs")
            raise

    def adopt(self, request: StopRequest | None) -> None:
        """A stop learnt some other way (e.g. in a rank's final report)."""
        if request is not None and self.stop_request is None:
            self._stop(request)

    def _look_for_stop(self) -> None:
        request = self.signals.pending() or self._deadline() or self._stop_file()
        if request is not None:
            self._announce(request)
        else:
            request = self._receive()
        if request is not None:
            self._stop(request)

    def _stop(self, request: StopRequest) -> None:
        self.stop_request = request
        self.ctx.stopping.stop(request)  # first: the work of other threads sees it at once
        log.warning("graceful stop: %s; ending running payloads, declaring every job with %d",
                    request.reason, request.code)
        self.on_stop(request)

    def _deadline(self) -> StopRequest | None:
        return StopRequest.for_deadline() if self.deadline.reached() else None

    def _stop_file(self) -> StopRequest | None:
        if self.ctx.rank != 0 or not self._due("stop_file", self.ctx.config.limits.check_interval):
            return None
        path = self.ctx.access_point.root / self.ctx.config.files.stop_file
        first_look, self._stop_file_looked_for = not self._stop_file_looked_for, True
        return StopRequest.for_stop_file(str(path), there_at_start=first_look) if path.exists() else None

    def _announce(self, request: StopRequest) -> None:
        for rank in range(self.comm.size):
            if rank != self.ctx.rank:
                self._sent.append(self.comm.isend(request, dest=rank, tag=STOP_TAG))

    def _receive(self) -> StopRequest | None:
        if self.comm.size == 1 or not self.comm.iprobe(source=any_source(), tag=STOP_TAG):
            return None
        self._received += 1
        return self.comm.recv(source=any_source(), tag=STOP_TAG)

    def settle(self) -> None:
        """Take in the stop notices still on their way here and see this rank's own delivered: every rank
        calls this after its last tick. (When each rank saw the stop itself, nobody received the others'
        notices, and MPICH left its shared-memory segment in /dev/shm behind.)"""
        if self.comm.size == 1:
            return
        self.on_stop = lambda request: None  # nothing of this rank's runs any more
        # Ranks done early sleep (a blocking collective would spin on the cores) and keep watching: a stop
        # only this rank sees (a signal to it alone) must still reach the ranks whose jobs run on.
        wait_idly(self.comm, tick=self.tick)
        announced, rounds = zip(*self.comm.allgather((bool(self._sent), self.peers.rounds)))
        for _ in range(sum(announced) - announced[self.ctx.rank] - self._received):  # each told every other once
            self.comm.recv(source=any_source(), tag=STOP_TAG)
        for request in self._sent:
            request.wait()
        self.peers.settle(list(rounds))

    def _give_up(self, peer: int, silence: float) -> None:
        """A peer is gone, so no collective can complete: MPI_Abort ends every rank (the launcher ends the job),
        and each rank's guard then ends its payloads; Harvester is asked to cancel the batch job too, in case
        the launcher cannot end a hung rank. Jobs not yet final stay undeclared, as after a launcher's clean-up:
        Harvester fails them with the worker, or a run on this access point reruns them."""
        limit = self.ctx.config.rank_silence_limit
        self._abort(f"rank {peer} not heard from for {silence:.0f} s (rank_silence_limit {limit:g} s)",
                    "it died or hangs, and the launcher left the other ranks running")

    def _abort(self, reason: str, cause: str) -> None:
        """Every rank aborted (exit 64), Harvester asked to cancel the worker."""
        log.error("%s: %s; aborting every rank (exit code %d) and asking Harvester to cancel the worker; a rerun "
                  "on this access point runs the jobs that were not declared yet", reason, cause, ExitCode.SITE_PROBLEM)
        # In a thread of its own: the filesystem may hang (maybe why the peer fell silent), the abort must not.
        writer = threading.Thread(target=self._request_kill, args=(reason,), name="kill-worker", daemon=True)
        try:
            writer.start()
        except RuntimeError as error:  # "can't start new thread": writing here could hang the abort
            log.warning("%s not written (%s): aborting without it", self.ctx.config.files.kill_worker, error)
        else:
            writer.join(KILL_FILE_WAIT)
            if writer.is_alive():
                log.warning("%s not written after %g s: aborting without it", self.ctx.config.files.kill_worker,
                            KILL_FILE_WAIT)
        abort_every_rank(self.comm, ExitCode.SITE_PROBLEM)

    def _request_kill(self, reason: str) -> None:
        try:
            self.ctx.access_point.request_kill(reason)
        except OSError as error:
            log.warning("cannot write %s: %s", self.ctx.config.files.kill_worker, error)

    def _heartbeat(self) -> None:
        try:
            self.ctx.access_point.touch_heartbeat()
        except OSError as error:
            log.warning("cannot write the heartbeat file: %s", error)

    def _due(self, what: str, interval: float) -> bool:
        now = time.monotonic()
        if now < self._next[what]:
            return False
        self._next[what] = now + interval
        return True
