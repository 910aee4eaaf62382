"""Stage-in to node-local scratch and stage-out back to the job directory, checksummed in passing.

Stage-in modes: ``copy`` (the kernel copies; the size and checksum of each
copy are verified by reading it back right behind the copier), ``link`` (a
symlink to the replica, whose checksum is verified by reading it once) and
``direct`` (the payload reads the replica in place through a symlink; only
its size is verified, as reading it would defeat
remote I/O). Stage-out writes each file in the job directory under its own
name, declared with its size and adler32 only once complete, and never
follows a symlink out of scratch.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import stat
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping
from xml.sax.saxutils import quoteattr

from .atomicfile import declared_later
from .checksums import (KERNEL_CHUNK_SIZE, NEVER, Cancel, ChecksummingWriter, CopyCancelled, CopyFailed, CopyOrder,
                        NotRegularFile, RunningChecksum, copy_files_with_checksums, copy_into_with_checksum,
                        file_checksum, matches)
from .errors import ErrorCode, PilotError, out_of_space
from .jobs import FileSpec, JobSpec
from .logtarball import write_tarball
from .redaction import redact

log = logging.getLogger(__name__)

STAGEIN_MODES = ("copy", "link", "direct")  # copy and verify; symlink and verify; let the payload read in place

INPUT_MISMATCH_CODES = {"adler32": ErrorCode.ADLER32_MISMATCH_INPUT, "md5": ErrorCode.MD5_MISMATCH_INPUT}
# An output whose expected sum is given (hpcpilot.api.data; the pilot's own outputs have none to check).
OUTPUT_MISMATCH_CODES = {"adler32": ErrorCode.ADLER32_MISMATCH_OUTPUT, "md5": ErrorCode.MD5_MISMATCH_OUTPUT}
POOL_FILE_CATALOG = "PoolFileCatalog.xml"
MAX_OUTPUT_BYTES = 500 << 30  # Pilot 3's limit (PROTOCOL.md, section 5): a larger output is refused with 1124

TimeLimit = Callable[[int], float]  # the seconds a file of so many bytes may take to stage (Limits.transfer_timeout)


def no_time_limit(size: int) -> float:
    return math.inf


class TransferDeadline:
    """The ``cancel`` of one file's transfer: set by ``stop`` (the rank's), or once ``limit`` seconds have passed
    since it was made. Made as the file's transfer begins: per file, as Pilot 3 counts, rather than per job
    (the sum of its files' limits), since the copier takes the files one by one anyway and a per-file clock
    costs nothing more. Asked once per chunk: one clock read."""

    def __init__(self, stop: Cancel, limit: float):
        self.stop, self.limit = stop, limit
        self.started = time.monotonic()
        self._end = self.started + limit

    def is_set(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self._end

    def cancelled(self, code: ErrorCode, what: str) -> Exception:
        """Why the transfer was cancelled: the stop (CopyCancelled, for the caller's stop handling), else its
        time limit (``code``)."""
        if self.stop.is_set():
            return CopyCancelled(f"{what} ended by the stop")
        return PilotError(code, f"{what} timed out after {time.monotonic() - self.started:.0f} s, over its limit "
                          f"of {self.limit:.0f} s")


def stagein_mode(job: JobSpec, configured: str) -> str:
    """copy for a job in a container, which sees only its scratch (a link would lead out of it); else
    direct for a job that asks for it; else the configured mode."""
    if job.container_name:
        return "copy"
    return "direct" if job.transfer_type == "direct" else configured


Identity = tuple[int, int, int, int]  # a file's device, inode, size and modification time


@dataclass
class StagedIn:
    """What a stage-in brought: the bytes verified, and the replicas that link or direct mode gives the payload
    to read in place, by LFN, with their identity when verified (``changed_replicas`` compares it)."""

    size: int = 0
    in_place: dict[str, tuple[Path, Identity]] = field(default_factory=dict)


def stage_in(job: JobSpec, job_dir: Path, scratch: Path, mode: str, cancel: Cancel = NEVER,
             time_limit: TimeLimit = no_time_limit) -> StagedIn:
    """Bring every input of ``job`` into ``scratch`` by ``mode`` (one of STAGEIN_MODES). ``cancel`` set ends
    the copies and reads (CopyCancelled) within a chunk, the partial copy removed: gigabytes from a slow
    shared filesystem take minutes that a stopping pilot does not have. An input whose copy or read takes
    longer than ``time_limit`` of its size ends the same way, and fails the job with 1151."""
    if mode not in STAGEIN_MODES:
        raise ValueError(f"stage-in mode {mode!r}: choose one of {', '.join(STAGEIN_MODES)}")
    _check_space_for_inputs(job, scratch, mode)
    if mode == "copy":
        staged = StagedIn(_copy_inputs(job, job_dir, scratch, cancel, time_limit))
    else:
        staged = _stage_in_place(job, job_dir, scratch, mode, cancel, time_limit)
    _write_pool_file_catalog(job, scratch)
    return staged


def _stage_in_place(job: JobSpec, job_dir: Path, scratch: Path, mode: str, cancel: Cancel,
                    time_limit: TimeLimit) -> StagedIn:
    """Link every input to its replica (``link`` and ``direct``), one after the other."""
    staged = StagedIn()
    for spec in job.inputs:
        replica, identity, size = _stage_file(spec, _replica(spec, job_dir), scratch / spec.lfn, mode, cancel,
                                              time_limit)
        staged.in_place[spec.lfn] = replica, identity
        staged.size += size
    return staged


def changed_replicas(staged: StagedIn) -> list[str]:
    """The LFNs whose replica, given to the payload in place, is no longer what was verified: written through
    its link (a payload opening an input for update writes into the shared replica) or replaced. A replica
    that cannot be reached now (its filesystem gone) is not counted: that says nothing of its content."""
    changed = []
    for lfn, (replica, identity) in staged.in_place.items():
        try:
            now = _identity(os.stat(replica))
        except OSError:
            continue
        if now != identity:
            changed.append(lfn)
    return changed


def _identity(status: os.stat_result) -> Identity:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _copy_inputs(job: JobSpec, job_dir: Path, scratch: Path, cancel: Cancel, time_limit: TimeLimit) -> int:
    """Copy the inputs in order, each verified as it lands while the kernel copies the next ones.

    The replicas are resolved (and refused) one by one as the copy reaches
    them, and the first failure in input order is the one reported, as if
    the files were copied one after the other.
    """
    deadlines: list[TransferDeadline] = []
    orders = _copy_orders(job, job_dir, scratch, cancel, time_limit, deadlines)
    total = 0
    with closing(copy_files_with_checksums(orders, _worth_a_thread(job.inputs))) as copied:
        for index, spec in enumerate(job.inputs):
            try:
                running = next(copied)
            except CopyFailed as failure:
                raise stagein_error(spec.lfn, failure.order.source, failure.error) from None
            except CopyCancelled:
                raise deadlines[index].cancelled(ErrorCode.STAGEIN_TIMEOUT, f"stage-in of {spec.lfn}") from None
            _verify_input(spec, running.size, running)
            total += running.size
    return total


def _copy_orders(job: JobSpec, job_dir: Path, scratch: Path, cancel: Cancel, time_limit: TimeLimit,
                 deadlines: list[TransferDeadline]) -> Iterator[CopyOrder]:
    """One order per input, made as the copier reaches it: its deadline (appended to ``deadlines``) counts from
    the start of its own copy."""
    for spec in job.inputs:
        source = _replica_path(spec, job_dir)
        deadlines.append(deadline := TransferDeadline(cancel, time_limit(size_for_time_limit(spec.fsize, source))))
        yield CopyOrder(source, scratch / spec.lfn, _wants_md5(spec), spec.fsize, deadline)


UNKNOWN_SIZE = 1 << 62  # a file's size for its time limit when none is given: the longest limit


def size_for_time_limit(expected: int | None, source: Path) -> int:
    """A file's size for its transfer's time limit: as expected, else as found (0 if not found: the copy
    reports why)."""
    if expected is not None:
        return expected
    try:
        return source.stat().st_size
    except OSError:
        return 0


def _worth_a_thread(inputs: tuple[FileSpec, ...]) -> bool:
    """Copy and checksum overlap only when there is more than one chunk to copy."""
    return any(spec.fsize is None for spec in inputs) or sum(spec.fsize for spec in inputs) > KERNEL_CHUNK_SIZE


def _wants_md5(spec: FileSpec) -> bool:
    return spec.checksum is not None and spec.checksum.kind == "md5"


def _replica(spec: FileSpec, job_dir: Path) -> Path:
    """Where Harvester put the input, checked to be a regular file (a copy checks what it opens instead)."""
    source = _replica_path(spec, job_dir)
    _check_regular_replica(spec, source)
    return source


def _replica_path(spec: FileSpec, job_dir: Path) -> Path:
    """Where Harvester put the input: ``inFilePaths``, else the LFN entry in the job directory."""
    source = Path(spec.source_path) if spec.source_path else Path(spec.lfn)
    if not source.is_absolute() and ".." in source.parts:
        raise PilotError(ErrorCode.BAD_FILE_NAME, f"input {spec.lfn}: relative replica path {spec.source_path!r} "
                         "leads out of the job directory")
    return source if source.is_absolute() else job_dir / source


def _check_regular_replica(spec: FileSpec, source: Path) -> None:
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise PilotError(ErrorCode.STAGEIN_FAILED, f"input {spec.lfn} not found at {source}") from None
    except OSError as error:
        raise PilotError(ErrorCode.STAGEIN_FAILED, f"cannot stage in {spec.lfn} from {source}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        # A directory fails to read; a FIFO or device would block or never end: refuse them all.
        raise _not_regular(spec.lfn, source)


def _not_regular(name: str, source: Path) -> PilotError:
    return PilotError(ErrorCode.STAGEIN_FAILED, f"input {name} at {source} is not a regular file")


def _check_space_for_inputs(job: JobSpec, scratch: Path, mode: str) -> None:
    """Refuse before copying what cannot fit, rather than fill the disk the other jobs share."""
    if mode != "copy":
        return
    needed = sum(spec.fsize or 0 for spec in job.inputs)
    free = shutil.disk_usage(scratch).free
    if needed > free:
        names = ", ".join(spec.lfn for spec in job.inputs)
        raise PilotError(ErrorCode.NO_LOCAL_SPACE, f"not enough space in scratch {scratch} for inputs {names}: "
                         f"{needed} bytes declared, {free} bytes free")


def _stage_file(spec: FileSpec, source: Path, target: Path, mode: str, cancel: Cancel,
                time_limit: TimeLimit) -> tuple[Path, Identity, int]:
    """Stage one input by ``link`` or ``direct`` (``copy`` goes through ``_copy_inputs``): the replica linked,
    its identity before it was verified, and its size. The checksum reads the very file linked."""
    deadline = TransferDeadline(cancel, time_limit(size_for_time_limit(spec.fsize, source)))
    try:
        replica = source.resolve()
        target.symlink_to(replica)
        status = os.stat(replica)
        running = None if mode == "direct" else file_checksum(replica, _wants_md5(spec), deadline)
    except OSError as error:
        raise stagein_error(spec.lfn, source, error) from None
    except CopyCancelled:
        raise deadline.cancelled(ErrorCode.STAGEIN_TIMEOUT, f"stage-in (checksum read) of {spec.lfn}") from None
    size = running.size if running else status.st_size
    _verify_input(spec, size, running)
    return replica, _identity(status), size


def stagein_error(name: str, source: Path, error: OSError) -> PilotError:
    """The job error for ``error``, raised while staging in the input ``name`` from ``source``."""
    if isinstance(error, NotRegularFile):
        return _not_regular(name, source)
    if isinstance(error, FileNotFoundError) and error.filename == str(source):
        return PilotError(ErrorCode.STAGEIN_FAILED, f"input {name} not found at {source}")
    if out_of_space(error):
        return PilotError(ErrorCode.NO_LOCAL_SPACE, f"no space left in scratch for input {name}: {error}")
    # the whole error: it names the file that failed, the destination's temp file as often as the source
    return PilotError(ErrorCode.STAGEIN_FAILED, f"cannot stage in {name} from {source}: {error}")


def _verify_input(spec: FileSpec, size: int, running: RunningChecksum | None) -> None:
    if spec.fsize is not None and size != spec.fsize:
        raise PilotError(ErrorCode.STAGEIN_FAILED, f"input {spec.lfn}: size {size} differs from declared {spec.fsize}")
    if running is not None and not matches(running, spec.checksum):
        kind = spec.checksum.kind
        raise PilotError(INPUT_MISMATCH_CODES[kind],
                         f"input {spec.lfn}: {kind} {running.value(kind)} differs from declared {spec.checksum.value}")


def _write_pool_file_catalog(job: JobSpec, scratch: Path) -> None:
    """The GUID -> local file catalogue that ATLAS payloads read from their working directory."""
    catalogue = pool_file_catalog((spec.guid, spec.lfn, spec.lfn) for spec in job.inputs)
    try:
        with open(os.path.join(scratch, POOL_FILE_CATALOG), "w", encoding="utf-8") as catalogue_file:
            catalogue_file.write(catalogue)  # in UTF-8, as its XML header says
    except OSError as error:
        code = ErrorCode.NO_LOCAL_SPACE if out_of_space(error) else ErrorCode.STAGEIN_FAILED
        raise PilotError(code, f"cannot write {POOL_FILE_CATALOG} in scratch: {error.strerror}") from None


def pool_file_catalog(files: Iterable[tuple[str, str, str]]) -> str:
    """POOL's XML catalogue of ``(guid, physical name, logical name)``, every value escaped for XML."""
    entries = "".join(f'  <File ID={quoteattr(guid)}>\n    <physical><pfn filetype="ROOT_All" name={quoteattr(pfn)}/>'
                      f'</physical>\n    <logical><lfn name={quoteattr(lfn)}/></logical>\n  </File>\n'
                      for guid, pfn, lfn in files)
    return f'<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n<POOLFILECATALOG>\n{entries}</POOLFILECATALOG>\n'


def inside_scratch(scratch: Path, name: str) -> str:
    """A path to ``scratch/name`` that stays in scratch: refuses a name that leads out of it (a symlink, or
    on the way ``..`` or a symlinked directory), and FIFOs and devices. A plain string: it is only opened."""
    check_scratch_is_ours(scratch)
    path = os.path.join(scratch, name)
    if os.sep in name and not _within(scratch, real := Path(os.path.realpath(path))):
        raise PilotError(ErrorCode.FILE_HANDLING, f"{name} leads out of scratch, to {real}; not followed")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # the usual case, and no symlink to resolve
        return path
    real = Path(os.path.realpath(path))
    if not _within(scratch, real):
        raise PilotError(ErrorCode.FILE_HANDLING, f"{name} in scratch is a symlink to {real}, outside scratch; not followed")
    if _is_special(real):  # opening a FIFO nobody writes to would block the pilot for ever
        raise PilotError(ErrorCode.FILE_HANDLING, f"{name} in scratch is not a regular file (FIFO, socket or device)")
    return str(real)


def _within(scratch: Path, real: Path) -> bool:
    return real.is_relative_to(os.path.realpath(scratch))


def _is_special(path: Path) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_scratch_is_ours(scratch: Path) -> None:
    """The payload may have replaced its scratch directory by a symlink to somewhere else: never follow it."""
    try:
        ours = stat.S_ISDIR(os.lstat(scratch).st_mode)  # a directory, and not through a symlink
    except OSError:
        ours = False
    if not ours:
        raise PilotError(ErrorCode.FILE_HANDLING, f"scratch directory {scratch} was replaced by the payload "
                         "(it is no longer a directory of the pilot's); nothing in it is used")


def stage_out_outputs(job: JobSpec, scratch: Path, job_dir: Path, guids: Mapping[str, str] = MappingProxyType({}),
                      time_limit: TimeLimit = no_time_limit) -> list[dict[str, Any]]:
    """Publish every declared output in the job directory; returns their declarations. ``guids``: the GUIDs
    the payload gave its outputs (by LFN); an output without one gets a new GUID. An output whose copy takes
    longer than ``time_limit`` of its size fails the job with 1152, and leaves nothing under its name.
    An output the job's ``allowNoOutput`` lists may be missing: it is left out, as Pilot 3 leaves it."""
    declared = (_stage_out_file(spec, scratch, job_dir, guids.get(spec.lfn, ""), time_limit,
                                may_be_missing=spec.lfn in job.allow_no_output) for spec in job.outputs)
    return [entry for entry in declared if entry is not None]


def _stage_out_file(spec: FileSpec, scratch: Path, job_dir: Path, guid: str, time_limit: TimeLimit,
                    may_be_missing: bool) -> dict[str, Any] | None:
    """The output's declaration once it is in the job directory; None for a missing one that ``may_be_missing``
    (a name the payload made something else than a file is no output either)."""
    source = inside_scratch(scratch, spec.lfn)
    try:
        status = os.stat(source)
    except FileNotFoundError:
        status = None
    except OSError as error:  # a symlink loop the payload left (ELOOP), say: the job's failure, not the pilot's
        raise PilotError(ErrorCode.FILE_HANDLING, f"output {spec.lfn} in scratch cannot be read: "
                         f"{error.strerror}") from None
    if status is None or not stat.S_ISREG(status.st_mode):
        if may_be_missing:
            log.info("output %s was not produced; allowNoOutput lists it: left out of the stage-out", spec.lfn)
            return None
        found = "is a directory, not a file" if status and stat.S_ISDIR(status.st_mode) else "was not produced"
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"expected output {spec.lfn} {found}")
    check_output_size(spec.lfn, status.st_size)
    target = job_dir / spec.lfn
    try:
        running = copy_out_in_time(source, target, time_limit(status.st_size))
    except OSError as error:
        raise stageout_error(spec.lfn, job_dir, error) from None
    check_not_emptied(spec.lfn, target, running)
    return declaration("output", target, running, guid or spec.guid)


def check_output_size(name: str, size: int) -> None:
    """Refused before copying: an empty output (1350) is no result, whatever the payload said; one over the
    limit (1124) would take hours on the shared filesystem, for nothing (a sparse file costs the payload no time
    to make)."""
    if size == 0:
        raise _empty_output(name, "is empty (zero size)")
    if size > MAX_OUTPUT_BYTES:
        raise PilotError(ErrorCode.OUTPUT_TOO_LARGE, f"output {name} of {size} bytes exceeds the limit of "
                         f"{MAX_OUTPUT_BYTES} bytes")


def check_not_emptied(name: str, target: Path, copied: RunningChecksum) -> None:
    """An output emptied since its size was read (by a process the payload left running) is removed from
    ``target`` and refused (1350)."""
    if copied.size == 0:
        target.unlink(missing_ok=True)
        raise _empty_output(name, "was emptied while it was staged out (by a process the payload left running?)")


def _empty_output(name: str, how: str) -> PilotError:
    return PilotError(ErrorCode.EMPTY_OUTPUT, f"output {name} {how}")


def stageout_error(name: str, target_dir: Path, error: OSError) -> PilotError:
    """The job error for ``error``, raised while staging out the output ``name`` to ``target_dir``."""
    return PilotError(ErrorCode.STAGEOUT_FAILED, f"cannot stage out {name} to {target_dir}: {error}")


def copy_out_in_time(source: Path, target: Path, limit: float, stop: Cancel = NEVER) -> RunningChecksum:
    """``copy_out`` ended after ``limit`` seconds with 1152, or by ``stop`` (CopyCancelled), leaving nothing at
    ``target``. A job's outputs let a stop go by: they are its work done, worth their copy."""
    deadline = TransferDeadline(stop, limit)
    try:
        return copy_out(source, target, deadline)
    except CopyCancelled:
        raise deadline.cancelled(ErrorCode.STAGEOUT_TIMEOUT, f"stage-out of {target.name} to {target.parent}") \
            from None


def copy_out(source: Path, target: Path, cancel: Cancel = NEVER) -> RunningChecksum:
    """Copy ``source`` from scratch to ``target`` in the job directory, to be declared once complete; a
    failed or cancelled copy leaves nothing at ``target``.

    The source in scratch is ours: its sum is the sum of the bytes published.
    """
    with declared_later(target) as handle:
        return copy_into_with_checksum(source, handle.fd, cancel=cancel)


def declaration(kind: str, path: Path, running: RunningChecksum, guid: str) -> dict[str, Any]:
    """One ``event_status.dump.json`` entry (PROTOCOL.md: ``type``, bare adler32)."""
    return {"type": kind, "path": str(path.absolute()), "fsize": running.size,
            "chksum": running.adler32, "guid": guid or str(uuid.uuid4())}


def write_log_tarball(job: JobSpec, scratch: Path, job_dir: Path, members: Iterable[str],
                      in_memory: dict[str, bytes]) -> dict[str, Any]:
    """Pack ``members`` of scratch, and the pilot's own ``in_memory`` files (which take the place of any file of
    scratch so named), into the job's log tarball in the job directory."""
    assert job.log is not None
    target = job_dir / job.log.lfn
    folder = f"log.{job.pandaid}"
    files = _regular_members(scratch, [name for name in members if name not in in_memory])
    try:
        with declared_later(target) as handle:
            writer = ChecksummingWriter(handle)
            write_tarball(writer, [(os.path.join(scratch, name), f"{folder}/{name}") for name in files],
                          in_memory=[(f"{folder}/{name}", content) for name, content in in_memory.items()])
            writer.flush()
    except OSError as error:
        raise PilotError(ErrorCode.LOG_TARBALL_FAILED, f"cannot write log tarball {target.name}: {error}") from None
    return declaration("log", target, writer.checksum, job.log.guid)


EXCERPT_BYTES = 1 << 20  # of each end of a payload output too large for the log tarball


def excerpt(scratch: Path, name: str, secrets: tuple[str, ...]) -> bytes:
    """The first and last EXCERPT_BYTES of a file of scratch, a line between them saying what was left out
    (b"" if it is not a regular file or cannot be read). Each end also loses, where it was cut, as many bytes
    as the longest secret has: a secret cut in two would not be found, and half of one would go out."""
    return _read_in_scratch(scratch, name, lambda fd, size: _ends(fd, size, name, secrets))


def _ends(fd: int, size: int, name: str, secrets: tuple[str, ...]) -> bytes:
    if size <= 2 * EXCERPT_BYTES:  # a limit under 2 MB: nothing to leave out
        return _redact_bytes(os.pread(fd, size, 0), secrets)
    cut = max((len(secret.encode()) for secret in secrets), default=0)
    head = os.pread(fd, EXCERPT_BYTES, 0)[:EXCERPT_BYTES - cut]
    end = os.pread(fd, EXCERPT_BYTES, size - EXCERPT_BYTES)[cut:]
    gap = f"\n[hpcpilot: {size - len(head) - len(end)} bytes left out here; {name} was " \
          f"{size} bytes, over max_stdout_mb]\n"
    return _redact_bytes(head, secrets) + gap.encode() + _redact_bytes(end, secrets)


def tail(scratch: Path, name: str, size: int) -> bytes:
    """The last ``size`` bytes of a file of scratch (b"" if it is not a regular file or cannot be read)."""
    return _read_in_scratch(scratch, name, lambda fd, length: os.pread(fd, size, max(0, length - size)))


def _read_in_scratch(scratch: Path, name: str, read: Callable[[int, int], bytes]) -> bytes:
    """What ``read(descriptor, size)`` takes of ``name`` of scratch, opened as ``_open_in_scratch`` opens it;
    b"" if it is not a regular file or cannot be read."""
    fd = _open_in_scratch(scratch, name)
    if fd is None:
        return b""
    try:
        status = os.fstat(fd)
        return read(fd, status.st_size) if stat.S_ISREG(status.st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def _open_in_scratch(scratch: Path, name: str) -> int | None:
    """``name`` of scratch opened for reading, through scratch itself, never through a link the payload put in
    its place nor waiting on a FIFO; None if it cannot be opened."""
    try:
        directory = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        finally:
            os.close(directory)
    except OSError:
        return None


def _redact_bytes(data: bytes, secrets: tuple[str, ...]) -> bytes:
    return redact(data.decode("utf-8", "surrogateescape"), secrets).encode("utf-8", "surrogateescape")


def _regular_members(scratch: Path, members: Iterable[str]) -> list[str]:
    """Members that are regular files of scratch itself: a payload's symlink, FIFO or device is skipped.

    The tarball goes out to storage: a symlink in it would carry a host path,
    and following it would carry the host file's content.
    """
    try:
        check_scratch_is_ours(scratch)
    except PilotError as error:
        log.warning("log tarball left empty: %s", error.diag)
        return []
    packable = []
    for name in members:
        try:
            mode = os.lstat(os.path.join(scratch, name)).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            packable.append(name)
        else:
            log.warning("%s in scratch is not a regular file; left out of the log tarball", name)
    return packable
