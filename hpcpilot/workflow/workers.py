"""A rank's worker threads, which a hung filesystem cannot take hostage.

A read from a shared filesystem can block for ever (a Lustre OST that died,
a hard NFS mount whose server is gone), and no signal ends it. The rank then
gives up on that job's phase and lets its thread sit: these are daemon
threads, so the one left behind holds up neither the pilot's end (every
job declared, the summary written, the interpreter finished) nor, once
``add`` has replaced it, the rank's other jobs. (concurrent.futures joins its
threads at exit, so a single hung read would keep the pilot from ending.)
The process itself is gone once the kernel lets that thread go: a read a
FUSE server has taken, for one, waits for its answer through SIGKILL.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent import futures
from typing import Any, Callable

log = logging.getLogger(__name__)


class Workers:
    """``count`` threads running the tasks given to ``submit`` in order of submission."""

    def __init__(self, count: int, name: str):
        self._tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._name = name
        self._started = 0
        self._missing = 0  # threads that could not be started yet
        for _ in range(count):
            self.add()

    def add(self) -> None:
        """One thread more: in place of one that will not come back. When none can be started (a payload took
        every process its user may have), it is started by a later ``restore``: the other threads go on."""
        self._missing += 1
        if error := self.restore():
            log.warning("%s: %d worker thread(s) short, to be started later (%s)", self._name, self._missing, error)

    def restore(self) -> RuntimeError | None:
        """Start the threads ``add`` could not start (the caller calls this now and then); why not, if not."""
        while self._missing:
            try:
                threading.Thread(target=self._work, name=f"{self._name}-{self._started + 1}", daemon=True).start()
            except RuntimeError as error:  # "can't start new thread"
                return error
            self._started += 1
            self._missing -= 1
        return None

    def submit(self, task: Callable[..., Any], *args: Any) -> None:
        self._tasks.put((task, args))

    def close(self) -> None:
        """End the threads once they are idle; one hung in a system call stays until the process ends."""
        for _ in range(self._started):
            self._tasks.put(None)

    def _work(self) -> None:
        while (item := self._tasks.get()) is not None:
            task, args = item
            try:
                task(*args)
            except Exception:  # a thread lost to a bug would leave the rank short of one
                log.exception("unexpected error in a worker thread")


class HangClock:
    """When to give up on work that may hang: ``allowance`` seconds after it starts, or ``stop_grace`` seconds
    after a stop (by which a copy the stop ended has ended), whichever comes first. Work without an allowance
    (infinite: e.g. a job's declaration) is never given up on, stop or not."""

    def __init__(self, allowance: float, stop_grace: float):
        self.started = time.monotonic()
        self.give_up = self.started + allowance
        self.stop_grace = stop_grace

    def stop(self) -> None:
        if math.isfinite(self.give_up):
            self.give_up = min(self.give_up, time.monotonic() + self.stop_grace)

    def overrun(self) -> bool:
        return time.monotonic() > self.give_up

    def waited(self) -> float:
        return time.monotonic() - self.started


class HangWatch:
    """The job phases under way that may hang, each with its clock (started by the phase's own thread); a job
    (anything with a ``pandaid``) is in one such phase at a time."""

    def __init__(self) -> None:
        self._clocks: dict[int, tuple[str, Any, HangClock]] = {}

    def start(self, phase: str, run: Any, clock: HangClock) -> None:
        self._clocks[run.pandaid] = (phase, run, clock)

    def end(self, phase: str, pandaid: int) -> None:
        """(A phase given up on may end long after the job's next one has begun.)"""
        if self._clocks.get(pandaid, ("",))[0] == phase:
            del self._clocks[pandaid]

    def stop(self) -> None:
        for _, _, clock in list(self._clocks.values()):
            clock.stop()

    def overrun(self) -> list[tuple[str, Any, float]]:
        """The phases past their clocks (phase, run, seconds waited), no longer watched."""
        late = [(pandaid, entry) for pandaid, entry in list(self._clocks.items()) if entry[2].overrun()]
        for pandaid, _ in late:
            del self._clocks[pandaid]
        return [(phase, run, clock.waited()) for _, (phase, run, clock) in late]


class Hung(Exception):
    """Work given up on after ``waited`` seconds: its thread is stuck in a system call."""

    def __init__(self, waited: float):
        super().__init__(f"no answer after {waited:.0f} s")
        self.waited = waited


class Helper:
    """A daemon thread kept for work handed to it one piece at a time, each waited for (``start``): starting a
    thread for each piece costs as much as a small file's copy, and an event service rank hands over one per
    range. A piece given up on (``abandon``: stuck in a system call a hung filesystem never answers) keeps
    that thread; the next piece gets a new one."""

    def __init__(self, name: str):
        self.name = name
        self._tasks: queue.SimpleQueue[Callable[[], None]] | None = None  # its thread's, while it has one

    def start(self, work: Callable[[], Any]) -> futures.Future:
        """``work`` on the helper's thread; its result, or what it raised, comes in the future. When no thread can
        be started (a payload took every process its user may have), ``work`` is done here, the caller blocked."""
        outcome: futures.Future = futures.Future()

        def settle() -> None:
            try:
                outcome.set_result(work())
            except BaseException as error:  # handed to whoever waits for the outcome
                outcome.set_exception(error)

        if self._tasks is None:
            tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
            if not _thread_started(lambda: _serve(tasks), self.name):
                settle()
                return outcome
            self._tasks = tasks
        self._tasks.put(settle)
        return outcome

    def abandon(self) -> None:
        """The piece under way is given up on: its thread is left to it."""
        self._tasks = None


def _serve(tasks: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        tasks.get()()


def in_thread_or_here(work: Callable[[], Any], name: str) -> None:
    """Start ``work`` in a daemon thread; when no thread can be started (a payload took every process its user
    may have), do it here, the caller blocked."""
    if not _thread_started(work, name):
        work()


def _thread_started(work: Callable[[], Any], name: str) -> bool:
    try:
        threading.Thread(target=work, name=name, daemon=True).start()
    except RuntimeError as error:  # "can't start new thread"
        log.warning("%s: done without a thread of its own (%s)", name, error)
        return False
    return True
