"""Helpers shared by the event-channel tests: range lists, a payload launcher, result collection."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from hpcpilot.eventservice import EventChannel, EventRange, RangeResult, RangesLost

PAYLOAD_MODULE = "hpcpilot.eventservice.reference_payload"


def make_ranges(count: int, events_per_range: int = 10, prefix: str = "4711-1-1", first_event: int = 1) -> list[EventRange]:
    return [EventRange(f"{prefix}-{i}", first_event + i * events_per_range,
                       first_event + (i + 1) * events_per_range - 1, "EVNT.pool.root.1", "guid-1", "mc_test")
            for i in range(count)]


class ListProvider:
    """A next_range provider over a fixed list; thread-safe, counts what it gave."""

    def __init__(self, ranges: list[EventRange]):
        self._ranges = list(ranges)
        self._lock = threading.Lock()
        self.given = 0

    def __call__(self) -> EventRange | None:
        with self._lock:
            if self.given >= len(self._ranges):
                return None
            self.given += 1
            return self._ranges[self.given - 1]


def run_payload(channel: EventChannel, cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", PAYLOAD_MODULE, *args], cwd=cwd, timeout=timeout,
                          env={**os.environ, **channel.environment()}, capture_output=True, text=True)


def collect(channel: EventChannel, ranges_expected: int, timeout: float = 20) -> list[RangeResult]:
    """Results until ``ranges_expected`` ranges have an outcome (a RangesLost counts each of its ranges)."""
    results: list[RangeResult] = []
    deadline = time.monotonic() + timeout
    while sum(_weight(r) for r in results) < ranges_expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {results} within {timeout} s, expected {ranges_expected} range outcomes")
        try:
            results.append(channel.results.get(timeout=remaining))
        except queue.Empty:
            continue
    return results


def drain(channel: EventChannel) -> list[RangeResult]:
    """Every result already queued."""
    results: list[RangeResult] = []
    while True:
        try:
            results.append(channel.results.get_nowait())
        except queue.Empty:
            return results


def outcome_ids(results: list[RangeResult]) -> list[str]:
    """Every range ID that has an outcome, once per outcome."""
    ids: list[str] = []
    for result in results:
        ids.extend(result.range_ids if isinstance(result, RangesLost) else [result.range_id])
    return ids


def wait_until(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def _weight(result: RangeResult) -> int:
    return len(result.ranges) if isinstance(result, RangesLost) else 1
