"""Move files between filesystems the node sees, their size and checksum verified as the bytes pass.

What Harvester's preparator and stager plugins call the pilot's data API
for (``pilot.api.data``), for files this node can reach: from a shared
filesystem to node-local disk (``stage_in``) and back (``stage_out``).
Each file is copied by the kernel into a hidden temp file beside its
destination while the bytes are summed (adler32, and md5 when that is the
checksum expected); the temp file is flushed to disk and renamed into place
only when the size and checksum match. A reader of the destination sees the
old file or the new one, never part of one; a failed transfer removes its
temp file and leaves an existing destination as it was.

A Harvester-style preparator moving a job's inputs from the shared
filesystem to the node's disk::

    from hpcpilot.api.data import Transfer, stage_in

    transfers = [Transfer(source=f"/gpfs/atlas/rucio/{lfn}", destination=f"/local/{pandaid}/{lfn}",
                          size=fsize, checksum=checksum)   # checksum: "ad:0a1b2c3d", as in the job spec
                 for lfn, fsize, checksum in inputs]
    for result in stage_in(transfers, stop=stop_event):
        if not result.ok:
            log.error("%s: %d %s", result.transfer.source, result.error_code, result.error_diag)

Every transfer gets its result, in the order given: one file's failure
never stops the others. PanDA error codes:

===========================  ===============  ===============
failure                      stage_in         stage_out
===========================  ===============  ===============
source missing, not a        1099             1137
regular file, other errors
size differs                 1099             1137
adler32 differs              1171             1172
md5 differs                  1145             1141
over the time limit          1151             1152
no space left                1098             1137
checksum not ad:/md:/8 hex   1314             1314
stopped (``stop`` set)       1099             1137
===========================  ===============  ===============

Arguments: a ``Transfer`` takes ``str`` or ``Path``; a path that is empty
or holds a NUL byte, a ``size`` that is not an int >= 0, or a ``checksum`` that is neither a str nor a ``Checksum``
(what a parsed job definition holds: ``size=spec.fsize, checksum=spec.checksum``
for each ``spec`` of ``JobSpec.inputs``), raises ValueError when it is made
(a str that is no checksum fails its transfer with 1314). Anything in
``transfers`` that is not a Transfer raises TypeError before any file is
touched. A destination whose directory does not exist, and a source that is
the destination itself (the same path, a link to it or a hard link), are
failures of that one transfer (1099 / 1137), nothing written. A symlinked
source is followed, as ``cp`` does. The destination is created with mode
0644 (less the umask). ``Limits`` (re-exported here from hpcpilot.config)
sets each file's time limit: ``transfer_timeout_base`` + ``transfer_timeout_per_mb``
x its MiB, at most ``transfer_timeout_max`` seconds (PROTOCOL.md, section 5), checked between chunks; a copy
stuck in one system call (a hung filesystem) is given up on ``transfer_timeout_base`` seconds later, its thread
left behind and its copy never put in place.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..atomicfile import atomic_writer, flush_to_disk
from ..checksums import NEVER, Cancel, CopyCancelled, NotRegularFile, RunningChecksum, copy_into_with_checksum, \
    file_checksum, matches
from ..config import Limits
from ..errors import ErrorCode, PilotError
from ..jobs import Checksum, parse_checksum
from ..staging import (INPUT_MISMATCH_CODES, OUTPUT_MISMATCH_CODES, UNKNOWN_SIZE, TransferDeadline,
                       size_for_time_limit, stagein_error, stageout_error)

__all__ = ["Transfer", "TransferResult", "Limits", "stage_in", "stage_out", "adler32"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transfer:
    """One file to copy: ``destination`` is the file to create (its directory must exist). ``size`` (bytes) and
    ``checksum`` (``ad:<8 hex>``, ``md:<32 hex>`` or 8 bare hex digits, adler32) are checked when given. A
    parsed job definition's ``FileSpec.checksum`` (a ``Checksum``) is taken too, kept as its text."""

    source: Path
    destination: Path
    size: int | None = None
    checksum: str | Checksum | None = None  # a Checksum is kept as its text

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", checked_path(self.source, "Transfer: source"))
        object.__setattr__(self, "destination", checked_path(self.destination, "Transfer: destination"))
        if isinstance(self.checksum, Checksum):  # JobSpec.inputs[i].checksum
            object.__setattr__(self, "checksum", self.checksum.text)
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"Transfer of {self.source}: size {self.size!r} is not a number of bytes (int >= 0)")
        if self.checksum is not None and not isinstance(self.checksum, str):  # a bad str: that transfer's 1314
            raise ValueError(f"Transfer of {self.source}: checksum {self.checksum!r} is not a str (or a Checksum)")


def checked_path(value: Path | str, what: str) -> Path:
    """A path given to the API, refused (ValueError) at once when empty, which would mean the current directory,
    or holding a NUL byte, which would raise later, in the middle of the work (for Transfers: leaving those after
    it without a result)."""
    text = os.fspath(value)
    if not text or "\0" in text:
        raise ValueError(f"{what} {value!r} is not a path (empty, or with a NUL byte)")
    return Path(text)


@dataclass(frozen=True)
class TransferResult:
    """What became of one Transfer. ``size`` and ``adler32`` describe the bytes copied (also when they were
    refused for a wrong size or checksum); 0 and "" when no copy was completed."""

    transfer: Transfer
    size: int
    adler32: str
    error_code: int  # 0: success, else the PanDA error code
    error_diag: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error_code == ErrorCode.OK


@dataclass(frozen=True)
class _Direction:
    """The error codes and wording of one direction."""

    name: str
    failed: ErrorCode
    timeout: ErrorCode
    mismatch: Mapping[str, ErrorCode]
    copy_error: Callable[[Transfer, Path, OSError], PilotError]


def _stagein_copy_error(transfer: Transfer, source: Path, error: OSError) -> PilotError:
    return stagein_error(transfer.destination.name, source, error)


def _stageout_copy_error(transfer: Transfer, source: Path, error: OSError) -> PilotError:
    return stageout_error(transfer.destination.name, transfer.destination.parent, error)


_IN = _Direction("stage-in", ErrorCode.STAGEIN_FAILED, ErrorCode.STAGEIN_TIMEOUT, INPUT_MISMATCH_CODES,
                 _stagein_copy_error)
_OUT = _Direction("stage-out", ErrorCode.STAGEOUT_FAILED, ErrorCode.STAGEOUT_TIMEOUT, OUTPUT_MISMATCH_CODES,
                  _stageout_copy_error)

# What to do about a failure, by its code (the codes that mean one thing); appended to the diagnostic.
_ADVICE = {
    ErrorCode.NO_LOCAL_SPACE: "free space on the destination's filesystem, or choose another destination",
    ErrorCode.STAGEIN_TIMEOUT: "the filesystem is slow or the limit too short (Limits.transfer_timeout_*)",
    ErrorCode.STAGEOUT_TIMEOUT: "the filesystem is slow or the limit too short (Limits.transfer_timeout_*)",
    ErrorCode.UNKNOWN_CHECKSUM_TYPE: "give ad:<8 hex digits>, md:<32 hex digits> or 8 bare hex digits (adler32)",
    **{code: "the source is not the file expected: fetch it again, or correct the expected checksum"
       for code in (*INPUT_MISMATCH_CODES.values(), *OUTPUT_MISMATCH_CODES.values())},
}


def stage_in(transfers: Iterable[Transfer], stop: Cancel | None = None,
             limits: Limits | None = None) -> list[TransferResult]:
    """Copy each transfer's source to its destination with the stage-in error codes (1099, 1098, 1151, 1171,
    1145, 1314); one result per transfer, in order. ``stop`` (a threading.Event) set ends the copy in progress
    within a chunk and starts no other: those transfers fail with 1099, "stopped while / before copying".
    Each file may take ``limits.transfer_timeout(size)`` seconds (default ``Limits()``)."""
    return _transfer_all(transfers, _IN, stop, limits)


def stage_out(transfers: Iterable[Transfer], stop: Cancel | None = None,
              limits: Limits | None = None) -> list[TransferResult]:
    """As ``stage_in``, with the stage-out error codes (1137, 1152, 1172, 1141, 1314)."""
    return _transfer_all(transfers, _OUT, stop, limits)


def adler32(path: Path | str) -> str:
    """The adler32 of the file at ``path``: 8 lower-case hex digits. OSError if it cannot be read; a directory,
    FIFO or device is refused (NotRegularFile) without being read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFile(errno.EINVAL, f"{path} is not a regular file")
    return file_checksum(Path(path)).adler32


def _transfer_all(transfers: Iterable[Transfer], direction: _Direction, stop: Cancel | None,
                  limits: Limits | None) -> list[TransferResult]:
    if isinstance(transfers, Transfer):
        raise TypeError(f"{direction.name}: give a list of Transfers, e.g. [Transfer(...)], not one Transfer")
    transfers = list(transfers)
    for transfer in transfers:  # all checked before the first file is touched
        if not isinstance(transfer, Transfer):
            raise TypeError(f"{direction.name}: {transfer!r} is not a hpcpilot.api.data.Transfer")
    stop = NEVER if stop is None else stop
    limits = Limits() if limits is None else limits
    return [_transfer_in_time(transfer, direction, stop, limits) for transfer in transfers]


# Seconds a transfer is waited for at least: one under a limit of 0, or cancelled, ends at its chunk's end.
MIN_HANG_WAIT = 1.0


def _transfer_in_time(transfer: Transfer, direction: _Direction, stop: Cancel, limits: Limits) -> TransferResult:
    """``_transfer_one`` in a thread of its own, given up on once it outlasts its time limit by
    ``transfer_timeout_base`` (MIN_HANG_WAIT at least): the limit is checked between chunks, and a read that
    never returns (a hung filesystem) or takes minutes per chunk (a crawling one) would keep the caller for
    ever; so too once ``stop`` is set, MIN_HANG_WAIT later. The thread is left behind, cancelled: its copy is
    removed when its system call returns, never put in place (so too when the caller is interrupted, e.g. by
    KeyboardInterrupt)."""
    started = time.monotonic()
    size = UNKNOWN_SIZE if transfer.size is None else transfer.size  # no stat here: it could hang too
    allowance = max(limits.transfer_timeout(size) + limits.transfer_timeout(0), MIN_HANG_WAIT)
    abandoned, done = threading.Event(), threading.Event()  # done, not join(): an interrupted join forgets it
    outcome: list[TransferResult | BaseException] = []

    def transfer_one() -> None:
        try:
            outcome.append(_transfer_one(transfer, direction, _AnyOf(stop, abandoned), limits))
        except BaseException as error:  # raised in the caller's thread, as before
            outcome.append(error)
        finally:
            done.set()

    try:  # an interrupt may come while start() still waits for the thread, its copy already begun
        threading.Thread(target=transfer_one, name=f"{direction.name} of {transfer.source.name}", daemon=True).start()
        _wait(done, stop, allowance)
    except BaseException:  # interrupted (KeyboardInterrupt): the copy ends within its chunk, its temp file removed
        abandoned.set()
        done.wait(MIN_HANG_WAIT)
        raise
    if not outcome:
        abandoned.set()
        return _hung(transfer, direction, started, allowance, stop.is_set())
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


STOP_POLL = 0.1  # seconds between looks at the caller's stop while a transfer runs


def _wait(done: threading.Event, stop: Cancel, allowance: float) -> None:
    """Until ``done`` is set, for ``allowance`` seconds at most, or for MIN_HANG_WAIT once ``stop`` is set: a
    stopped copy ends within its chunk, and one stuck in a system call must not keep the caller past the stop."""
    give_up = time.monotonic() + allowance
    while not done.wait(STOP_POLL):
        now = time.monotonic()
        if stop.is_set():
            give_up = min(give_up, now + MIN_HANG_WAIT)
        if now >= give_up:
            return


class _AnyOf:
    """A Cancel set once any of its own is."""

    def __init__(self, *cancels: Cancel):
        self.cancels = cancels

    def is_set(self) -> bool:
        return any(cancel.is_set() for cancel in self.cancels)


def _hung(transfer: Transfer, direction: _Direction, started: float, allowance: float,
          stopped: bool) -> TransferResult:
    """The result of a transfer given up on: stopped (its code as any stopped copy's), else past its time limit."""
    waited = f"{time.monotonic() - started:.0f} s" if stopped else f"{allowance:.0f} s, past its time limit"
    diag = (f"{direction.name} of {transfer.source}: no answer from the filesystem after {waited} (a system call "
            "that does not return: a hung filesystem); the copy is abandoned, never put in place; " +
            ("stopped while copying; transfer it again" if stopped else _ADVICE[direction.timeout]))
    log.warning("%s", diag)
    return _result(transfer, None, started, direction.failed if stopped else direction.timeout, diag)


class _Refused(PilotError):
    """The copy completed, and was refused for its size or checksum: ``copied`` is what was copied."""

    def __init__(self, code: ErrorCode, diag: str, copied: RunningChecksum):
        super().__init__(code, diag)
        self.copied = copied


def _transfer_one(transfer: Transfer, direction: _Direction, stop: Cancel, limits: Limits) -> TransferResult:
    started = time.monotonic()
    try:
        expected = _expected_checksum(transfer)
        source = _source_path(transfer, direction)
        if stop.is_set():
            raise PilotError(direction.failed, f"{direction.name} of {transfer.source}: stopped before copying; "
                             "transfer it again")
        deadline = TransferDeadline(stop, limits.transfer_timeout(size_for_time_limit(transfer.size, source)))
        copied = _copy(transfer, source, expected, direction, deadline)
    except PilotError as error:
        diag = f"{error.diag}; {_ADVICE[error.code]}" if error.code in _ADVICE else error.diag
        # info, not a warning: the result carries it, for the caller to judge
        log.info("%s of %s to %s failed: %s", direction.name, transfer.source, transfer.destination, diag)
        return _result(transfer, error.copied if isinstance(error, _Refused) else None, started, error.code, diag)
    log.info("%s of %s to %s: %d bytes, adler32 %s", direction.name, transfer.source, transfer.destination,
             copied.size, copied.adler32)
    return _result(transfer, copied, started, ErrorCode.OK, "")


def _result(transfer: Transfer, copied: RunningChecksum | None, started: float, code: int,
            diag: str) -> TransferResult:
    size, adler = (copied.size, copied.adler32) if copied else (0, "")
    return TransferResult(transfer, size, adler, int(code), diag, time.monotonic() - started)


def _expected_checksum(transfer: Transfer) -> Checksum | None:
    if transfer.checksum is None:
        return None
    try:
        return parse_checksum(transfer.checksum)
    except PilotError as error:  # its wording is the job definition's: say it for this transfer
        raise PilotError(error.code, f"checksum {transfer.checksum!r} of {transfer.source} is not one hpcpilot "
                         "knows") from None


def _source_path(transfer: Transfer, direction: _Direction) -> Path:
    """The source, through its symlinks (the copy opens no symlink); refused when it is the destination."""
    source = Path(os.path.realpath(transfer.source))
    if not transfer.destination.parent.is_dir():
        raise PilotError(direction.failed, f"{direction.name} of {transfer.source}: the destination's directory "
                         f"{transfer.destination.parent} does not exist; create it first")
    try:
        same = os.path.samefile(source, transfer.destination)
    except OSError:  # one of them is not there: not the same file
        same = False
    if same:
        raise PilotError(direction.failed, f"{direction.name} of {transfer.source}: the destination "
                         f"{transfer.destination} is the source itself; nothing copied")
    return source


def _copy(transfer: Transfer, source: Path, expected: Checksum | None, direction: _Direction,
          deadline: TransferDeadline) -> RunningChecksum:
    """Copy into a temp file beside the destination; verify and flush it; look at the deadline last, so that a
    caller given up on meanwhile never sees it appear; rename it into place. Any failure (raised as
    PilotError) removes the temp file."""
    what = f"{direction.name} of {transfer.source}"
    try:
        with atomic_writer(transfer.destination, fsync=False) as handle:
            running = copy_into_with_checksum(source, handle.fd, expected is not None and expected.kind == "md5",
                                              deadline)
            _verify(transfer, running, expected, direction)
            flush_to_disk(handle.fd)  # before the last look at the deadline: a flush can take long on a busy disk
            if deadline.is_set():  # its caller may have given up on it already: never put it in place then
                raise CopyCancelled(f"{what}: ended past its time limit, or stopped")
    except CopyCancelled:
        cancelled = deadline.cancelled(direction.timeout, what)
        if isinstance(cancelled, CopyCancelled):  # the stop, not the time limit
            raise PilotError(direction.failed, f"{what}: stopped while copying; transfer it again") from None
        raise cancelled from None
    except OSError as error:
        raise direction.copy_error(transfer, source, error) from None
    return running


def _verify(transfer: Transfer, running: RunningChecksum, expected: Checksum | None, direction: _Direction) -> None:
    if transfer.size is not None and running.size != transfer.size:
        raise _Refused(direction.failed, f"{direction.name} of {transfer.source}: size {running.size} differs "
                       f"from the expected {transfer.size}; the source is not the file expected: fetch it "
                       "again, or correct the expected size", running)
    if not matches(running, expected):
        assert expected is not None
        raise _Refused(direction.mismatch[expected.kind], f"{direction.name} of {transfer.source}: {expected.kind} "
                       f"{running.value(expected.kind)} differs from the expected {expected.value}", running)
