"""The pilot's own deadline: ``--lifetime``, and the batch job's end time where the scheduler tells it.

Read from: Slurm (``$SLURM_JOB_END_TIME``, else ``squeue -o %e``), PBS/Torque
(``qstat -f``: ``Walltime.Remaining``, else ``Resource_List.walltime`` minus
``resources_used.walltime``) and Cobalt (``$COBALT_ENDTIME``).
"""
from __future__ import annotations

import logging
import math
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Mapping

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 20


@dataclass(frozen=True)
class Deadline:
    """When the pilot must be done (epoch seconds; None: never) and the margin it keeps."""

    end: float | None
    margin: float

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the margin begins."""
        if self.end is None:
            return math.inf
        return self.end - self.margin - (time.time() if now is None else now)

    def reached(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0

    def fits(self, seconds: float | None, now: float | None = None) -> bool:
        """Can work that needs ``seconds`` (None: unknown) finish before the margin?"""
        return seconds is None or seconds <= self.remaining(now)


def pilot_deadline(lifetime: float | None, margin: float, environ: Mapping[str, str],
                   run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Deadline:
    """The earlier of start + ``lifetime`` and the batch job's end."""
    ends = [time.time() + lifetime] if lifetime else []
    batch_end = batch_end_time(environ, run)
    if batch_end is not None:
        log.info("batch job ends at %s", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(batch_end)))
        ends.append(batch_end)
    return Deadline(min(ends) if ends else None, margin)


# Where each batch system puts the ID of the batch job it runs us in (LSF: LSB_JOBID).
BATCH_ID_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "COBALT_JOBID", "LSB_JOBID")


def batch_id(environ: Mapping[str, str]) -> str:
    """This batch job's ID, as its batch system names it; "" outside one. PanDA shows it as a job's batchID."""
    return next((environ[name] for name in BATCH_ID_VARIABLES if environ.get(name)), "")


def batch_end_time(environ: Mapping[str, str], run: Callable[..., subprocess.CompletedProcess]) -> float | None:
    for reader in (_slurm_end, _cobalt_end, _pbs_end):
        try:
            end = reader(environ, run)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            log.warning("could not read the batch job's end time (%s): %s", reader.__name__.strip("_"), error)
            continue
        if end is not None and not _is_a_date(end):  # "nan", "inf", 1e400: a float, and no time at all
            log.warning("could not read the batch job's end time (%s): %r is no date", reader.__name__.strip("_"), end)
            continue
        if end is not None:
            return end
    return None


def _is_a_date(seconds: float) -> bool:
    try:
        time.localtime(seconds)
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _slurm_end(environ: Mapping[str, str], run: Callable) -> float | None:
    if "SLURM_JOB_END_TIME" in environ:
        return float(environ["SLURM_JOB_END_TIME"])
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    text = _query(run, ["squeue", "-h", "-j", job_id, "-o", "%e"]).strip()
    if text in ("", "N/A", "NONE", "Unknown"):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


def _cobalt_end(environ: Mapping[str, str], run: Callable) -> float | None:
    value = environ.get("COBALT_ENDTIME")
    return float(value) if value else None


def _pbs_end(environ: Mapping[str, str], run: Callable) -> float | None:
    job_id = environ.get("PBS_JOBID")
    if not job_id:
        return None
    text = _query(run, ["qstat", "-f", job_id])
    remaining = re.search(r"Walltime\.Remaining\s*=\s*(\d+)", text)
    if remaining:
        return time.time() + int(remaining.group(1))
    limit = re.search(r"Resource_List\.walltime\s*=\s*([\d:]+)", text)
    used = re.search(r"resources_used\.walltime\s*=\s*([\d:]+)", text)
    if not limit:
        return None
    return time.time() + _hms(limit.group(1)) - (_hms(used.group(1)) if used else 0)


def _hms(text: str) -> int:
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def _query(run: Callable, argv: list[str]) -> str:
    return run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT, check=True).stdout
