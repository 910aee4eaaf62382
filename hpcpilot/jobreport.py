"""The job report Harvester stores as the job's metaData: the payload's own, trimmed, else a minimal one."""
from __future__ import annotations

import json
from typing import Any

from . import staging
from .atomicfile import read_json
from .errors import ErrorCode, PilotError
from .jobstate import JobRun
from .redaction import redact

PAYLOAD_REPORT_NAME = "jobReport.json"  # what payloads write in their working directory
# A payload's own job report can carry megabytes of log excerpts; Harvester stores it in a database.
MAX_LOGFILE_REPORT_CHARS = 10_000


def job_report(run: JobRun) -> Any:
    """The payload's own report from scratch, trimmed; else a minimal one."""
    try:
        report = read_json(staging.inside_scratch(run.scratch, PAYLOAD_REPORT_NAME)) if run.scratch else None
    except (OSError, ValueError, PilotError):
        report = None
    if isinstance(report, dict):
        return _redacted(_trim_logfile_reports(report), run.spec.secrets)
    code = run.error.code if run.error else ErrorCode.OK
    return {"exitCode": int(code), "exitMsg": redact(run.error.diag, run.spec.secrets) if run.error else "OK",
            "pilot": {"pandaid": run.pandaid, "transExitCode": run.trans_exit_code}}


def _redacted(report: dict, secrets: tuple[str, ...]) -> dict:
    return json.loads(redact(json.dumps(report), secrets)) if secrets else report


def _trim_logfile_reports(report: dict) -> dict:
    for executor in report.get("executor", []) or []:
        if isinstance(executor, dict) and len(json.dumps(executor.get("logfileReport", ""))) > MAX_LOGFILE_REPORT_CHARS:
            executor["logfileReport"] = {}
    return report
