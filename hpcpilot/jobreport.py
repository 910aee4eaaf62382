"""The job report Harvester stores as the job's metaData: the payload's own, trimmed, else a minimal one."""
from __future__ import annotations

import json
from typing import Any

from . import staging
from .atomicfile import read_json
from .errors import ErrorCode, PilotError
from .jobstate import JobRun
from .redaction import redact, redact_json

PAYLOAD_REPORT_NAME = "jobReport.json"  # what payloads write in their working directory
# A payload's own job report can carry megabytes of log excerpts; Harvester stores it in a database.
MAX_LOGFILE_REPORT_CHARS = 10_000
MAX_REPORT_BYTES = 64 << 20  # a larger one is not read: Harvester would not store it either


def job_report(run: JobRun) -> Any:
    """The payload's own report from scratch, trimmed; else a minimal one."""
    report = _payload_report(run)
    if report is not None:
        return report
    code = run.error.code if run.error else ErrorCode.OK
    return {"exitCode": int(code), "exitMsg": redact(run.error.diag, run.spec.secrets) if run.error else "OK",
            "pilot": {"pandaid": run.pandaid, "transExitCode": run.trans_exit_code}}


def _payload_report(run: JobRun) -> dict | None:
    """The payload's own report, trimmed and redacted; None if it wrote none, or none that can be used
    (it is the payload's: any shape, any size, any depth)."""
    if not run.scratch:
        return None
    try:
        report = read_json(staging.inside_scratch(run.scratch, PAYLOAD_REPORT_NAME), MAX_REPORT_BYTES)
        if not isinstance(report, dict):
            return None
        report = _trim_logfile_reports(report)
        return redact_json(report, run.spec.secrets) if run.spec.secrets else report
    except (OSError, ValueError, TypeError, RecursionError, PilotError):
        return None


def _trim_logfile_reports(report: dict) -> dict:
    executors = report.get("executor")
    for executor in executors if isinstance(executors, list) else []:
        if isinstance(executor, dict) and len(json.dumps(executor.get("logfileReport", ""))) > MAX_LOGFILE_REPORT_CHARS:
            executor["logfileReport"] = {}
    return report
