"""The Harvester shared-file protocol: reading job definitions, writing what Harvester reads.

Layouts (shared/PROTOCOL.md, section 1): ManyToOne has ``worker_pandaids.json``
and one sub-directory per PandaID; OneToOne has the job spec at the top (and a
``worker_pandaids.json`` too: Harvester writes one for every layout).
Every file Harvester reads is published atomically (see atomicfile); declarations in
``event_status.dump.json`` go through eventstatus.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .atomicfile import read_bytes, read_json, short_read_is_end, write_json
from .config import HarvesterFiles
from .errors import ErrorCode, ExitCode, JobDefinitionError, WorkerError
from .jobs import (SCRATCH_NAMES, SECRET_KEYS, InvalidJob, JobSpec, declared_core_count, is_event_service,
                   is_reserved, parse_job, parse_pandaid)
from .threadstart import no_thread_error

log = logging.getLogger(__name__)

# A job spec is UTF-8 (JSON's encoding, and what a URL-encoded one decodes to) whatever the node's locale: a
# batch node's LC_ALL=C would read it as ASCII. A leading byte order mark is skipped (RFC 8259 lets a reader).
SPEC_ENCODING = "utf-8-sig"

# Overlaps the metadata latency of a shared filesystem when reading many job files.
READ_THREADS = 8
READ_CHUNK = 256  # job directories per thread pool task
JOB_DIR_CACHE = 1024  # job directory paths kept: far more than a rank has jobs in flight
SPEC_NAMES = ("HPCJobs.json", "pandaJobData.out")  # Harvester's two names for the job spec (PROTOCOL.md)
# Files Harvester's messenger keeps in a job directory under names of its own, not settings of its: it merges
# the first into the job's attributes and declares the outputs listed in the directory the second names.
HARVESTER_JOB_FILES = frozenset({"post_process_job_attrs.json", "task_workdir_path.txt"})
# Harvester renames these two to <name>.read and reads them from there; it writes the second via <name>.new.
HARVESTER_RENAMED_SUFFIXES = (".read", ".new")
TAKEN_SUFFIX = ".taken"  # added to the journal's name: a dump the pilot took back from Harvester, to add to


class AccessPoint:
    """One worker's access point directory, as Harvester lays it out."""

    def __init__(self, root: Path, files: HarvesterFiles, secret_keys: tuple[str, ...] = SECRET_KEYS):
        self.root = _declarable_root(Path(root).absolute())
        self._undeclarable = _undeclarable_reason(self.root)
        self.files = files
        self.secret_keys = secret_keys
        self.many_to_one = _is_many_to_one(self.root, files)
        self._root_text = str(self.root)
        self._job_dirs: dict[int, Path] = {}
        self._short_read_is_end = False  # learnt once the access point is known to be readable
        # names no input, output or log may take: Harvester's files and the pilot's, here and in scratch
        self.reserved_names = SCRATCH_NAMES | HARVESTER_JOB_FILES | _renamed_by_harvester(files) | {
            getattr(files, f.name) for f in fields(files) if f.name != "job_spec_format"} | {
            files.pending_declarations + TAKEN_SUFFIX}
        # Harvester renames a dump it has read to <dump>.read.<time>, and a rerun takes every <dump>.read* for
        # ranges already declared: a payload's file under such a name would pass for one.
        self._taken_dump_prefix = files.event_status + ".read"

    def is_reserved(self, name: str) -> bool:
        """A name no output or log may take here (for inputs, ``reserved_names`` is what parse_job checks)."""
        return is_reserved(name, self.reserved_names) or name.startswith(self._taken_dump_prefix)

    @property
    def state_dir(self) -> Path:
        """The pilot's own bookkeeping, hidden from Harvester."""
        return self.root / self.files.state_dir

    @property
    def run_lock(self) -> Path:
        """What the pilot running on this access point holds (see runlock)."""
        return self.state_dir / "run.lock"

    def job_dir(self, pandaid: int) -> Path:
        if not self.many_to_one:
            return self.root
        job_dir = self._job_dirs.get(pandaid)
        if job_dir is None:  # asked for several times per job: made once
            if len(self._job_dirs) >= JOB_DIR_CACHE:  # kept for every job, they added up over a long run
                self._job_dirs.clear()  # (one call: safe while other threads look paths up)
            job_dir = self._job_dirs[pandaid] = self.root / str(pandaid)
        return job_dir

    def job_dir_is_inside(self, pandaid: int) -> bool:
        """False for a job directory that is a symlink leading out of the access point."""
        job_dir = self.job_dir(pandaid)
        return not job_dir.is_symlink() or job_dir.resolve().is_relative_to(self.root.resolve())

    def path(self, pandaid: int, name: str) -> Path:
        """The job's file ``name``, in its job directory."""
        return self.job_dir(pandaid) / name

    def _path_str(self, pandaid: int, name: str) -> str:
        """The same path as ``path``, as a str: for the two files written for every job and only written
        (worker_attributes, jobReport), where a pathlib join and its fspath cost some four times os.path.join
        (measured in 6846c83); a path read or tested takes ``path``."""
        return os.path.join(self.job_dir(pandaid), name)

    # -- reading -----------------------------------------------------------

    def read_jobs(self) -> list[JobSpec | InvalidJob]:
        """Every job of this worker, each validated or marked invalid with its code."""
        return [self.validated(item) for item in self.read_definitions()]

    def read_definitions(self) -> list[RawJob | InvalidJob]:
        """Every job definition of this worker as read, not yet validated; or invalid with its code
        (when its file cannot be read or decoded)."""
        self._check_readable()
        self._short_read_is_end = short_read_is_end(self.root)  # then one read takes a usual spec file
        if self.many_to_one:
            return self._read_job_dirs_in_pool(self._read_pandaids())
        spec = self.root / self.files.job_spec
        if not spec.exists():
            raise WorkerError(ExitCode.NO_JOBS, f"no jobs in {self.root}: neither "
                              f"{self.files.worker_pandaids} nor {self.files.job_spec} is there"
                              f"{self._spec_name_hint()}")
        definitions = self._definitions(spec, self._spec_text(spec), expected=None)
        if not definitions:
            raise WorkerError(ExitCode.NO_JOBS, f"{spec} holds no job definition")
        if len(definitions) > 1:  # they would share one set of Harvester's files
            raise WorkerError(ExitCode.MISSING_INPUT, f"{spec} holds {len(definitions)} job definitions, but a "
                              "OneToOne access point (its job spec at the top) has room for one")
        return definitions

    def validated(self, item: RawJob | InvalidJob) -> JobSpec | InvalidJob:
        """A definition as a typed job, or invalid with its code and diagnostic."""
        if isinstance(item, InvalidJob):
            return item
        if self._undeclarable:
            return InvalidJob(_pandaid_or_zero(item.key), ErrorCode.BAD_FILE_NAME, self._undeclarable)
        return _parse_or_invalid(item.key, item.definition, self.secret_keys, self.reserved_names)

    def note_run(self) -> bool:
        """Mark the access point as run by a pilot; True if an earlier run had marked it already.

        Called before anything is declared: on a fresh access point no job can
        hold an earlier run's state, and none needs looking at.
        """
        try:
            self.state_dir.mkdir(mode=0o755)
        except FileExistsError:
            return True
        except OSError as error:  # e.g. a read-only top with writable job directories: look at every job
            log.warning("cannot mark the access point as run (%s): every job's earlier state is read",
                        error.strerror)
            return True
        return False

    def _read_job_dirs_in_pool(self, pandaids: list[int]) -> list[RawJob | InvalidJob]:
        """Threads read the files, overlapping the metadata latency of a shared filesystem (each takes a
        chunk: one task per job costs more in scheduling than a local read); this thread parses them as
        they come, for Python code in several threads would only fight over the GIL."""
        symlinked = self._symlinked_entries()
        outside = {pandaid for pandaid in pandaids if str(pandaid) in symlinked and not self.job_dir_is_inside(pandaid)}
        chunks = [pandaids[start:start + READ_CHUNK] for start in range(0, len(pandaids), READ_CHUNK)]
        with ThreadPoolExecutor(min(READ_THREADS, len(chunks))) as pool:
            try:
                texts = pool.map(self._read_spec_texts, chunks, [outside] * len(chunks))
            except RuntimeError as error:  # "can't start new thread"
                raise no_thread_error("the threads that read the job definitions", error) from None
            return [self._job_from(pandaid, text) for chunk, chunk_texts in zip(chunks, texts)
                    for pandaid, text in zip(chunk, chunk_texts)]

    def _symlinked_entries(self) -> set[str]:
        """Names at the top of the access point that are symlinks: one directory listing, no stat per job."""
        try:
            with os.scandir(self.root) as entries:
                return {entry.name for entry in entries if entry.is_symlink()}
        except OSError as error:
            raise WorkerError(ExitCode.MISSING_INPUT, f"access point {self.root}: {error}") from None

    def _read_spec_texts(self, pandaids: list[int], outside: set[int]) -> list[str | JobDefinitionError | None]:
        """Each job's spec file as text, or why it cannot be read; None for job directories outside."""
        return [None if pandaid in outside else self._spec_text(self._spec_path(pandaid)) for pandaid in pandaids]

    def _spec_path(self, pandaid: int) -> str:
        return os.path.join(self._root_text, str(pandaid), self.files.job_spec)

    def _check_readable(self) -> None:
        try:
            is_dir = self.root.is_dir()
        except OSError as error:
            raise WorkerError(ExitCode.MISSING_INPUT, f"access point {self.root}: {error}") from None
        if not is_dir:
            raise WorkerError(ExitCode.MISSING_INPUT, f"access point {self.root} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise WorkerError(ExitCode.MISSING_INPUT, f"access point {self.root} is not readable")

    def _read_pandaids(self) -> list[int]:
        path = self.root / self.files.worker_pandaids
        try:
            content = read_json(path)
            if not isinstance(content, list):
                raise TypeError(f"found a JSON {type(content).__name__}")
            pandaids = [parse_pandaid(item) for item in content]
        except (OSError, ValueError, TypeError, JobDefinitionError) as error:
            raise WorkerError(ExitCode.MISSING_INPUT,
                              f"{path} must be a JSON list of PandaIDs: {error}") from None
        unique = list(dict.fromkeys(pandaids))
        if len(unique) != len(pandaids):
            log.warning("%s lists some PandaIDs more than once; each job runs once", path.name)
        if not unique:
            raise WorkerError(ExitCode.NO_JOBS, f"{path} lists no jobs")
        return unique

    def _job_from(self, pandaid: int, text: str | JobDefinitionError | None) -> RawJob | InvalidJob:
        if text is None:
            return InvalidJob(pandaid, ErrorCode.FILE_HANDLING, f"job directory {self.job_dir(pandaid)} is a "
                              f"symlink to {self.job_dir(pandaid).resolve()}, outside the access point; refused")
        if isinstance(text, JobDefinitionError) and text.code == ErrorCode.NO_SUCH_FILE:
            text = JobDefinitionError(text.code, text.diag + self._spec_name_hint(self.job_dir(pandaid)))
        return self._definitions(self._spec_path(pandaid), text, expected=pandaid)[0]

    def _spec_name_hint(self, *directories: Path) -> str:
        """Harvester names the job spec HPCJobs.json or, its messenger's default, pandaJobData.out: when the
        configured name is missing and the other is there, say which setting to change."""
        for other in SPEC_NAMES:
            if other != self.files.job_spec and any(_exists(d / other) for d in (*directories, self.root)):
                return f"; {other} is there: set files.job_spec to it (HPCPILOT_FILES__JOB_SPEC={other})"
        return ""

    def _definitions(self, spec: Path | str, text: str | JobDefinitionError, expected: int | None
                     ) -> list[RawJob | InvalidJob]:
        try:
            if isinstance(text, JobDefinitionError):  # the file could not be read
                return [InvalidJob.because(expected or 0, text)]
            definitions = self._definitions_in(spec, text)
        except JobDefinitionError as error:
            return [InvalidJob.because(expected or 0, error)]
        if expected is not None:
            return [RawJob(expected, expected, definitions.get(str(expected), _only(definitions)))]
        return [RawJob(_pandaid_or_zero(key), key, raw) for key, raw in definitions.items()]

    def _spec_text(self, spec: Path | str) -> str | JobDefinitionError:
        """The spec file's text, or the error that says why it cannot be read (returned: threads hand it on)."""
        try:
            return _read_text(os.fspath(spec), self._short_read_is_end)
        except FileNotFoundError:
            return JobDefinitionError(ErrorCode.NO_SUCH_FILE, f"job definition {spec} does not exist")
        except OSError as error:
            return JobDefinitionError(ErrorCode.FILE_HANDLING, f"cannot read job definition {spec}: {error}")
        except UnicodeDecodeError as error:
            return JobDefinitionError(ErrorCode.FILE_HANDLING, f"job definition {spec} is not UTF-8 text: byte "
                                      f"{error.object[error.start]:#04x} at offset {error.start}")

    def _definitions_in(self, spec: Path | str, text: str) -> dict[Any, Any]:
        """The spec file's text as {PandaID string: definition}."""
        if self.files.job_spec_format == "cgi":
            definition = dict(urllib.parse.parse_qsl(text.strip(), keep_blank_values=True))
            if "PandaID" not in definition and text.lstrip().startswith("{"):  # Harvester wrote it in json
                raise JobDefinitionError(ErrorCode.GENERAL, f"{os.path.basename(spec)} holds JSON, not key=value&...: "
                                         "set files.job_spec_format to json (HPCPILOT_FILES__JOB_SPEC_FORMAT=json)")
            return {definition.get("PandaID", ""): definition}
        try:
            content = json.loads(text)
        except (ValueError, RecursionError) as error:
            hint = ("; it holds key=value&...: set files.job_spec_format to cgi (HPCPILOT_FILES__JOB_SPEC_FORMAT=cgi)"
                    if "PandaID=" in text else "")  # Harvester's jobSpecFileFormat: cgi
            raise JobDefinitionError(ErrorCode.GENERAL,
                                     f"{os.path.basename(spec)} is not valid JSON: {error}{hint}") from None
        if not isinstance(content, dict):
            raise JobDefinitionError(ErrorCode.GENERAL, f"{os.path.basename(spec)} must hold a JSON object")
        if "PandaID" in content:  # a bare definition rather than {PandaID: definition}
            return {str(content["PandaID"]): content}
        return content

    # -- writing -----------------------------------------------------------

    def read_attributes(self, pandaid: int) -> dict[str, Any] | None:
        """The job's ``worker_attributes.json`` as last written, or None if there is none or it does not parse
        (a passing state is written without fsync: a node crash may tear it; a final state never is).
        OSError when it cannot be read: the job's state is then unknown."""
        try:
            content = read_json(self.path(pandaid, self.files.worker_attributes))
        except (FileNotFoundError, ValueError):
            return None
        return content if isinstance(content, dict) else None

    def write_attributes(self, pandaid: int, attributes: dict[str, Any], durable: bool = True) -> None:
        """``durable=False`` skips the fsync: for passing states, which a crash may lose harmlessly."""
        write_json(self._path_str(pandaid, self.files.worker_attributes), attributes, fsync=durable)

    def write_job_report(self, pandaid: int, report: Any) -> None:
        write_json(self._path_str(pandaid, self.files.job_report), report)

    def write_summary(self, summary: Any) -> None:
        write_json(self.root / self.files.summary, summary)

    def request_kill(self, reason: str) -> None:
        """Ask Harvester to cancel this worker's batch job (it looks only for the file): the pilot gave up,
        and a rank the launcher cannot end (hung in the kernel) would otherwise hold the allocation."""
        write_json(self.root / self.files.kill_worker, {"reason": reason, "time": time.time()})

    def withdraw_kill_request(self) -> bool:
        """Remove a kill request an earlier run of this worker left (e.g. before the batch system requeued the
        job): Harvester would cancel this run for it. True if there was one."""
        try:
            (self.root / self.files.kill_worker).unlink()
            return True
        except FileNotFoundError:
            return False

    def touch_heartbeat(self) -> None:
        path = self.root / self.files.heartbeat
        write_json(path, {"time": time.time()}, fsync=False)


def _renamed_by_harvester(files: HarvesterFiles) -> frozenset[str]:
    """The names Harvester gives the dump and its event update file while it reads them."""
    return frozenset(name + suffix for name in (files.event_status, files.update_events)
                     for suffix in HARVESTER_RENAMED_SUFFIXES)


def _only(definitions: dict[Any, Any]) -> Any:
    """The single definition of a one-job spec file whose key is not the expected PandaID."""
    return next(iter(definitions.values())) if len(definitions) == 1 else None


@dataclass(frozen=True)
class RawJob:
    """A job definition as read from the access point; each rank validates its own share."""

    pandaid: int  # as far as the file tells (0 when its key is no PandaID)
    key: Any  # the PandaID as the spec file gives it
    definition: Any

    @property
    def core_count(self) -> int:
        """The cores it asks for, for dealing jobs out (an invalid value counts as 1: it fails later)."""
        return declared_core_count(self.definition)

    @property
    def event_service(self) -> bool:
        """An unreadable eventService counts as False here: the job then fails its validation, which says why."""
        try:
            return isinstance(self.definition, dict) and is_event_service(self.definition)
        except JobDefinitionError:
            return False


def _declarable_root(root: Path) -> Path:
    """``root``, or where it leads when only that has a UTF-8 name (a link to it named otherwise). Every path
    declared to Harvester starts with it, and Harvester keeps paths as text: other bytes reach it as lone
    surrogates (JSON's \\udcff), which its database refuses to store
    (sqlite and MySQL take UTF-8) and other JSON readers reject or replace."""
    if is_utf8(str(root)):
        return root
    real = Path(os.path.realpath(root))
    return real if is_utf8(str(real)) else root


def _undeclarable_reason(root: Path) -> str:
    """Why no file in ``root`` can be declared to Harvester; empty when they can."""
    if is_utf8(str(root)):
        return ""
    return (f"the access point's path {os.fsencode(root)!r} is not UTF-8: no output or log in it can be declared "
            "in a form Harvester can store; run the pilot on the access point as Harvester names it")


def is_utf8(text: str) -> bool:
    """Whether Harvester can keep ``text`` (a path) as it is: no lone surrogate of an undecodable byte."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pandaid_or_zero(key: Any) -> int:
    try:
        return parse_pandaid(key)
    except JobDefinitionError:
        return 0


def _parse_or_invalid(key: Any, raw: Any, secret_keys: tuple[str, ...], reserved: frozenset[str]
                      ) -> JobSpec | InvalidJob:
    try:
        pandaid = parse_pandaid(key)
    except JobDefinitionError as error:
        return InvalidJob.because(0, error)
    if raw is None:
        return InvalidJob(pandaid, ErrorCode.GENERAL, f"no definition for PandaID {pandaid} in the job spec file")
    try:
        job = parse_job(raw, secret_keys, reserved)
    except JobDefinitionError as error:
        return InvalidJob.because(pandaid, error)
    if job.pandaid != pandaid:
        return InvalidJob(pandaid, ErrorCode.GENERAL,
                          f"job definition field 'PandaID': {job.pandaid} differs from its key {pandaid}")
    return job


def _read_text(path: str, short_read_is_end: bool) -> str:
    """The file's text as UTF-8 with universal newlines, without the layers of a buffered text file (read many
    times over)."""
    text = read_bytes(path, short_read_is_end=short_read_is_end).decode(SPEC_ENCODING)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text  # universal newlines


def _is_many_to_one(root: Path, files: HarvesterFiles) -> bool:
    """Job files in one sub-directory per PandaID (ManyToOne), not at the top.

    Harvester writes worker_pandaids.json for every layout (feed_jobs); only a
    OneToOne worker has the job spec at the top, so that decides.
    """
    return _exists(root / files.worker_pandaids) and not _exists(root / files.job_spec)


def _exists(path: Path) -> bool:
    """False also when the directory cannot be searched; read_jobs then reports it."""
    try:
        return path.exists()
    except OSError:
        return False

