"""PanDA pilot error codes, pilot exit codes, and the exceptions that carry them.

The numbers are the ones the PanDA server and its monitoring know
(shared/PROTOCOL.md, section 4); never renumber them.
"""
from __future__ import annotations

import errno
import re
import signal
from enum import IntEnum


class ErrorCode(IntEnum):
    """Per-job error codes, reported as ``pilotErrorCode``. All of PROTOCOL.md's table, for
    ``hpcpilot.api.services.error_message`` to name any code PanDA shows; hpcpilot itself never raises some
    (NO_JOB_REPORT: a payload without a job report gets a minimal one, as the README says)."""

    OK = 0
    GENERAL = 1008
    NO_LOCAL_SPACE = 1098
    STAGEIN_FAILED = 1099
    NO_SUCH_FILE = 1103
    WORKDIR_TOO_LARGE = 1104
    STDOUT_TOO_LARGE = 1106
    SETUP_FAILED = 1110
    OUTPUT_TOO_LARGE = 1124
    STAGEOUT_FAILED = 1137
    MD5_MISMATCH_OUTPUT = 1141
    MD5_MISMATCH_INPUT = 1145
    LOOPING_JOB = 1150
    STAGEIN_TIMEOUT = 1151
    STAGEOUT_TIMEOUT = 1152
    MISSING_OUTPUT = 1165
    ADLER32_MISMATCH_INPUT = 1171
    ADLER32_MISMATCH_OUTPUT = 1172
    NO_JOB_REPORT = 1187
    LFN_TOO_LONG = 1190
    MKDIR_FAILED = 1199
    KILLED_BY_SIGNAL = 1200
    SIGTERM = 1201
    SIGQUIT = 1202
    SIGSEGV = 1203
    SIGXCPU = 1204
    SIGBUS = 1206
    SIGUSR1 = 1207
    SIGINT = 1208
    WALLTIME = 1213
    PAYLOAD_FAILED_UNKNOWN = 1220
    ES_RECOVERABLE = 1224
    ES_FATAL = 1228
    PAYLOAD_MEMORY = 1235
    ES_NO_EVENTS = 1238
    FILE_HANDLING = 1303
    PAYLOAD_EXIT = 1305
    LIST_LENGTH_MISMATCH = 1312
    UNKNOWN_CHECKSUM_TYPE = 1314
    LOG_TARBALL_FAILED = 1320
    EMPTY_OUTPUT = 1350
    CHECKSUM_CALCULATION = 1366
    BAD_FILE_NAME = 1371
    PREEMPTED = 1379

    @property
    def message(self) -> str:
        """What the code means, in PROTOCOL.md's words: for people reading a code without its diagnostic."""
        return _MESSAGES[self]


_MESSAGES = {
    ErrorCode.OK: "no error",
    ErrorCode.GENERAL: "general pilot error",
    ErrorCode.NO_LOCAL_SPACE: "not enough local space",
    ErrorCode.STAGEIN_FAILED: "stage-in failed",
    ErrorCode.NO_SUCH_FILE: "no such file",
    ErrorCode.WORKDIR_TOO_LARGE: "work directory too large",
    ErrorCode.STDOUT_TOO_LARGE: "payload stdout too large",
    ErrorCode.SETUP_FAILED: "payload setup failed",
    ErrorCode.OUTPUT_TOO_LARGE: "output file too large",
    ErrorCode.STAGEOUT_FAILED: "stage-out failed",
    ErrorCode.MD5_MISMATCH_OUTPUT: "md5 mismatch on output",
    ErrorCode.MD5_MISMATCH_INPUT: "md5 mismatch on input",
    ErrorCode.LOOPING_JOB: "looping job (no file touched)",
    ErrorCode.STAGEIN_TIMEOUT: "stage-in timed out",
    ErrorCode.STAGEOUT_TIMEOUT: "stage-out timed out",
    ErrorCode.MISSING_OUTPUT: "expected output file missing",
    ErrorCode.ADLER32_MISMATCH_INPUT: "adler32 mismatch on input",
    ErrorCode.ADLER32_MISMATCH_OUTPUT: "adler32 mismatch on output",
    ErrorCode.NO_JOB_REPORT: "payload wrote no job report",
    ErrorCode.LFN_TOO_LONG: "LFN too long",
    ErrorCode.MKDIR_FAILED: "could not create a directory",
    ErrorCode.KILLED_BY_SIGNAL: "killed by a signal",
    ErrorCode.SIGTERM: "killed by SIGTERM",
    ErrorCode.SIGQUIT: "killed by SIGQUIT",
    ErrorCode.SIGSEGV: "killed by SIGSEGV",
    ErrorCode.SIGXCPU: "killed by SIGXCPU",
    ErrorCode.SIGBUS: "killed by SIGBUS",
    ErrorCode.SIGUSR1: "killed by SIGUSR1",
    ErrorCode.SIGINT: "killed by SIGINT",
    ErrorCode.WALLTIME: "walltime or pilot lifetime reached",
    ErrorCode.PAYLOAD_FAILED_UNKNOWN: "payload failed, reason unknown",
    ErrorCode.ES_RECOVERABLE: "event service: recoverable error",
    ErrorCode.ES_FATAL: "event service: fatal error",
    ErrorCode.PAYLOAD_MEMORY: "payload exceeded maximum memory",
    ErrorCode.ES_NO_EVENTS: "event service: no events",
    ErrorCode.FILE_HANDLING: "file handling failure",
    ErrorCode.PAYLOAD_EXIT: "payload non-zero exit",
    ErrorCode.LIST_LENGTH_MISMATCH: "aligned per-file lists differ in length",
    ErrorCode.UNKNOWN_CHECKSUM_TYPE: "unknown checksum type",
    ErrorCode.LOG_TARBALL_FAILED: "log tarball creation failed",
    ErrorCode.EMPTY_OUTPUT: "empty (zero size) output file",
    ErrorCode.CHECKSUM_CALCULATION: "checksum calculation failed",
    ErrorCode.BAD_FILE_NAME: "bad output file name",
    ErrorCode.PREEMPTED: "preempted",
}


_SIGNAL_CODES = {
    signal.SIGTERM: ErrorCode.SIGTERM,
    signal.SIGQUIT: ErrorCode.SIGQUIT,
    signal.SIGSEGV: ErrorCode.SIGSEGV,
    signal.SIGXCPU: ErrorCode.SIGXCPU,
    signal.SIGBUS: ErrorCode.SIGBUS,
    signal.SIGUSR1: ErrorCode.SIGUSR1,
    signal.SIGINT: ErrorCode.SIGINT,
}


def out_of_space(error: OSError) -> bool:
    """Whether ``error`` says the filesystem is full (no space, or over quota): in scratch, the node's fault
    (1098), not the job's."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def signal_error_code(signum: int) -> ErrorCode:
    """The 1200-family code for a payload or pilot killed by ``signum``."""
    return _SIGNAL_CODES.get(signum, ErrorCode.KILLED_BY_SIGNAL)


class ExitCode(IntEnum):
    """Exit codes of the pilot process, as batch wrappers read them (PROTOCOL.md, section 4; exported for
    wrappers by hpcpilot.api.services). hpcpilot's own are those the README lists: never FAILURE (a failed job
    is declared, the run still succeeds) nor NO_LOCAL_SPACE (a scratch short of space fails its job, 1098)."""

    SUCCESS = 0
    FAILURE = 1
    SITE_PROBLEM = 64
    GENERAL = 65
    MKDIR = 66
    NO_LOCAL_SPACE = 69
    EXCEPTION = 70
    MISSING_INPUT = 77
    MAX_TIME = 81
    NO_JOBS = 82


def signal_exit_code(signum: int) -> int:
    """Shell convention for a process ended by a signal: 128 + signal number."""
    return 128 + signum


# A NUL, which PostgreSQL (a PanDA server's database) refuses in any text, failing the job's whole update; other
# control characters but tab and newline (a payload's ANSI colours); lone surrogates, which have no UTF-8 form.
_NOT_STORABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def storable_diag(text: str) -> str:
    """A diagnostic as PanDA can store and show it: each character it cannot replaced by U+FFFD."""
    return _NOT_STORABLE.sub("\ufffd", text)


class PilotError(Exception):
    """A failure that ends one job with a PanDA error code and a readable diagnostic."""

    def __init__(self, code: ErrorCode, diag: str):
        super().__init__(f"{int(code)}: {diag}")
        self.code = code
        self.diag = diag

    def __reduce__(self) -> tuple:  # ranks send job errors to rank 0: unpickling must call __init__ as written
        return type(self), (self.code, self.diag)


class JobDefinitionError(PilotError):
    """A job definition that cannot be run as written."""


class WorkerError(Exception):
    """A failure of the pilot itself (not of one job): ends the worker with ``exit_code``."""

    def __init__(self, exit_code: ExitCode, message: str):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple:
        return type(self), (self.exit_code, str(self))
