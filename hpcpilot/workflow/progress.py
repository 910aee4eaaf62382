"""Results flowing to rank 0 as jobs end: live progress lines and the final collection.

Ranks other than 0 send small messages (job started, job result, share
done) without waiting for rank 0; rank 0 drains them between its own jobs.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from ..jobstate import JobResult
from ..mpi import any_source

log = logging.getLogger(__name__)

TAG = 17
POLL_SECONDS = 0.05


class Reporter:
    """The sending side, on every rank but 0."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.requests: list[Any] = []

    def _send(self, message: tuple) -> None:
        self.requests.append(self.comm.isend(message, dest=0, tag=TAG))
        self.requests = [request for request in self.requests if not request.Test()]

    def send_started(self, pandaid: int) -> None:
        self._send(("started", pandaid))

    def send_result(self, result: JobResult) -> None:
        self._send(("result", result))

    def send_declared(self, results: list[JobResult]) -> None:
        """Jobs declared without running (their definitions were invalid), in one message: thousands sent one
        by one took a second (each send tests those still pending), in which the rank said nothing to its peers."""
        if results:
            self._send(("declared", results))

    def close(self, stop_request: Any = None, tick: Callable[[], None] = lambda: None) -> None:
        """The share is done; ``stop_request`` tells rank 0 how this rank was stopped, if it was. Waits until
        rank 0 has taken every message, calling ``tick`` meanwhile: rank 0 may still be busy with its own share
        (declaring thousands of invalid jobs) while a large message waits for its receive."""
        self._send(("done", stop_request))
        while self.requests:
            tick()
            time.sleep(POLL_SECONDS)
            self.requests = [request for request in self.requests if not request.Test()]


class Collector:
    """The receiving side, on rank 0: gathers every result and logs progress."""

    def __init__(self, comm: Any, total: int, results: list[JobResult], interval: float):
        self.comm = comm
        self.total = total
        self.results = list(results)
        self.running = 0
        self.ran = 0  # jobs run by this worker: the rate leaves out those declared without running
        self.ranks_done = 1  # rank 0 itself is accounted for by the caller's loop
        self.stop_requests: list[Any] = []
        self.interval = interval
        self.started_at = time.monotonic()
        self.last_line = self.started_at

    def note_started(self, pandaid: int) -> None:
        self.running += 1

    def add(self, result: JobResult) -> None:
        self.running -= 1
        self.ran += 1
        self.results.append(result)

    def poll(self) -> None:
        while self.comm.size > 1 and self.comm.iprobe(source=any_source(), tag=TAG):
            kind, value = self.comm.recv(source=any_source(), tag=TAG)
            if kind == "started":
                self.note_started(value)
            elif kind == "result":
                self.add(value)
            elif kind == "declared":
                self.results.extend(value)
            else:
                self.ranks_done += 1
                if value is not None:
                    self.stop_requests.append(value)
        if time.monotonic() - self.last_line >= self.interval:
            self.log_progress()

    def wait_for_all(self, tick: Callable[[], None]) -> list[JobResult]:
        while self.ranks_done < self.comm.size:
            self.poll()
            tick()
            time.sleep(POLL_SECONDS)
        self.log_progress()
        return self.results

    def log_progress(self) -> None:
        self.last_line = time.monotonic()
        elapsed = self.last_line - self.started_at
        done = len(self.results)
        failed = sum(result.status == "failed" for result in self.results)
        rate = self.ran / elapsed * 60 if elapsed > 0 else 0.0
        log.info("progress: %d/%d done (%d failed), %d running, %.0f s elapsed, %.1f jobs/min",
                 done, self.total, failed, max(0, self.running), elapsed, rate)
