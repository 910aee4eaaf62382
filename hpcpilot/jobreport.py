"""The job report Harvester stores as the job's metaData: the payload's own, trimmed, else a minimal one."""
from __future__ import annotations

import json
import re
from typing import Any

from . import staging
from .atomicfile import read_bytes
from .errors import ErrorCode, PilotError, storable_diag
from .jobstate import JobRun
from .redaction import for_panda, rewrite_json

PAYLOAD_REPORT_NAME = "jobReport.json"  # what payloads write in their working directory
# A payload's own job report can carry megabytes of log excerpts; Harvester stores it in a database.
MAX_LOGFILE_REPORT_CHARS = 10_000
MAX_REPORT_BYTES = 64 << 20  # a larger one is not read: it would cost the rank its memory, and PanDA its metadata store
# Nor one of more values: parsed, each costs the rank up to 72 bytes (an empty object, 3 bytes of JSON), so that
# 64 MB of "{}," took 1.7 GB. 2 million is 150 MB at most, and more than the largest real reports hold.
MAX_REPORT_VALUES = 2_000_000


def minimal_report(run: JobRun) -> dict:
    """The report of a job whose payload wrote none (or ran not at all)."""
    code = run.error.code if run.error else ErrorCode.OK
    message = for_panda(run.error.diag, run.spec.secrets) if run.error else "OK"
    return {"exitCode": int(code), "exitMsg": message,
            "pilot": {"pandaid": run.pandaid, "transExitCode": run.trans_exit_code}}


MAX_EXE_ERROR_DIAG = 500  # characters: PanDA's exeErrorDiag column
EXE_ERROR_CODES = range(-2 ** 31, 2 ** 31)  # what PanDA's exeErrorCode column holds (a 32-bit integer)


def payload_error(report: Any) -> dict[str, Any]:
    """exeErrorCode and exeErrorDiag as the payload's own report gives them, as Pilot 3 takes them: its
    ``exeErrorCode`` and ``exeErrorDiag``, else its ``exitCode`` and ``exitMsg`` when the message is not "OK".
    Empty when it says nothing usable (the payload's exit code then stands)."""
    if not isinstance(report, dict):
        return {}
    code, diag = report.get("exeErrorCode"), report.get("exeErrorDiag")
    if code is None and report.get("exitMsg", "OK") != "OK":
        code, diag = report.get("exitCode"), report.get("exitMsg")
    if type(code) is not int or code not in EXE_ERROR_CODES:
        return {}  # not a bool either; and PanDA's integer column refuses the whole update for a larger one
    text = diag[:MAX_EXE_ERROR_DIAG] if isinstance(diag, str) else ""
    return {"exeErrorCode": code, "exeErrorDiag": storable_diag(text)}


_GUID = re.compile(r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}")


def output_guids(report: Any) -> dict[str, str]:
    """LFN -> GUID of the outputs the payload's report names (``files.output[].subFiles[]``): a POOL file
    carries its GUID inside, and the GUID declared for it must be that one. Anything of another shape, or
    not a GUID, is passed over."""
    guids = {}
    files = report.get("files") if isinstance(report, dict) else None
    outputs = files.get("output") if isinstance(files, dict) else None
    for output in outputs if isinstance(outputs, list) else []:
        subfiles = output.get("subFiles") if isinstance(output, dict) else None
        for subfile in subfiles if isinstance(subfiles, list) else []:
            name, guid = (subfile.get("name"), subfile.get("file_guid")) if isinstance(subfile, dict) else (0, 0)
            if isinstance(name, str) and isinstance(guid, str) and _GUID.fullmatch(guid):
                guids[name] = guid
    return guids


def payload_report(run: JobRun) -> dict | None:
    """The payload's own report, trimmed, redacted, and every string in it storable (``storable_diag``: a NUL
    in any key or value, at any depth, would fail the job's whole update to PanDA); None if it wrote none, or
    none that can be used (it is the payload's: any shape, any size, any depth)."""
    if not run.scratch:
        return None
    try:
        report = _read_report(staging.inside_scratch(run.scratch, PAYLOAD_REPORT_NAME))
        if not isinstance(report, dict):
            return None
        report = trim_logfile_reports(report)
        secrets = run.spec.secrets  # storable_diag never changes a number's text: only a secret's digits can
        return rewrite_json(report, lambda text: for_panda(text, secrets), numbers=bool(secrets))
    except (OSError, ValueError, TypeError, RecursionError, PilotError):
        return None


def _read_report(path: str) -> Any:
    """The payload's report parsed, unless it holds more values than MAX_REPORT_VALUES (ValueError)."""
    data = read_bytes(path, MAX_REPORT_BYTES)
    if len(data) > MAX_REPORT_VALUES and _most_values(data) > MAX_REPORT_VALUES:  # the first test is free
        raise ValueError(f"{path}: more than {MAX_REPORT_VALUES} JSON values")
    try:
        return json.loads(data)
    except UnicodeDecodeError:  # a byte that is not UTF-8 (a payload in another locale) loses no more than itself
        return json.loads(data.decode("utf-8", "replace"))


def _most_values(data: bytes) -> int:
    """At most as many values (and keys) as JSON ``data`` holds: each comes after a ``[``, ``{``, ``,`` or
    ``:``, or is the whole (those in strings are counted too)."""
    return 1 + sum(data.count(separator) for separator in (b"[", b"{", b",", b":"))


def trim_logfile_reports(report: dict) -> dict:
    """``report`` with every executor's ``logfileReport`` over MAX_LOGFILE_REPORT_CHARS blanked, in place."""
    executors = report.get("executor")
    for executor in executors if isinstance(executors, list) else []:
        if isinstance(executor, dict) and len(json.dumps(executor.get("logfileReport", ""))) > MAX_LOGFILE_REPORT_CHARS:
            executor["logfileReport"] = {}
    return report
