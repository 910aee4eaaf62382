"""Running the pilot again on an access point an earlier run left half done.

Jobs that an earlier run declared final (``finished`` or ``failed``) are not
run again: their staged entries are published when the dump is free. Jobs it
left unfinished (``running``, or not declared at all) lose what that run
staged and run again; except event service jobs, whose staged entries are
finished ranges: those are kept, published, and their ranges not processed
again.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..atomicfile import TEMP_PREFIX
from ..eventstatus import EventStatusPublisher
from ..harvester import READ_THREADS, AccessPoint, RawJob
from ..errors import ErrorCode
from ..jobs import InvalidJob
from ..jobstate import FINAL_STATES, JobResult

log = logging.getLogger(__name__)

EARLIER_RUN = -1  # the rank recorded for jobs an earlier run declared


def split_declared(access_point: AccessPoint, jobs: list[RawJob | InvalidJob]
                   ) -> tuple[list[RawJob | InvalidJob], list[JobResult]]:
    """(jobs to run, results of jobs an earlier run already declared final). A job directory leading out of
    the access point is neither read nor cleaned: the job goes on to be refused."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        states = list(pool.map(lambda job: _earlier_state(access_point, job.pandaid), jobs))
    to_run, declared = [], []
    for job, attributes in zip(jobs, states):
        if attributes is OUTSIDE:
            to_run.append(job)
        elif isinstance(attributes, OSError):
            declared.append(_unknown_state(job.pandaid, attributes))
        elif attributes and attributes.get("jobStatus") in FINAL_STATES:
            declared.append(_earlier_result(job.pandaid, attributes))
        else:
            if not getattr(job, "event_service", False):
                _forget_interrupted(access_point, job.pandaid, started=attributes is not None)
            to_run.append(job)
    if declared:
        log.info("resuming: %d job(s) already declared by an earlier run are not run again", len(declared))
    return to_run, declared


OUTSIDE: Any = object()  # the state of a job whose directory leads out of the access point


def _earlier_state(access_point: AccessPoint, pandaid: int) -> dict[str, Any] | OSError | None:
    if not access_point.job_dir_is_inside(pandaid):
        return OUTSIDE
    try:
        return access_point.read_attributes(pandaid)
    except OSError as error:
        return error


def _unknown_state(pandaid: int, error: OSError) -> JobResult:
    """A job whose state cannot be read may have been declared final: running it again would make its
    outputs twice, so it is left alone: failed and undeclared in the pilot's own summary (exit 64)."""
    diag = (f"its {error.filename or 'worker_attributes.json'} cannot be read ({error.strerror}): "
            "an earlier run may have declared it, so it is not run again")
    log.error("job %d: %s", pandaid, diag)
    return JobResult(pandaid, "failed", int(ErrorCode.FILE_HANDLING), diag, EARLIER_RUN, "", declared=False)


def _earlier_result(pandaid: int, attributes: dict[str, Any]) -> JobResult:
    code = attributes.get("pilotErrorCode", 0) or 0
    return JobResult(pandaid, attributes["jobStatus"], code if isinstance(code, int) and not isinstance(code, bool)
                     else int(ErrorCode.GENERAL), str(attributes.get("pilotErrorDiag", "")), EARLIER_RUN,
                     str(attributes.get("node", "")))


def _forget_interrupted(access_point: AccessPoint, pandaid: int, started: bool) -> None:
    """An interrupted attempt's staged entries and temp files must not outlive it (an attempt can stage
    entries before it declares anything)."""
    if started:
        log.info("job %d: an earlier run left it unfinished; running it again", pandaid)
    try:
        EventStatusPublisher(access_point).discard(pandaid)
        for leftover in access_point.job_dir(pandaid).glob(TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
    except OSError as error:  # a read-only job directory: its job cannot be declared, and says so when it ends
        log.warning("job %d: cannot remove what an earlier run left in its directory: %s", pandaid, error.strerror)
