"""A reference event-service payload: asks the pilot for ranges, processes their events, reports each.

    python -m hpcpilot.eventservice.reference_payload [--fail-range ID] [--crash-after N] [--work-ms M]

Each event is simulated from a generator seeded by its event number alone, so
an event's result does not depend on how the events were cut into ranges.
For each range the payload writes ``<eventRangeID>.events.txt`` in its
working directory (one line per event) and reports it to the pilot.
Options to fail one range and to crash after some ranges exist for tests.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ..atomicfile import atomic_writer
from .client import EventChannelClient
from .ranges import EventRange

OUTPUT_SUFFIX = ".events.txt"
FAILURE_CODE = "ERR_REFERENCE_PAYLOAD"
HEADER = "# event particles sum_pt max_pt leading_pair_mass\n"


def event_summary(event_number: int) -> str:
    """One event as a line of text: a shower of massless particles, and a few observables."""
    rng = np.random.default_rng(event_number)
    n_particles = int(rng.integers(20, 80))
    momenta = rng.normal(0.0, 10.0, size=(n_particles, 3))
    pt = np.hypot(momenta[:, 0], momenta[:, 1])
    leading = np.argsort(pt)[-2:]
    pair = momenta[leading]
    energy = np.linalg.norm(pair, axis=1).sum()
    mass = np.sqrt(max(energy ** 2 - float(np.sum(pair.sum(axis=0) ** 2)), 0.0))
    return f"{event_number} {n_particles} {pt.sum():.6f} {pt.max():.6f} {mass:.6f}\n"


def output_path(event_range: EventRange, directory: Path) -> Path:
    return directory / (event_range.eventRangeID + OUTPUT_SUFFIX)


def process(event_range: EventRange, directory: Path, work_ms: float) -> Path:
    """Write the range's output file; then keep computing until ``work_ms`` have passed."""
    started = time.perf_counter()
    path = output_path(event_range, directory)
    lines = [event_summary(n) for n in range(event_range.startEvent, event_range.lastEvent + 1)]
    with atomic_writer(path, fsync=False) as handle:
        handle.write((HEADER + "".join(lines)).encode())
    _busy(work_ms / 1000.0 - (time.perf_counter() - started), seed=event_range.startEvent)
    return path


def _busy(seconds: float, seed: int) -> None:
    """Real floating-point work for the requested time (stands in for simulation)."""
    rng = np.random.default_rng(seed)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        matrix = rng.normal(size=(64, 64))
        np.linalg.eigvalsh(matrix @ matrix.T)


def crash() -> None:
    """Die the way a crashing payload does: no goodbye on the socket, no cleanup."""
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def run(client: EventChannelClient, args: argparse.Namespace) -> int:
    directory = Path.cwd()
    outstanding = 0
    for _ in range(args.prefetch):
        client.request()
        outstanding += 1
    done = 0
    no_more = False
    while outstanding:
        ranges = client.receive()
        outstanding -= 1
        if ranges is None:
            no_more = True
            continue
        for event_range in ranges:
            if args.crash_after is not None and done >= args.crash_after:
                output_path(event_range, directory).write_text("half an output\n")
                crash()
            _handle(client, event_range, directory, args)
            done += 1
        if not no_more:
            client.request()
            outstanding += 1
    print(f"reference payload: {done} ranges processed, no more events", file=sys.stderr)
    return 0


def _handle(client: EventChannelClient, event_range: EventRange, directory: Path, args: argparse.Namespace) -> None:
    range_id = event_range.eventRangeID
    if range_id in args.fail_range:
        client.failed(FAILURE_CODE, range_id, "failing this range as asked (--fail-range)")
        return
    cpu0, wall0 = time.process_time(), time.perf_counter()
    path = process(event_range, directory, args.work_ms)
    client.finished(str(path.absolute()), range_id, time.process_time() - cpu0, time.perf_counter() - wall0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpcpilot.eventservice.reference_payload",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--fail-range", action="append", default=[], metavar="ID",
                        help="report this range as failed (may be repeated)")
    parser.add_argument("--crash-after", type=int, metavar="N",
                        help="after N ranges, kill itself with SIGKILL in the middle of the next one")
    parser.add_argument("--work-ms", type=float, default=0.0, metavar="M",
                        help="compute for at least M milliseconds per range")
    parser.add_argument("--prefetch", type=int, default=1, metavar="K",
                        help="keep K requests for ranges outstanding (as AthenaMP does for K workers)")
    args = parser.parse_args(argv)
    if args.prefetch < 1:
        parser.error("--prefetch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with EventChannelClient.from_environment() as client:
            return run(client, args)
    except (ConnectionError, RuntimeError, OSError) as error:
        print(f"reference payload: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
