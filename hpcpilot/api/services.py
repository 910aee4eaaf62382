"""Services for programs around the pilot: what a process tree uses, when the batch job ends, what a code means.

A payload wrapper that runs its own program accounts for it as the pilot
does for its payloads, in the keys Harvester forwards to PanDA::

    import subprocess, time
    from hpcpilot.api.services import ProcessMonitor, batch_end_time, error_message

    environment = ProcessMonitor.environment()  # os.environ with the monitor's tracking token
    process = subprocess.Popen(["athena.py", "job.py"], env=environment, start_new_session=True)
    monitor = ProcessMonitor(process.pid, environment=environment)
    while process.poll() is None:
        monitor.sample()          # the process and every descendant: memory in kB, I/O in bytes
        time.sleep(60)
    attributes = monitor.summary()  # {"maxRSS": ..., "avgPSS": ..., "totRBYTES": ..., "rateWCHAR": ...}

    end = batch_end_time()        # epoch seconds (Slurm, PBS, Cobalt), or None outside a batch job
    error_message(1171)           # "adler32 mismatch on input"
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Mapping

from ..errors import ErrorCode, ExitCode
from ..lifetime import batch_end_time as _batch_end_time
from ..lifetime import batch_id
from ..memorymonitor import MemorySeries
from ..proctree import TOKEN_ENV, ProcessTree, TreeSample, new_token

__all__ = ["ErrorCode", "ExitCode", "ProcessMonitor", "TreeSample", "batch_end_time", "batch_job_id",
           "error_message"]


class ProcessMonitor:
    """prmon's accounting of one process and its descendants, also those that left its process group.

    Start the process with ``start_new_session=True``: what runs in its
    session is counted even once its parent has exited. Start it with
    ``environment()`` too, and pass that here: a process that leaves the
    session as well (a daemon's double fork and setsid) is then found by the
    token it inherited. ``timeseries_path`` gets one tab-separated line per
    sample (prmon's layout). I/O rates are per second since the monitor was
    made: make it as the process starts.
    """

    def __init__(self, pid: int, timeseries_path: Path | None = None, environment: Mapping[str, str] | None = None):
        if not _exists(pid):
            raise ProcessLookupError(f"no process {pid} to monitor: start it first, then pass its pid")
        token = (environment or {}).get(TOKEN_ENV)
        if environment is not None and not token:
            raise ValueError(f"the environment given has no {TOKEN_ENV}: make it with ProcessMonitor.environment()")
        self._tree = ProcessTree(pid, token or new_token())
        self._series = MemorySeries(timeseries_path, start_time=time.time())  # rates: since the monitor began

    @staticmethod
    def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default: this process's environment) with a new tracking token in it, for the
        process to monitor and then for the monitor."""
        return {**(os.environ if base is None else base), TOKEN_ENV: new_token()}

    def sample(self) -> TreeSample:
        """The tree's summed memory (kB) and I/O (bytes) now, also kept for ``summary`` unless the tree has
        ended (``nprocs`` 0): a last sample after the process exited leaves the averages and rates as they were."""
        sample = self._tree.sample()
        self._series.add(sample)
        return sample

    def summary(self) -> dict[str, int]:
        """maxRSS..avgPSS (kB), totRCHAR..totWBYTES (bytes), rateRCHAR..rateWBYTES (bytes/s), over the samples
        taken: worker_attributes.json's keys. All 0 before the first sample."""
        return self._series.summary()


def batch_end_time(environ: Mapping[str, str] | None = None) -> float | None:
    """When the batch job this runs in ends (epoch seconds), asked of Slurm, Cobalt or PBS; None when unknown."""
    return _batch_end_time(os.environ if environ is None else environ, subprocess.run)


def batch_job_id(environ: Mapping[str, str] | None = None) -> str:
    """The batch job's ID as its batch system names it (PanDA's batchID); "" outside a batch job."""
    return batch_id(os.environ if environ is None else environ)


def error_message(code: int) -> str:
    """What a PanDA pilot error code means; ValueError for a number that is not one of them."""
    try:
        return ErrorCode(code).message
    except ValueError:
        raise ValueError(f"{code} is not a pilot error code hpcpilot knows (see hpcpilot.errors.ErrorCode)") from None


def _exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
