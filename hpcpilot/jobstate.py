"""A job's life on its rank: state, first error, timings; and what Harvester and rank 0 are told.

``JobRun`` is the mutable record the workflow carries through the phases;
``worker_attributes`` renders it with PROTOCOL.md's key names;
``JobResult`` is the small frozen summary sent to rank 0.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from .errors import ErrorCode, PilotError, storable_diag
from .jobs import InvalidJob, JobSpec
from .lifetime import batch_id
from .redaction import for_panda


class JobStatus(str, Enum):
    """Harvester's job states; FINISHED and FAILED are final."""

    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


FINAL_STATES = (JobStatus.FINISHED.value, JobStatus.FAILED.value)
PHASES = ("getjob", "stagein", "payload", "stageout", "setup")


def utc_text(epoch: float) -> str:
    """PROTOCOL.md's time format: UTC ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


@dataclass
class JobRun:
    spec: JobSpec
    rank: int
    node: str
    cores: int
    scratch: Path | None = None
    status: JobStatus = JobStatus.STARTING
    error: PilotError | None = None
    trans_exit_code: int | None = None
    cpu_seconds: float = 0.0
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    declared_files: list[dict[str, Any]] = field(default_factory=list)
    work_dir_bytes: int = 0
    extra_attributes: dict[str, Any] = field(default_factory=dict)
    process: Any = None  # the running Payload, while there is one
    declared: bool = False  # its final state reached Harvester's files
    declaring: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # one write at a time
    payload_ended: bool = False  # its payload has returned: a stop no longer changes its outcome
    container_runtime: str = ""  # the runtime its payload runs under, if in a container
    staged_in: Any = None  # its inputs' staging.StagedIn: replicas its payload reads in place, if any
    _payload_state: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def pandaid(self) -> int:
        return self.spec.pandaid

    @property
    def failed(self) -> bool:
        return self.error is not None

    def fail(self, error: PilotError) -> None:
        """Keep the first error: it is the one PanDA reports."""
        if self.error is None:
            self.error = error

    def launch_unless_stopped(self, start: Callable[[], Any]) -> bool:
        """Start the payload (``self.process = start()``) unless a stop failed the job first. One lock with
        ``stop_payload``: a payload is never started after its stop, so never runs on unseen."""
        with self._payload_state:
            if self.failed:
                return False
            self.process = start()
            return True

    def end_payload(self) -> None:
        with self._payload_state:
            self.payload_ended = True

    def stop_payload(self, error: PilotError) -> bool:
        """Fail the job for a stop (from another thread) while its payload still runs; False, and the job
        keeps its outcome, once the payload has ended by itself (even if not yet reaped)."""
        with self._payload_state:
            if self.payload_ended or (self.process is not None and self.process.has_exited()):
                return False
            self.fail(error)
            return True

    def finish(self) -> None:
        self.end_time = time.time()
        self.status = JobStatus.FAILED if self.failed else JobStatus.FINISHED


# The batch job every job of this pilot runs in: PanDA shows it as the job's batchID (Harvester forwards it).
BATCH_ID = batch_id(os.environ)


def _where(node: str) -> dict[str, str]:
    """Where a job ran: the node, and the batch job if there is one."""
    return {"node": node, "batchID": BATCH_ID} if BATCH_ID else {"node": node}


def worker_attributes(run: JobRun) -> dict[str, Any]:
    """``worker_attributes.json`` for ``run`` as it stands now."""
    code = run.error.code if run.error else ErrorCode.OK
    attributes: dict[str, Any] = {
        "jobStatus": run.status.value,
        "pilotErrorCode": int(code),
        "pilotErrorDiag": for_panda(run.error.diag, run.spec.secrets) if run.error else "",
        **_where(run.node),
        "coreCount": run.cores,
        "attemptNr": run.spec.attempt_nr,
        "startTime": utc_text(run.start_time),
        "nInputFiles": len(run.spec.inputs),
    }
    if run.trans_exit_code is not None:
        attributes["transExitCode"] = run.trans_exit_code
        attributes["exeErrorCode"] = run.trans_exit_code
    if run.end_time is not None:
        attributes.update(_final_attributes(run))
    attributes.update(run.extra_attributes)
    return attributes


def _final_attributes(run: JobRun) -> dict[str, Any]:
    return {
        "endTime": utc_text(run.end_time or time.time()),
        "cpuConsumptionTime": round(run.cpu_seconds),  # whole seconds: PanDA's update_job refuses a float
        "cpuConsumptionUnit": "s",
        "cpuConversionFactor": 1.0,
        "pilotTiming": "|".join(str(round(run.seconds[phase], 3)) for phase in PHASES),
        "jobMetrics": _job_metrics(run),
    }


def _job_metrics(run: JobRun) -> str:
    """PanDA's ``key=value`` string; nEvents where the pilot counts them (event service jobs)."""
    events = run.extra_attributes.get("nEvents")
    return (f"coreCount={run.cores}" + (f" nEvents={events}" if events is not None else "")
            + f" nInputFiles={len(run.spec.inputs)} workDirSize={run.work_dir_bytes}")


def invalid_job_attributes(job: InvalidJob, node: str) -> dict[str, Any]:
    """``worker_attributes.json`` for a definition that failed validation."""
    now = utc_text(time.time())
    return {
        "jobStatus": JobStatus.FAILED.value, "pilotErrorCode": int(job.code), "pilotErrorDiag": storable_diag(job.diag),
        **_where(node), "startTime": now, "endTime": now,
    }


@dataclass(frozen=True)
class JobResult:
    """What rank 0 learns of a job: one row of the worker summary."""

    pandaid: int
    status: str
    code: int
    diag: str
    rank: int
    host: str
    stagein_s: float = 0.0
    payload_s: float = 0.0
    stageout_s: float = 0.0
    declared: bool = True  # False: Harvester cannot see this job's outcome

    @classmethod
    def of_run(cls, run: JobRun) -> "JobResult":
        return cls(
            run.pandaid, run.status.value, int(run.error.code) if run.error else 0,
            run.error.diag if run.error else "", run.rank, run.node,
            round(run.seconds["stagein"], 3), round(run.seconds["payload"], 3), round(run.seconds["stageout"], 3),
            run.declared,
        )

    def summary_row(self) -> dict[str, Any]:
        """The row as hpcpilot_summary.json lists it. (dataclasses.asdict deep-copies each field, a copy that
        its numbers and strings do not need: twenty times the cost, per job of the summary.)"""
        return {name: getattr(self, name) for name in _RESULT_FIELDS}

    @classmethod
    def of_invalid(cls, job: InvalidJob, rank: int, host: str, declared: bool) -> "JobResult":
        return cls(job.pandaid, JobStatus.FAILED.value, int(job.code), job.diag, rank, host, declared=declared)


_RESULT_FIELDS = tuple(f.name for f in fields(JobResult))
