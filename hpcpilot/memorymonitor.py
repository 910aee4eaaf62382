"""Memory and I/O accounting of one payload, in the manner of prmon.

``MemorySeries`` collects ``TreeSample``s, appends each to a tab-separated
time series (prmon's ``memory_monitor_output.txt`` layout) and summarises
them under the worker_attributes.json keys Harvester forwards to PanDA:
memory in kB, I/O totals in bytes, I/O rates in bytes per second.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hpcpilot.proctree import TreeSample

log = logging.getLogger(__name__)

TIMESERIES_NAME = "memory_monitor_output.txt"

# Column title -> TreeSample field, in prmon's order.
TIMESERIES_COLUMNS = {
    "Time": "time", "VMEM": "vms", "PSS": "pss", "RSS": "rss", "Swap": "swap",
    "rchar": "rchar", "wchar": "wchar", "read_bytes": "read_bytes",
    "write_bytes": "write_bytes", "nprocs": "nprocs",
}
MEMORY_KEYS = {"RSS": "rss", "VMEM": "vms", "SWAP": "swap", "PSS": "pss"}
IO_KEYS = {"RCHAR": "rchar", "WCHAR": "wchar", "RBYTES": "read_bytes", "WBYTES": "write_bytes"}


@dataclass
class _Accumulator:
    """Running maximum and sum of one quantity."""

    maximum: int = 0
    total: int = 0

    def add(self, value: int) -> None:
        self.maximum = max(self.maximum, value)
        self.total += value


@dataclass
class MemorySeries:
    """The samples of one payload; optionally mirrored line by line to a TSV file.

    ``start_time`` (epoch seconds) is when the payload started; rates are
    totals over the time from it to the last sample. It defaults to the
    first sample's time.
    """

    timeseries_path: Path | str | None = None
    start_time: float | None = None
    count: int = field(default=0, init=False)
    last: TreeSample | None = field(default=None, init=False)
    _stats: dict[str, _Accumulator] = field(default_factory=dict, init=False, repr=False)

    def add(self, sample: TreeSample) -> None:
        """Keep ``sample``; one of a tree that has ended (no process) is left out: its zeros are no memory use,
        and would pull the averages down and stretch the rates when the last pass comes after the exit."""
        if not sample.nprocs:
            return
        if self.start_time is None:
            self.start_time = sample.time
        for name in (*MEMORY_KEYS.values(), *IO_KEYS.values()):
            self._stats.setdefault(name, _Accumulator()).add(getattr(sample, name))
        self.count += 1
        self.last = sample
        if self.timeseries_path is not None:
            try:
                _append_row(Path(self.timeseries_path), sample)
            except OSError as error:  # a full scratch: the statistics go on, the file stops (and says why once)
                log.warning("cannot write %s, no more samples go there: %s", self.timeseries_path, error.strerror)
                self.timeseries_path = None

    def maximum(self, name: str) -> int:
        """Highest value seen of a TreeSample field (e.g. ``"pss"``), 0 before any sample."""
        stat = self._stats.get(name)
        return stat.maximum if stat else 0

    def summary(self) -> dict[str, int]:
        """maxRSS..avgPSS (kB), totRCHAR..totWBYTES (bytes), rateRCHAR..rateWBYTES (bytes/s)."""
        summary = {}
        for key, name in MEMORY_KEYS.items():
            summary[f"max{key}"] = self.maximum(name)
            summary[f"avg{key}"] = self._average(name)
        wall = self._wall_seconds()
        for key, name in IO_KEYS.items():
            total = self.maximum(name)  # the counters only grow: the highest is the latest
            summary[f"tot{key}"] = total
            summary[f"rate{key}"] = round(total / wall) if wall > 0 else 0
        return summary

    def _average(self, name: str) -> int:
        stat = self._stats.get(name)
        return round(stat.total / self.count) if stat and self.count else 0

    def _wall_seconds(self) -> float:
        if self.last is None or self.start_time is None:
            return 0.0
        return self.last.time - self.start_time


def summed_summaries(summaries: list[dict[str, int]]) -> dict[str, int]:
    """One summary of payloads that ran side by side (an event service job's, one per rank): each key summed.
    The sum of their maxima bounds the job's maximum from above: the safe side for a memory figure."""
    keys = dict.fromkeys(key for summary in summaries for key in summary)
    return {key: sum(summary.get(key, 0) for summary in summaries) for key in keys}


def timeseries_header() -> str:
    return "\t".join(TIMESERIES_COLUMNS) + "\n"


def timeseries_row(sample: TreeSample) -> str:
    return "\t".join(str(int(getattr(sample, name))) for name in TIMESERIES_COLUMNS.values()) + "\n"


def _append_row(path: Path, sample: TreeSample) -> None:
    """Opened per line (a sample a minute costs nothing, a crash loses at most one line), in scratch as the
    pilot made it: what the payload put there (a symlink, a FIFO, scratch replaced by a link) is an
    OSError, never followed nor waited on."""
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(path.name, flags, 0o644, dir_fd=directory)
    finally:
        os.close(directory)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.write(fd, ((timeseries_header() if status.st_size == 0 else "") + timeseries_row(sample)).encode())
    finally:
        os.close(fd)
