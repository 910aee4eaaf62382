"""Payload monitoring: walltime, memory, looping and disk limits, checked by one thread per rank.

Each check runs at its own interval (``Limits``). A payload over a limit gets
its job error first (the first error is the one declared), then its whole
process tree is terminated: SIGTERM, and SIGKILL after the grace period.

The same thread also sweeps for processes that finished payloads left behind
outside their process group (every ``SWEEP_INTERVAL`` s, and once in ``stop``).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .allocation import CoreMemory
from .config import Limits
from .errors import ErrorCode, PilotError
from .jobstate import JobRun
from .memorymonitor import TIMESERIES_NAME, MemorySeries
from .payload import STDOUT_NAME
from .proctree import LeftoverSweep, ProcTable, read_proc_table
from .threadstart import start_or_give_up

log = logging.getLogger(__name__)

MB = 1024 * 1024
SWEEP_INTERVAL = 30.0  # leftovers may hold a core this long; a sweep reads every environment of our uid
SUSPENDED_AFTER = 10  # check intervals between two passes that mean the pilot was not running (suspended)


@dataclass
class Watch:
    """The monitoring state of one running payload."""

    run: JobRun
    started: float = field(default_factory=time.monotonic)
    series: MemorySeries | None = None
    due: dict[str, float] = field(default_factory=dict)
    announce: Callable[[], None] | None = None  # called once, when the payload has run announce_after seconds
    announce_at: float = float("inf")
    looping_since: float = 0.0  # epoch seconds: no file change is looked for before (a suspension ended then)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class MemoryLimit:
    """A payload's PSS limit and where it comes from (the job log says both: why a payload was killed; the
    1235 diagnostic says ``brief``, a few words, as PanDA keeps only 500 characters of it)."""

    mb: float
    source: str
    brief: str

    @property
    def kb(self) -> int:
        return int(self.mb * 1024)

    def __str__(self) -> str:
        return f"{self.mb:.1f} MB PSS: {self.source}"


class Monitor:
    """Watches every running payload of a rank from one background thread."""

    def __init__(self, limits: Limits, kill: Callable[[JobRun], None], sweep_interval: float = SWEEP_INTERVAL,
                 core_memory: CoreMemory | None = None):
        """``core_memory``: the site's RAM per core, for jobs without minRamCount (None: those get no limit)."""
        self.limits = limits
        self.kill = kill
        self.core_memory = core_memory
        self.sweep_interval = sweep_interval
        self._leftovers = LeftoverSweep()
        self._next_sweep = time.monotonic() + sweep_interval
        self._watches: dict[int, Watch] = {}
        self._guard = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)

    def start(self) -> "Monitor":
        start_or_give_up(self._thread, "the payload monitor's thread")
        return self

    def stop(self) -> None:
        """Stop the thread, then sweep once more: no leftover may outlive the pilot."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sweep_leftovers()

    def watch(self, run: JobRun, announce: Callable[[], None] | None = None, announce_after: float = 0.0) -> Watch:
        """Watch ``run``'s payload; ``announce`` is called once if it still runs after ``announce_after`` s."""
        watch = Watch(run, series=MemorySeries(os.path.join(run.scratch, TIMESERIES_NAME), start_time=time.time()))
        now = time.monotonic()
        if announce is not None and announce_after > 0:
            watch.announce, watch.announce_at = announce, now + announce_after
        watch.due = {name: now + interval for name, interval in self._intervals().items()}
        with self._guard:
            self._watches[run.pandaid] = watch
        return watch

    def unwatch(self, run: JobRun) -> Watch | None:
        """Stop watching a payload that ended; later sweeps end what it left outside its group."""
        if run.process is not None:
            self._leftovers.add(run.process.tree.token)
        with self._guard:
            return self._watches.pop(run.pandaid, None)

    def sweep_leftovers(self) -> list[int]:
        """End what finished payloads left behind now; the pids that needed SIGKILL."""
        killed = self._leftovers.sweep(self.limits.kill_grace)
        if killed:
            log.warning("processes left behind by finished payloads needed SIGKILL: %s", killed)
        return killed

    def check_now(self) -> None:
        """One pass over every payload (the thread calls this each check_interval)."""
        with self._guard:
            watches = list(self._watches.values())
        now = time.monotonic()
        # One read of /proc serves every payload's memory sample in this pass.
        table = read_proc_table() if any(now >= watch.due["memory"] for watch in watches) else None
        checks = {"memory": lambda watch: self._memory(watch, table), "disk": self._disk, "looping": self._looping}
        intervals = self._intervals()
        for watch in watches:
            if not watch.run.failed:
                self._check(watch, now, checks, intervals)
            if watch.announce is not None and now >= watch.announce_at:
                announce, watch.announce = watch.announce, None
                announce()

    def _after_suspension(self, slept: float) -> None:
        """A sleep of check_interval that lasted far longer means the pilot did not run: a batch system's suspend
        stops every process of the job, payloads included, whose files could then not change. Their looping
        clocks start again (Pilot 3 adds a suspension to the time files were last touched): else every payload
        would be killed as looping at the first pass after a suspension longer than looping_limit. The passes'
        own time is no suspension: a sweep waiting kill_grace, or a walk of a large scratch, would start the
        clocks again at every pass, and a payload that loops would never be found."""
        if slept < SUSPENDED_AFTER * self.limits.check_interval:
            return
        with self._guard:
            watches = list(self._watches.values())
        log.warning("the monitor slept %.0f s (%g s asked): the pilot was suspended; the looping clocks of "
                    "%d payload(s) start again", slept, self.limits.check_interval, len(watches))
        resumed = time.time()
        for watch in watches:
            watch.looping_since = resumed

    def _intervals(self) -> dict[str, float]:
        return {"memory": self.limits.memory_interval, "disk": self.limits.disk_interval,
                "looping": self.limits.looping_interval}

    def _loop(self) -> None:
        while True:
            asleep = time.monotonic()
            if self._stopped.wait(self.limits.check_interval):
                return
            try:
                self._after_suspension(time.monotonic() - asleep)
                self.check_now()
                self._sweep_if_due()
            except Exception:  # monitoring must outlive any one odd payload
                log.exception("monitor pass failed")

    def _sweep_if_due(self) -> None:
        if time.monotonic() >= self._next_sweep:
            self.sweep_leftovers()  # blocks up to kill_grace only if a leftover ignores SIGTERM
            self._next_sweep = time.monotonic() + self.sweep_interval

    def _check(self, watch: Watch, now: float, checks: dict[str, Callable[[Watch], PilotError | None]],
               intervals: dict[str, float]) -> None:
        """Every check that is due runs: the first limit exceeded is the job's error, the others are logged
        (PROTOCOL.md: report the first error, log all), and the memory sample goes into the series."""
        errors = [self._walltime(watch)]
        for name, check in checks.items():
            if now >= watch.due[name]:
                watch.due[name] = now + intervals[name]
                errors.append(check(watch))
        first, *others = [error for error in errors if error is not None] or [None]
        if first is not None and watch.run.stop_payload(first):  # not if it has just ended by itself
            log.error("job %d: %s", watch.run.pandaid, first.diag)
            for other in others:
                log.error("job %d: also %d %s", watch.run.pandaid, other.code, other.diag)
            self.kill(watch.run)

    def _walltime(self, watch: Watch) -> PilotError | None:
        limit = watch.run.spec.max_walltime or self.limits.walltime_default
        if limit and watch.elapsed() > limit:
            return PilotError(ErrorCode.WALLTIME, f"walltime {watch.elapsed():.1f} s exceeded limit {limit} s")
        return None

    def memory_limit(self, run: JobRun) -> MemoryLimit | None:
        """Pilot 3's order: the configured limit, else the job's minRamCount x memory_grace, else memory_grace x
        RAM per core x the cores the job runs on. None when there is none (a 0 limit, e.g. memory_grace 0, is
        none too)."""
        limit = self._memory_limit(run)
        return limit if limit is not None and limit.kb > 0 else None

    def _memory_limit(self, run: JobRun) -> MemoryLimit | None:
        grace = self.limits.memory_grace
        if self.limits.memory_limit_mb:
            return MemoryLimit(self.limits.memory_limit_mb, "limits.memory_limit_mb", "limits.memory_limit_mb")
        if run.spec.min_ram_mb:
            return MemoryLimit(run.spec.min_ram_mb * grace, f"minRamCount {run.spec.min_ram_mb} MB x memory_grace "
                               f"{grace:g}", "minRamCount")
        if self.core_memory is not None:
            per_core = self.core_memory
            return MemoryLimit(grace * per_core.mb * run.cores, f"no minRamCount: memory_grace {grace:g} x "
                               f"{per_core.mb:.1f} MB per core ({per_core.origin}) x {run.cores} core(s)",
                               f"RAM per core of {per_core.brief or per_core.origin}")
        return None

    def _memory(self, watch: Watch, table: ProcTable | None) -> PilotError | None:
        process = watch.run.process
        if process is None or watch.series is None:
            return None
        sample = process.tree.sample(table)
        watch.series.add(sample)
        limit = self.memory_limit(watch.run)
        used = sample.pss or sample.rss
        if limit is not None and used > limit.kb:
            return PilotError(ErrorCode.PAYLOAD_MEMORY, f"PSS {_mb(used * 1024)} exceeded limit "
                              f"{_mb(limit.kb * 1024)} ({limit.brief}) after {watch.elapsed():.0f} s")
        return None

    def space_shortage(self, scratch: Path) -> PilotError | None:
        """The error of a scratch with less free space than the limit, else None (also when the payload
        removed its scratch: then nobody can tell)."""
        try:
            free = _free_bytes(scratch)
        except OSError:
            return None
        if free < self.limits.min_free_space_mb * MB:
            return PilotError(ErrorCode.NO_LOCAL_SPACE, f"free space in scratch {_mb(free)} is under the limit "
                              f"{self.limits.min_free_space_mb} MB")
        return None

    def stdout_excess(self, scratch: Path) -> PilotError | None:
        """The error of a payload stdout over the limit, else None."""
        stdout = _size(os.path.join(scratch, STDOUT_NAME))
        if stdout > self.limits.max_stdout_mb * MB:
            return PilotError(ErrorCode.STDOUT_TOO_LARGE, f"payload stdout {_mb(stdout)} exceeded limit "
                              f"{self.limits.max_stdout_mb} MB")
        return None

    def _disk(self, watch: Watch) -> PilotError | None:
        scratch = watch.run.scratch
        shortage = self.space_shortage(scratch)
        if shortage:
            return PilotError(shortage.code, f"{shortage.diag} after {watch.elapsed():.0f} s")
        excess = self.stdout_excess(scratch)
        if excess:
            return PilotError(excess.code, f"{excess.diag} after {watch.elapsed():.0f} s")
        limit_mb = watch.run.spec.max_disk_mb
        used = tree_size(scratch) if limit_mb else 0
        if limit_mb and used > limit_mb * MB:
            return PilotError(ErrorCode.WORKDIR_TOO_LARGE, f"work directory {_mb(used)} exceeded maxDiskCount "
                              f"{limit_mb} MB after {watch.elapsed():.0f} s")
        return None

    def _looping(self, watch: Watch) -> PilotError | None:
        if not watch.run.spec.looping_check:
            return None
        try:
            idle = time.time() - max(_newest_change(watch.run.scratch, ignore={TIMESERIES_NAME}), watch.looping_since)
        except OSError:  # the payload removed its scratch: nobody can tell (and the other payloads' pass goes on)
            return None
        if idle > self.limits.looping_limit:
            return PilotError(ErrorCode.LOOPING_JOB, f"looping job: no file in the work directory modified for "
                              f"{idle:.1f} s (limit {self.limits.looping_limit:g} s)")
        return None


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # gone, or scratch replaced by the payload: nothing of it counts
        return 0


def tree_size(path: Path) -> int:
    """Bytes the files under ``path`` take on disk, as ``du`` counts them: their allocated blocks (a sparse
    file costs what it holds), a file of several hard links once, a symlink as itself."""
    total, linked = 0, set()
    for entry in _lstats(path):
        if entry.st_nlink > 1:  # only these can come again (du keeps no more than these either)
            if (entry.st_dev, entry.st_ino) in linked:
                continue
            linked.add((entry.st_dev, entry.st_ino))
        total += entry.st_blocks * 512
    return total


def _newest_change(path: Path, ignore: set[str]) -> float:
    return max((entry.st_mtime for entry in _lstats(path, ignore)), default=path.stat().st_mtime)


def _lstats(path: Path, ignore: set[str] = frozenset()) -> Iterator[os.stat_result]:
    """lstat of every file under ``path``, symlinks not followed, one at a time (a payload may make millions
    of files: kept, they took the rank 700 bytes each); directories kept on a list, not the call stack
    (os.walk recurses, and a payload can nest its scratch deeper than Python's recursion limit)."""
    directories = [os.fspath(path)]
    while directories:
        try:
            with os.scandir(directories.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            directories.append(entry.path)
                        elif entry.name not in ignore:
                            yield entry.stat(follow_symlinks=False)
                    except OSError:  # gone meanwhile: the payload's business
                        pass
        except OSError:
            pass


def _mb(size: float) -> str:
    return f"{size / MB:.1f} MB"
