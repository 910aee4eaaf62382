"""adler32 and md5 of files, computed while the bytes pass.

Two ways to copy and check: ``copy_with_checksum`` reads into Python and
writes what it summed (any target object); the kernel copies
(``copy_files_with_checksums``, ``copy_into_with_checksum``) let a copier
thread move the bytes with ``copy_file_range`` (``sendfile``, then read and
write, where the filesystems refuse it) while the calling thread checksums
each copied range right behind it. ``copy_file_range`` and ``adler32``
both release the GIL, so on two cores the copy and the checksum overlap.
adler32 comes from zlib-ng where it is installed (SIMD, about four times
zlib's speed, which would otherwise bound a verified copy), else zlib.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import queue
import stat
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Protocol

from .atomicfile import RawWriter
from .jobs import Checksum

try:
    from zlib_ng.zlib_ng import adler32
except ImportError:  # the same sums, slower
    from zlib import adler32

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 * 1024 * 1024
KERNEL_CHUNK_SIZE = 4 * 1024 * 1024  # one hand-over from the copier to the checksummer
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the pages in with the mapping, not one by one
_LOOKAHEAD = 16  # hand-overs the copier may run ahead of the checksummer
READ_BACK_MIN = 64 * 1024  # the smallest buffer for reading a copy back (a file may grow while it is copied)
# What copy_file_range / sendfile answer when the pair of filesystems (or the kernel) does not support them.
_UNSUPPORTED = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF})


class Cancel(Protocol):
    """What ends a copy between two chunks once set: a threading.Event, or anything as cheap to ask."""

    def is_set(self) -> bool: ...


NEVER: Cancel = threading.Event()  # the ``cancel`` of a copy nothing cancels (never set)


class CopyCancelled(Exception):
    """The copy was cancelled (its ``cancel`` event was set) between two chunks; the partial target is removed."""


class RunningChecksum:
    """Size, adler32 and (optionally) md5 of a byte stream fed in pieces."""

    def __init__(self, want_md5: bool = False):
        self.size = 0
        self._adler = 1
        self._md5 = hashlib.md5() if want_md5 else None

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._adler = adler32(data, self._adler)
        if self._md5 is not None:
            self._md5.update(data)

    @property
    def adler32(self) -> str:
        return f"{self._adler & 0xFFFFFFFF:08x}"

    @property
    def md5(self) -> str:
        assert self._md5 is not None, "md5 was not requested"
        return self._md5.hexdigest()

    def value(self, kind: str) -> str:
        return self.md5 if kind == "md5" else self.adler32


def copy_with_checksum(source: Path, target: BinaryIO | None, want_md5: bool = False,
                       cancel: Cancel = NEVER) -> RunningChecksum:
    """Copy ``source`` into the open ``target`` (None: read only), checksumming in the same pass; ``cancel``
    set ends it (CopyCancelled) after the chunk being read."""
    with open(source, "rb", buffering=0) as handle:
        return _copy_from(handle, target, want_md5, cancel)


def _copy_from(handle: BinaryIO, target: BinaryIO | None, want_md5: bool,
               cancel: Cancel = NEVER) -> RunningChecksum:
    running = RunningChecksum(want_md5)
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):
        if cancel.is_set():
            raise CopyCancelled(f"cancelled after {running.size} bytes")
        running.update(view[:count])
        if target is not None:
            target.write(view[:count])
    return running


def file_checksum(path: Path, want_md5: bool = False, cancel: Cancel = NEVER) -> RunningChecksum:
    """Checksum a file without copying it."""
    return copy_with_checksum(path, None, want_md5, cancel)


class ChecksummingWriter:
    """A write-only file wrapper that checksums what passes through (for tarballs).

    Small writes gather in a buffer: a small tarball reaches the file in one
    write. ``flush`` once the last byte is in.
    """

    def __init__(self, target: BinaryIO, buffer_size: int = CHUNK_SIZE):
        self._target = target
        self._buffer = bytearray()
        self._buffer_size = buffer_size
        self.checksum = RunningChecksum()

    def write(self, data: bytes) -> int:
        self.checksum.update(data)
        self._buffer += data
        if len(self._buffer) >= self._buffer_size:
            self._write_buffer()
        return len(data)

    def flush(self) -> None:
        self._write_buffer()
        self._target.flush()

    def _write_buffer(self) -> None:
        if self._buffer:
            self._target.write(self._buffer)
            self._buffer = bytearray()


def matches(running: RunningChecksum, expected: Checksum | None) -> bool:
    return expected is None or running.value(expected.kind) == expected.value



# ---------------------------------------------------------------- kernel copies


class KernelCopy:
    """Copies from one descriptor to another at their file positions, by the fastest call the kernel accepts."""

    def __init__(self, source_fd: int, target_fd: int, source_size: int | None = None):
        """``source_size``: the size expected (e.g. declared); the source is asked only when it matters."""
        self._source, self._target = source_fd, target_fd
        self._expected = source_size
        self._checked_regular = False
        # Functions, not bound methods: a list of its own bound methods would make each KernelCopy a reference
        # cycle, left for the cyclic collector (one per file copied, piling up between full collections).
        self._methods = [KernelCopy._copy_file_range, KernelCopy._sendfile, KernelCopy._read_write]
        self._buffer: bytearray | None = None
        self.copied = 0

    def chunk(self, count: int) -> int:
        """Copy up to ``count`` bytes; 0 at the end of the source. A source that is no regular file (which
        the kernel copy refuses) raises NotRegularFile: read by the fallbacks, a device may never end."""
        while True:
            try:
                done = self._methods[0](self, count)
            except OSError as error:
                self._refuse_unless_regular()
                if error.errno not in _UNSUPPORTED or len(self._methods) == 1:
                    raise
                self._fall_back(error.strerror)
                continue
            if done == 0 and len(self._methods) > 1 and self.copied < self._expected_size():
                self._fall_back("no progress before the end")  # some filesystems answer 0 rather than an error
                continue
            self.copied += done
            return done

    def _expected_size(self) -> int:
        if self._expected is None:
            self._expected = os.fstat(self._source).st_size
        return self._expected

    def _refuse_unless_regular(self) -> None:
        if self._checked_regular:
            return
        try:
            regular = stat.S_ISREG(os.fstat(self._source).st_mode)
        except OSError:
            return  # the error that brought us here says more
        if not regular:
            raise NotRegularFile(errno.EINVAL, "not a regular file")
        self._checked_regular = True

    def _fall_back(self, why: str) -> None:
        self._refuse_unless_regular()
        log.debug("%s refused (%s); falling back to %s", self._methods[0].__name__, why, self._methods[1].__name__)
        self._methods.pop(0)

    def _copy_file_range(self, count: int) -> int:
        return os.copy_file_range(self._source, self._target, count)

    def _sendfile(self, count: int) -> int:
        return os.sendfile(self._target, self._source, None, count)

    def _read_write(self, count: int) -> int:
        if self._buffer is None or len(self._buffer) < count:
            self._buffer = bytearray(count)
        view = memoryview(self._buffer)[:count]
        done = os.readv(self._source, [view])
        written = 0
        while written < done:
            written += os.write(self._target, view[written:done])
        return done


def checksum_range(fd: int, offset: int, count: int, running: RunningChecksum, buffer: bytearray) -> None:
    """Feed bytes ``offset`` .. ``offset + count`` of ``fd`` to ``running`` (by pread: fd's offset stays)."""
    view = memoryview(buffer)
    while count:
        done = os.preadv(fd, [view[:min(count, len(buffer))]], offset)
        if done == 0:
            raise OSError(errno.EIO, f"{count} copied bytes at offset {offset} could not be read back")
        running.update(view[:done])
        offset, count = offset + done, count - done


def checksum_mapped_range(fd: int, offset: int, count: int, running: RunningChecksum) -> None:
    """``checksum_range`` through a read-only mapping: no copy into Python, the page cache is summed in place.

    Only for files nobody truncates meanwhile (a mapped page past the end
    would be a SIGBUS): the copies this module has just made.
    """
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, offset + count - start, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ,
                   offset=start) as mapping:
        with memoryview(mapping)[offset - start:] as piece:
            running.update(piece)


@dataclass(frozen=True)
class CopyOrder:
    """One file for ``copy_files_with_checksums``: ``target`` must not exist yet. ``cancel`` set ends its copy
    (and those after it) after the current chunk."""

    source: Path
    target: Path
    want_md5: bool = False
    size: int | None = None  # as declared: spares a stat of the source on a shared filesystem
    cancel: Cancel = NEVER


class CopyFailed(Exception):
    """Copying ``order`` failed with ``error``; the partial target, if any, has been removed."""

    def __init__(self, order: CopyOrder, error: OSError):
        super().__init__(f"cannot copy {order.source} to {order.target}: {error}")
        self.order, self.error = order, error


@dataclass
class _Started:
    """The copier created ``order.target``; ``read_fd`` (the checksummer's to close) reads it back."""

    order: CopyOrder
    read_fd: int


@dataclass
class _Copied:
    offset: int
    count: int


@dataclass
class _Finished:
    order: CopyOrder


@dataclass
class _Failed:
    error: BaseException


def copy_files_with_checksums(orders: Iterable[CopyOrder], in_thread: bool = True) -> Iterator[RunningChecksum]:
    """Copy every order's source to its new target; yield, in order, each target's checksum.

    The copier thread copies by kernel calls and runs at most a few chunks
    ahead; this generator checksums each range of the *target* once it has
    been copied, so the sum is of the bytes that landed. An error (from the
    copy as ``CopyFailed``, or raised by ``orders`` itself) is raised at its
    place in the order, after every earlier file was yielded. When the
    consumer stops early, the targets it was not given are removed.
    ``in_thread=False`` copies everything first, then checksums: for small
    files, where a thread costs more than the overlap gains. An order's
    ``cancel`` set (e.g. by the rank's stop, or its time limit) ends its copy
    after the current chunk: the partial target is removed and CopyCancelled
    raised in its place. The orders are taken one by one as the copier
    reaches them: an order made by a generator is made as its copy begins.
    """
    stop = threading.Event()
    messages, copier = _start_copier(_copier, (iter(orders),), stop, in_thread)
    reading: _Started | None = None
    running = RunningChecksum()
    message: object = "not yet"
    try:
        while (message := messages.get()) is not None:
            if isinstance(message, _Started):
                reading, running = message, RunningChecksum(message.order.want_md5)
            elif isinstance(message, _Copied):
                assert reading is not None
                checksum_mapped_range(reading.read_fd, message.offset, message.count, running)
            elif isinstance(message, _Finished):
                assert reading is not None
                os.close(reading.read_fd)
                reading = None
                yield running
            else:
                raise message.error
    finally:
        stop.set()
        if message is not None:  # the copier has not ended yet
            _abandon(messages, reading)
        if copier is not None:
            copier.join()


class _Replay:
    """The copier's messages in order, when it ran to the end before the checksummer starts."""

    def __init__(self) -> None:
        self._messages: deque = deque()

    def put(self, message: object) -> None:
        self._messages.append(message)

    def get(self) -> object:
        return self._messages.popleft()


def _start_copier(copier: Callable[..., None], args: tuple, stop: threading.Event,
                  in_thread: bool) -> tuple[Any, threading.Thread | None]:
    """The copier running in its own thread (a bounded queue between them), or already run to its end."""
    if not in_thread:
        replay = _Replay()
        copier(*args, replay, stop)
        return replay, None
    messages: queue.Queue = queue.Queue(maxsize=_LOOKAHEAD)
    thread = threading.Thread(target=copier, args=(*args, messages, stop), name="checksummed-copy", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread to be had (a payload took every process its user may have): copy here
        return _start_copier(copier, args, stop, in_thread=False)
    return messages, thread


def _abandon(messages: queue.Queue, reading: _Started | None) -> None:
    """Let the copier end; remove the targets nobody verified (the partial one the copier removes itself)."""
    while True:
        if reading is not None:
            os.close(reading.read_fd)
            reading.order.target.unlink(missing_ok=True)
            reading = None
        message = messages.get()
        if message is None:
            return
        if isinstance(message, _Started):
            reading = message


class _Stopped(Exception):
    """The checksummer gave up: the copier stops after its current chunk."""


def _copier(orders: Iterator[CopyOrder], messages: queue.Queue, stop: threading.Event) -> None:
    try:
        for order in orders:  # the iterator may raise (a replica that is not there): in order, like a copy error
            if stop.is_set() or order.cancel.is_set():
                raise _Stopped()
            _copy_one(order, messages, stop)
    except _Stopped:
        if not stop.is_set():  # cancelled, while the checksummer still waits: it raises this in its thread
            messages.put(_Failed(CopyCancelled("cancelled")))
    except BaseException as error:  # handed to the checksummer, which raises it in its own thread
        messages.put(_Failed(error))
    finally:
        messages.put(None)


def _copy_one(order: CopyOrder, messages: queue.Queue, stop: threading.Event) -> None:
    try:  # without blocking: opening a FIFO would wait for a writer (the copy refuses it)
        source_fd = os.open(order.source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CopyFailed(order, error) from None
    try:
        target_fd = os.open(order.target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as error:
        os.close(source_fd)
        raise CopyFailed(order, error) from None
    try:
        messages.put(_Started(order, os.dup(target_fd)))
        _copy_chunks(KernelCopy(source_fd, target_fd, order.size), messages, stop, order.cancel)
    except BaseException as error:
        order.target.unlink(missing_ok=True)  # a partial copy goes at once: a full disk frees up for the others
        if isinstance(error, OSError):
            raise CopyFailed(order, error) from None
        raise
    finally:
        _close_read_only(source_fd)
        os.close(target_fd)
    messages.put(_Finished(order))


def _close_read_only(fd: int) -> None:
    """Close a descriptor only read from: its close may fail (ENOTCONN once a FUSE server is gone) and loses
    nothing then; its error must not replace the copy's own, nor keep the target's descriptor open."""
    try:
        os.close(fd)
    except OSError:
        pass


class NotRegularFile(OSError):
    """A copy source that is a directory, FIFO, socket or device."""


def _copy_chunks(copy: KernelCopy, messages: queue.Queue, stop: threading.Event, cancel: Cancel = NEVER) -> None:
    while not (stop.is_set() or cancel.is_set()):
        offset = copy.copied
        count = copy.chunk(KERNEL_CHUNK_SIZE)
        if count == 0:
            return
        messages.put(_Copied(offset, count))
    raise _Stopped()


def copy_into_with_checksum(source: Path, target_fd: int, want_md5: bool = False,
                            cancel: Cancel = NEVER) -> RunningChecksum:
    """Copy ``source`` (a file nobody else writes) into ``target_fd`` by kernel calls, checksumming the source.

    The sum is read from the source right behind the copy; if the source
    changed meanwhile, the copy is redone through Python, where the bytes
    summed and the bytes written are the same by construction. The source is
    opened once, never through a symlink nor waiting on a FIFO, and must be a
    regular file: a payload may swap what stands at its name between the
    pilot's check and its copy. ``cancel`` set ends the copy (CopyCancelled)
    after the current chunk; the partial target is the caller's to remove.
    """
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    _refuse_unless_regular(fd, source)  # before open(), which refuses a directory less tellingly
    with open(fd, "rb", buffering=0) as handle:
        before = _identity(fd)
        try:
            running = _kernel_copy_checksumming_source(fd, target_fd, want_md5, before[0], cancel)
            if _identity(fd) == before:
                return running
        except OSError:
            if _identity(fd) == before:  # not a source cut short under the read-back (EIO): a real failure
                raise
        log.warning("%s changed while it was copied; copying it again", source)
        os.ftruncate(target_fd, 0)
        os.lseek(target_fd, 0, os.SEEK_SET)
        handle.seek(0)
        return _copy_from(handle, RawWriter(target_fd), want_md5, cancel)


def _refuse_unless_regular(fd: int, source: Path) -> None:
    """NotRegularFile (``fd`` closed) unless ``fd`` is a regular file."""
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, f"{source} is not a regular file")


def _identity(fd: int) -> tuple[int, int, int]:
    status = os.fstat(fd)
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _kernel_copy_checksumming_source(source_fd: int, target_fd: int, want_md5: bool, size: int,
                                     cancel: Cancel) -> RunningChecksum:
    stop = threading.Event()
    failure: list[BaseException] = []
    copy = KernelCopy(source_fd, target_fd, size)

    def copy_all(ranges: Any, stop: threading.Event) -> None:
        try:
            _copy_chunks(copy, ranges, stop, cancel)
        except _Stopped:
            if not stop.is_set():  # cancelled, not abandoned by the checksummer: the copy is incomplete
                failure.append(CopyCancelled(f"cancelled after {copy.copied} bytes"))
        except BaseException as error:
            failure.append(error)
        finally:
            ranges.put(None)

    ranges, copier = _start_copier(copy_all, (), stop, in_thread=size > KERNEL_CHUNK_SIZE)  # one chunk: no overlap
    running, buffer = RunningChecksum(want_md5), bytearray(min(KERNEL_CHUNK_SIZE, max(size, READ_BACK_MIN)))
    copied: object = "not yet"
    try:
        while (copied := ranges.get()) is not None:
            checksum_range(source_fd, copied.offset, copied.count, running, buffer)
    finally:
        stop.set()
        while copied is not None:
            copied = ranges.get()
        if copier is not None:
            copier.join()
    if failure:
        raise failure[0]
    return running
