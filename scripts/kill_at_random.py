#!/usr/bin/env python3
"""Kill-at-random harness: SIGKILL a whole worker at random moments, resume it, check the promises.

A 40-job worker runs under ``mpiexec -n 2``; a thread plays Harvester,
consuming ``event_status.dump.json`` files as they appear. At a random
moment every process of the worker (launcher, ranks, payloads) is killed
with SIGKILL, the access point is checked, and the worker is started
again. After ``--kills`` kills it runs to completion, and every job must
be declared exactly once.

Checked after every kill:
- every JSON file Harvester may read parses (the pilot's hidden files aside, but a final job's journal must);
- every job declared finished has outputs whose bytes match the declared fsize/chksum;
- no temp file is visible under a name Harvester reads.

    python scripts/kill_at_random.py --kills 30
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import psutil

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point

JOBS = 40
RUN_TIMEOUT = 300
DUMP = "event_status.dump.json"
JOURNAL = ".hpcpilot-pending.json"
HIDDEN_PREFIX = ".hpcpilot"  # the pilot's own: temp files and journals


def make_worker(root: Path) -> Path:
    definitions, inputs = {}, {}
    for pandaid in range(1, JOBS + 1):
        data = os.urandom(2000 + pandaid)
        command = f"sleep 0.{random.randint(1, 6)}; tac in.{pandaid} > out.{pandaid}"
        definition = job_definition(pandaid, "bash", f"-c '{command}'")
        definitions[pandaid] = with_outputs(with_inputs(definition, {f"in.{pandaid}": data}), [f"out.{pandaid}"])
        inputs[pandaid] = {f"in.{pandaid}": data}
    return write_access_point(root, definitions, inputs)


class Harvester(threading.Thread):
    """Consumes dumps as Harvester does (rename to .read.<n>) and remembers every entry handed over.

    ``paused`` is held while the access point is checked: a dump renamed away between the check's listing
    and its read would look unreadable.
    """

    def __init__(self, ap: Path):
        super().__init__(daemon=True)
        self.ap = ap
        self.handed_over: dict[int, list[dict]] = {p: [] for p in range(1, JOBS + 1)}
        self.unreadable: list[str] = []  # dumps it took that did not parse
        self.stopped = threading.Event()
        self.paused = threading.Lock()
        self.count = 0

    def run(self) -> None:
        while not self.stopped.wait(random.uniform(0.05, 0.3)):
            with self.paused:
                self.consume()

    def consume(self) -> None:
        for dump in self.ap.glob(f"*/{DUMP}"):
            self.count += 1
            taken = dump.with_name(f"{DUMP}.read.{self.count}")
            dump.rename(taken)
            content = _read(taken)
            if content is None:
                self.unreadable.append(f"{taken}: a dump handed over does not parse")
                continue
            for key, entries in content.items():
                self.handed_over[int(key)].extend(entries)


def start_worker(ap: Path) -> subprocess.Popen:
    command = ["mpiexec", "-n", "2", sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap),
               "--cores-per-rank", "2", "--log-level", "WARNING"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def kill_everything(worker: subprocess.Popen, ap: Path) -> None:
    """SIGKILL the launcher, the ranks and every payload (they run in sessions of their own)."""
    victims = [worker.pid, *(p.pid for p in psutil.Process(worker.pid).children(recursive=True))]
    victims += [p.pid for p in psutil.process_iter(["environ"]) if _belongs_to(p, ap)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait()


def _belongs_to(process: psutil.Process, ap: Path) -> bool:
    try:
        return str(ap) in (process.info["environ"] or {}).get("HPCPILOT_JOB_DIR", "")
    except (psutil.Error, TypeError):
        return False


def check_after_kill(ap: Path, harvester: Harvester) -> list[str]:
    """Files Harvester reads parse; the pilot's hidden files (temp files, journals being written) may not,
    except the journal of a job declared final (checked in _check_job)."""
    problems = list(harvester.unreadable) + [f"{path}: does not parse" for path in ap.rglob("*.json*")
                                             if not path.name.startswith(HIDDEN_PREFIX) and not _parses(path)]
    for job_dir in (d for d in ap.iterdir() if d.is_dir() and d.name.isdigit()):
        problems += _check_job(job_dir, harvester.handed_over.get(int(job_dir.name), []))
    return problems


def _check_job(job_dir: Path, handed_over: list[dict]) -> list[str]:
    problems = [f"{p}: temp file under a Harvester name" for p in job_dir.iterdir()
                if not p.name.startswith(".") and ("tmp" in p.name.lower())]
    attributes = _read(job_dir / "worker_attributes.json")
    journal = job_dir / JOURNAL
    if attributes and attributes.get("jobStatus") in ("finished", "failed") and journal.exists() and not _parses(journal):
        problems.append(f"{journal}: the journal of a job declared final does not parse")
    if attributes and attributes.get("jobStatus") == "finished":
        for entry in handed_over + _entries(job_dir / DUMP) + _entries(journal):
            data = Path(entry["path"]).read_bytes() if Path(entry["path"]).exists() else None
            if data is None or len(data) != entry["fsize"] or f"{zlib.adler32(data) & 0xFFFFFFFF:08x}" != entry["chksum"]:
                problems.append(f"{entry['path']}: bytes differ from the declaration")
    return problems


def check_final(ap: Path, harvester: Harvester) -> list[str]:
    harvester.consume()
    problems = list(harvester.unreadable)
    for pandaid, entries in harvester.handed_over.items():
        attributes = _read(ap / str(pandaid) / "worker_attributes.json") or {}
        if attributes.get("jobStatus") != "finished":
            problems.append(f"job {pandaid}: final state {attributes.get('jobStatus')}")
        kinds = sorted(entry["type"] for entry in entries)
        if kinds != ["log", "output"]:
            problems.append(f"job {pandaid}: declared {kinds}, expected one output and one log")
    return problems


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (ValueError, OSError):
        return False


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _entries(path: Path) -> list[dict]:
    content = _read(path) or {}
    return [entry for entries in content.values() for entry in entries]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help="how many times to kill the worker (default 30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    parser.add_argument("--max-delay", type=float, default=2.5, help="latest kill moment after a start, seconds")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    random.seed(seed)
    with tempfile.TemporaryDirectory(prefix="hpcpilot-kills-") as tmp:
        ap = make_worker(Path(tmp) / "ap")
        harvester = Harvester(ap)
        harvester.start()
        for kill in range(1, args.kills + 1):
            worker = start_worker(ap)
            time.sleep(random.uniform(0.1, args.max_delay))
            kill_everything(worker, ap)
            with harvester.paused:
                problems = check_after_kill(ap, harvester)
            print(f"kill {kill}/{args.kills}: {len(problems)} problem(s)", flush=True)
            if problems:
                print("\n".join(problems), f"\nseed {seed}", file=sys.stderr)
                return 1
        worker = start_worker(ap)
        try:
            _, stderr = worker.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_everything(worker, ap)
            raise
        harvester.stopped.set()
        harvester.join()
        problems = check_final(ap, harvester) + ([f"final run exited {worker.returncode}: {stderr[-2000:]}"]
                                                 if worker.returncode else [])
        print(f"final run: {len(problems)} problem(s); {harvester.count} dumps handed over; seed {seed}")
        if problems:
            print("\n".join(problems), file=sys.stderr)
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
