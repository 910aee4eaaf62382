"""Ranks watch each other for the whole run: a rank gone silent ends the pilot.

A launcher may leave the other ranks running when one dies (srun does, by
default: Slurm's WaitTime=0 and no --kill-on-bad-exit). Rank 0 would then
wait for the dead rank's results forever while it keeps the heartbeat
fresh, and Harvester would see a live worker until the allocation ends.
So rank 0 and every other rank tell each other that they are alive, a few
times per ``rank_silence_limit``; a peer not heard from for that long (dead,
stopped, or on a hung node) makes the rank give up.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import ExitCode
from ..mpi import abort_every_rank, any_source, new_status
from ..threadstart import start_or_give_up

log = logging.getLogger(__name__)

ALIVE_TAG = 29
SAYS_PER_LIMIT = 10  # a peer misses this many "alive" messages in a row before it counts as silent
AWAY_SHARE = 0.5  # of the limit: a rank that did not look for this long was away itself (see _excuse)


class PeerWatch:
    """Rank 0 watches every rank; every other rank watches rank 0. A ``limit`` of 0 watches nothing."""

    def __init__(self, comm: Any, limit: float):
        self.comm = comm
        self.limit = limit
        self.peers = [] if comm.size == 1 or not limit else [0] if comm.rank else list(range(1, comm.size))
        now = time.monotonic()
        self.heard = dict.fromkeys(self.peers, now)
        self.rounds = 0  # "alive" messages sent to each peer
        self.received = 0
        self._next_round = now
        self._looked = now  # when this rank last listened
        self._sent: list[Any] = []  # isend requests, which keep their buffers alive

    def silent_peer(self) -> tuple[int, float] | None:
        """Say this rank is alive when due, take in what peers said; (a silent peer, its silence) or None."""
        if not self.peers:
            return None
        now = time.monotonic()
        self._excuse(now - self._looked)
        self._looked = now
        if now >= self._next_round:
            self._say_alive()
            self._next_round = now + self.limit / SAYS_PER_LIMIT
        self._listen(now)
        silent = min(self.peers, key=self.heard.__getitem__)
        return (silent, now - self.heard[silent]) if now - self.heard[silent] > self.limit else None

    def _excuse(self, away: float) -> None:
        """This rank was away itself (the whole job suspended, the node frozen): a peer not heard meanwhile
        was not silent for want of a listener, and every rank would otherwise abort on resuming."""
        if away > self.limit * AWAY_SHARE:
            for peer in self.peers:
                self.heard[peer] += away

    def _say_alive(self) -> None:
        self._sent = [request for request in self._sent if not request.Test()]
        self._sent += [self.comm.isend(None, dest=peer, tag=ALIVE_TAG) for peer in self.peers]
        self.rounds += 1

    def _listen(self, now: float) -> None:
        status = new_status()
        while self.comm.iprobe(source=any_source(), tag=ALIVE_TAG, status=status):
            self.comm.recv(source=status.Get_source(), tag=ALIVE_TAG)
            self.heard[status.Get_source()] = now
            self.received += 1

    def settle(self, rounds_by_rank: list[int]) -> None:
        """Once no rank watches any more: take in what the peers said since this rank last listened (left
        unreceived, MPICH would leave its shared memory behind) and see this rank's own messages delivered."""
        for _ in range(sum(rounds_by_rank[peer] for peer in self.peers) - self.received):
            self.comm.recv(source=any_source(), tag=ALIVE_TAG)
        for request in self._sent:
            request.wait()


@contextmanager
def startup_watch(comm: Any, limit: float) -> Iterator[None]:
    """Start-up reads the access point before any rank watches another, and a hung shared filesystem never
    answers such a read (no signal ends it): every rank would wait idle until the allocation ends. Start-up
    still going after ``limit`` seconds (0: never) makes this rank abort every rank, exit 64."""
    if not limit:
        yield
        return
    timer = threading.Timer(limit, _give_up_starting, args=(comm, limit))
    timer.daemon = True  # a rank that ends on its own does not wait for it
    start_or_give_up(timer, "the start-up watch's timer")
    try:
        yield
    finally:
        timer.cancel()


def _give_up_starting(comm: Any, limit: float) -> None:
    log.error("start-up (reading the access point's job definitions and an earlier run's declarations) has not "
              "ended after %g s (startup_limit): its filesystem does not answer; aborting every rank (exit code %d) "
              "rather than hold the allocation idle. Run the worker again once the filesystem answers (or raise "
              "startup_limit for a worker of very many jobs on a slow filesystem)", limit, ExitCode.SITE_PROBLEM)
    abort_every_rank(comm, ExitCode.SITE_PROBLEM)
