"""The PanDA job definition: parsing and validation into typed, frozen specs.

A definition is a flat mapping of mostly strings (shared/PROTOCOL.md,
section 3). Per-file fields are comma-separated lists aligned by position;
``NULL`` means empty; a per-file field given once applies to every file.
Every problem raises :class:`JobDefinitionError` naming the field.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import ErrorCode, JobDefinitionError

MAX_LFN_LENGTH = 255
_CHECKSUM_PATTERNS = {"adler32": re.compile(r"[0-9a-f]{8}"), "md5": re.compile(r"[0-9a-f]{32}")}
# "md5:" is how the PanDA server itself writes an md5 sum (its dataservice); Pilot 3 took only "md:"
_CHECKSUM_PREFIXES = {"ad": "adler32", "md": "md5", "md5": "md5"}
_TRUE_WORDS = frozenset(("true", "1", "yes", "on"))
_FALSE_WORDS = frozenset(("false", "0", "no", "off"))
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only; int64 range
_NULL_WORDS = frozenset(("", "NULL", "None"))


@dataclass(frozen=True)
class Checksum:
    kind: str  # "adler32" or "md5"
    value: str  # lower-case hex digits, no prefix

    @property
    def text(self) -> str:
        """As a job definition writes it: ``ad:<8 hex>`` or ``md:<32 hex>`` (what ``parse_checksum`` reads)."""
        prefix = next((prefix for prefix, kind in _CHECKSUM_PREFIXES.items() if kind == self.kind), self.kind)
        return f"{prefix}:{self.value}"


@dataclass(frozen=True)
class FileSpec:
    lfn: str
    guid: str = ""
    fsize: int | None = None
    checksum: Checksum | None = None
    scope: str = ""
    dataset: str = ""
    source_path: str = ""  # inFilePaths: where Harvester staged the replica


@dataclass(frozen=True)
class JobSpec:
    pandaid: int
    transformation: str
    job_pars: str = ""
    core_count: int = 1
    min_ram_mb: int = 0
    max_disk_mb: int = 0
    max_walltime: int | None = None
    looping_check: bool = True
    transfer_type: str = ""
    attempt_nr: int = 0
    task_id: str = ""
    jobset_id: str = ""
    container_name: str = ""
    event_service: bool = False
    inputs: tuple[FileSpec, ...] = ()
    outputs: tuple[FileSpec, ...] = ()
    log: FileSpec | None = None
    allow_no_output: frozenset[str] = frozenset()  # allowNoOutput: outputs the job may end without
    secrets: tuple[str, ...] = ()  # values never to appear in logs, reports or the log tarball

    @property
    def command(self) -> str:
        """The payload shell line: ``transformation jobPars``."""
        return f"{self.transformation} {self.job_pars}".strip()


@dataclass(frozen=True)
class InvalidJob:
    """A definition that failed validation: declared failed, never dropped."""

    pandaid: int
    code: ErrorCode
    diag: str

    @classmethod
    def because(cls, pandaid: int, error: JobDefinitionError) -> InvalidJob:
        return cls(pandaid, error.code, error.diag)


def _fail(code: ErrorCode, field: str, problem: str) -> JobDefinitionError:
    return JobDefinitionError(code, f"job definition field '{field}': {problem}")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _NULL_WORDS)


def _text(raw: Mapping[str, Any], field: str) -> str:
    value = raw.get(field)
    if isinstance(value, str):
        text = value.strip()
        return "" if text in _NULL_WORDS else text
    return "" if value is None else str(value).strip()


def _integer(raw: Mapping[str, Any], field: str, default: int | None, minimum: int = 0) -> int | None:
    value = raw.get(field)
    if type(value) is int and value >= minimum:  # the common case: a JSON number in range
        return value
    if _is_null(value):
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _fail(ErrorCode.GENERAL, field, f"{value!r} is not an integer") from None
    if number < minimum:
        raise _fail(ErrorCode.GENERAL, field, f"{number} is below the minimum {minimum}")
    return number


def _flag(raw: Mapping[str, Any], field: str, default: bool) -> bool:
    value = raw.get(field)
    if _is_null(value):
        return default
    word = str(value).strip().lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    # Not taken as true, as any word but a false one once was: "maybe" would make a job an event service job
    raise _fail(ErrorCode.GENERAL, field, f"{value!r} is neither true nor false (PanDA sends \"True\" or \"False\")")


def _file_list(raw: Mapping[str, Any], field: str) -> list[str]:
    return _split_list(raw.get(field))


def _split_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [] if value.strip() in _NULL_WORDS else [item.strip() for item in value.split(",")]
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value]
    return [item.strip() for item in str(value).split(",")]


def _aligned(raw: Mapping[str, Any], field: str, count: int) -> list[str]:
    """A per-file field stretched to ``count`` entries: empty, given once, or aligned."""
    values = _split_list(raw.get(field))
    if not values:
        return [""] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise _fail(ErrorCode.LIST_LENGTH_MISMATCH, field, f"has {len(values)} entries for {count} files")
    return ["" if _is_null(item) else item for item in values]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_lfn(lfn: str, field: str) -> str:
    """An LFN is a bare file name: never a path, never empty."""
    if not lfn or lfn in (".", ".."):
        raise _fail(ErrorCode.BAD_FILE_NAME, field, f"{lfn!r} is not a file name")
    if "/" in lfn or "\0" in lfn:
        raise _fail(ErrorCode.BAD_FILE_NAME, field, f"{lfn!r} is a path, not a bare file name")
    if _CONTROL.search(lfn):  # no file catalogue (XML) or log line can carry them
        raise _fail(ErrorCode.BAD_FILE_NAME, field, f"{lfn!r} holds a control character")
    if len(lfn.encode("utf-8", "surrogatepass")) > MAX_LFN_LENGTH:
        raise _fail(ErrorCode.LFN_TOO_LONG, field, f"name of {len(lfn)} characters exceeds {MAX_LFN_LENGTH}")
    return lfn


def parse_checksum(text: str, field: str = "checksum") -> Checksum | None:
    """``ad:<8 hex>`` or ``md:<32 hex>`` (or ``md5:<32 hex>``); a bare 8-hex value is adler32."""
    if _is_null(text):
        return None
    prefix, _, digits = text.strip().lower().rpartition(":")
    kind = _CHECKSUM_PREFIXES.get(prefix) if prefix else "adler32"
    if kind is None:
        raise _fail(ErrorCode.UNKNOWN_CHECKSUM_TYPE, field, f"unknown checksum type in {text!r}")
    if not _CHECKSUM_PATTERNS[kind].fullmatch(digits):
        raise _fail(ErrorCode.UNKNOWN_CHECKSUM_TYPE, field, f"{text!r} is not a valid {kind} value")
    return Checksum(kind, digits)


def _parse_size(text: str, field: str) -> int | None:
    if not text:
        return None
    if not _DIGITS.fullmatch(text):
        raise _fail(ErrorCode.GENERAL, field, f"file size {text!r} is not a non-negative integer")
    return int(text)


def _file_names(raw: Mapping[str, Any], field: str) -> list[str]:
    """The LFNs of a file list, each valid and named once (one name, one file in scratch)."""
    lfns = [validate_lfn(name, field) for name in _file_list(raw, field)]
    if len(set(lfns)) != len(lfns):
        raise _fail(ErrorCode.BAD_FILE_NAME, field, "names the same file twice")
    return lfns


def _inputs(raw: Mapping[str, Any]) -> tuple[FileSpec, ...]:
    lfns = _file_names(raw, "inFiles")
    count = len(lfns)
    guids, sizes, sums, scopes, datasets, paths = (
        _aligned(raw, field, count)
        for field in ("GUID", "fsize", "checksum", "scopeIn", "realDatasetsIn", "inFilePaths")
    )
    if any(_CONTROL.search(guid) for guid in guids):  # they go into PoolFileCatalog.xml
        raise _fail(ErrorCode.GENERAL, "GUID", "holds a control character")
    return tuple(
        FileSpec(lfn, guids[i], _parse_size(sizes[i], "fsize"), parse_checksum(sums[i]), scopes[i], datasets[i], paths[i])
        for i, lfn in enumerate(lfns)
    )


def _outputs(raw: Mapping[str, Any], log_lfn: str) -> tuple[FileSpec, ...]:
    lfns = _file_names(raw, "outFiles")
    outputs = [lfn for lfn in lfns if lfn != log_lfn]
    datasets = dict(zip(lfns, _aligned(raw, "realDatasets", len(lfns))))
    scopes = dict(zip(outputs, _output_scopes(raw, lfns, outputs)))
    return tuple(FileSpec(lfn, scope=scopes[lfn], dataset=datasets[lfn]) for lfn in outputs)


def _output_scopes(raw: Mapping[str, Any], lfns: list[str], outputs: list[str]) -> list[str]:
    """One scope per output: PanDA leaves the log out of ``scopeOut`` (its scope is ``scopeLog``; Harvester and
    Pilot 3 put it back at the log's place). A list with one per ``outFiles`` entry, log included, is taken too."""
    if len(_split_list(raw.get("scopeOut"))) == len(lfns) > len(outputs):
        return [scope for lfn, scope in zip(lfns, _aligned(raw, "scopeOut", len(lfns))) if lfn in outputs]
    return _aligned(raw, "scopeOut", len(outputs))


def _log(raw: Mapping[str, Any], pandaid: int) -> FileSpec:
    lfn = _text(raw, "logFile") or f"log.{pandaid}.job.log.tgz"
    return FileSpec(validate_lfn(lfn, "logFile"), guid=_text(raw, "logGUID"), scope=_text(raw, "scopeLog"))


def parse_pandaid(value: Any) -> int:
    text = "" if _is_null(value) else str(value).strip()
    if not _DIGITS.fullmatch(text) or int(text) == 0:
        raise _fail(ErrorCode.GENERAL, "PandaID", f"{value!r} is not a positive integer")
    return int(text)


def declared_core_count(raw: Mapping[str, Any]) -> int:
    """``coreCount`` of a definition not yet validated; 1 if it has none or no valid one."""
    try:
        return _integer(raw, "coreCount", 1, minimum=1) if isinstance(raw, Mapping) else 1
    except JobDefinitionError:
        return 1


def is_event_service(raw: Mapping[str, Any]) -> bool:
    return _flag(raw, "eventService", False)


SECRET_KEYS = ("pilotSecrets", "secrets")  # the pilot's, and the user's (PanDA: a JSON object of name: value)
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary text


def secret_values(raw: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, ...]:
    """The values of secret fields, and every string inside one that holds JSON."""
    found: list[str] = []
    for key in keys:
        try:
            _collect_strings(raw.get(key), found)
        except RecursionError:
            raise _fail(ErrorCode.GENERAL, key, "is nested too deeply to be searched for secrets") from None
    return tuple(sorted({v for v in found if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True))


def _collect_strings(value: Any, found: list[str]) -> None:
    if value is None:  # the common case: no such field
        return
    if isinstance(value, str):
        found.append(value)
        if value.strip()[:1] in "{[":
            _collect_strings(_structure_of(value), found)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_strings(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_strings(item, found)


def _structure_of(text: str) -> Any:
    """What a secret field's text holds: JSON, or the Python repr Harvester's cgi spec format makes of a dict
    (``{'token': 'x'}``); None if neither. A RecursionError is the caller's."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)  # literals only: nothing in the text is run
    except (ValueError, SyntaxError, TypeError, MemoryError):
        return None


# What the pilot writes in a job's scratch; no input, output or log may take these names.
SCRATCH_NAMES = frozenset({"payload.stdout", "payload.stderr", "PoolFileCatalog.xml", "pilot.log", "jobReport.json",
                           "memory_monitor_output.txt", "channel"})
PILOT_PREFIX = ".hpcpilot"  # the pilot's own hidden files in the access point


def is_reserved(name: str, reserved: frozenset[str] = SCRATCH_NAMES) -> bool:
    """A name no input, output or log may take: one of ``reserved`` or of the pilot's hidden files."""
    return name in reserved or name.startswith(PILOT_PREFIX)


def _check_unicode(raw: Mapping[str, Any]) -> None:
    """Every text of the definition is Unicode: a JSON \\u escape of half a UTF-16 pair (\\ud800) is a lone
    surrogate, which no command line, file name, environment or log can carry (UTF-8 refuses it)."""
    for key, value in raw.items():
        text = str(key) + _texts_in(value)
        if not text.isascii():  # the common case costs no encoding
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise _fail(ErrorCode.GENERAL, ascii(key)[1:-1], f"holds {error.object[error.start]!a}, a lone "
                            "surrogate (half of a UTF-16 pair), not text") from None


def _texts_in(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else ""


def parse_job(raw: Mapping[str, Any], secret_keys: tuple[str, ...] = SECRET_KEYS,
              reserved: frozenset[str] = SCRATCH_NAMES) -> JobSpec:
    """Turn one PanDA job definition into a :class:`JobSpec`, or raise JobDefinitionError.

    ``reserved``: names no input, output or log may have (the pilot's and Harvester's own files).
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):  # a dict skips the slower ABC check
        raise JobDefinitionError(ErrorCode.GENERAL, f"job definition is a {type(raw).__name__}, not an object")
    pandaid = parse_pandaid(raw.get("PandaID"))
    _check_unicode(raw)
    transformation = _text(raw, "transformation")
    if not transformation:
        raise _fail(ErrorCode.SETUP_FAILED, "transformation", "is empty: there is no payload to run")
    log = _log(raw, pandaid)
    inputs, outputs = _inputs(raw), _outputs(raw, log.lfn)
    _check_none_reserved((("inFiles", inputs), ("outFiles", outputs), ("logFile", (log,))), reserved)
    return JobSpec(
        pandaid=pandaid,
        transformation=transformation,
        job_pars=_text(raw, "jobPars"),
        core_count=_integer(raw, "coreCount", 1) or 1,  # PanDA's 0 is unset, as its NULL (so Pilot 3 takes it)
        min_ram_mb=_integer(raw, "minRamCount", 0),
        max_disk_mb=_integer(raw, "maxDiskCount", 0),
        max_walltime=_integer(raw, "maxWalltime", None) or None,  # 0: no limit, as NULL
        looping_check=_flag(raw, "loopingCheck", True),
        transfer_type=_text(raw, "transferType"),
        attempt_nr=_integer(raw, "attemptNr", 0),
        task_id=_text(raw, "taskID"),
        jobset_id=_text(raw, "jobsetID"),
        container_name=_text(raw, "container_name"),
        event_service=is_event_service(raw),
        inputs=inputs,
        outputs=outputs,
        log=log,
        allow_no_output=frozenset(_file_list(raw, "allowNoOutput")),
        secrets=secret_values(raw, secret_keys),
    )


def _check_none_reserved(files: Iterable[tuple[str, Iterable[FileSpec]]], reserved: frozenset[str]) -> None:
    """JobDefinitionError (1371) for the first file, of (field, its files), with one of the ``reserved`` names."""
    for field, specs in files:
        for spec in specs:
            if is_reserved(spec.lfn, reserved):
                raise _fail(ErrorCode.BAD_FILE_NAME, field, f"{spec.lfn!r} is the name of a file the pilot or "
                            "Harvester keeps for itself")
