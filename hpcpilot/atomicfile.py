"""Atomic file publication: a reader sees the old file, the new file, or none, never half of one.

Every file Harvester reads goes through here. The JSON files it polls are
written to a hidden temp file in the same directory, flushed to disk, then
renamed into place; outputs and log tarballs, which it reads only once a
declaration names them, are written in place (``declared_later``).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .mounts import read_mounts

TEMP_PREFIX = ".hpcpilot-tmp-"
FILE_MODE = 0o644
READ_SIZE = 1 << 16
MAX_READ = 1 << 30  # a file others wrote that is larger is refused, not read into memory


class RawWriter:
    """Unbuffered writes straight to a file descriptor: no stat, no seek, one system call per write."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def flush(self) -> None:
        pass


def flush_to_disk(fd: int) -> None:
    """The file's bytes and size on disk before it is renamed or declared: ``fdatasync`` (what a reader needs,
    not the timestamps ``fsync`` also writes: a quarter less time per file here)."""
    os.fdatasync(fd)


def temp_path(path: Path | str) -> str:
    """A hidden, unique name beside ``path`` (Harvester never reads dot files). Plain strings: pathlib's
    objects cost several times the system call they name, on each file of each job."""
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, f"{TEMP_PREFIX}{os.urandom(6).hex()}.{name}")


@contextmanager
def _created(path: Path | str, mode: int = FILE_MODE) -> Iterator[RawWriter]:
    """A writer on a new file (never an existing one: O_EXCL), closed on exit; emptied if its writing fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        yield RawWriter(fd)
    except BaseException:
        empty_quietly(fd)
        raise
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, fsync: bool = True, mode: int = FILE_MODE) -> Iterator[RawWriter]:
    """Yield a writer; on a clean exit its content replaces ``path`` in one rename (a new file: ``mode`` less
    the umask)."""
    temp = temp_path(path)
    try:
        with _created(temp, mode) as handle:
            yield handle
            if fsync:
                flush_to_disk(handle.fd)
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(temp)
        raise


@contextmanager
def declared_later(path: Path, fsync: bool = True) -> Iterator[RawWriter]:
    """Yield a writer on ``path`` itself, emptied first: for files Harvester reads only once they are declared.

    No temp file and no rename (one metadata operation fewer on a shared
    filesystem): until its declaration nothing reads the file, so a partial
    one is harmless, and a failed write removes it. Whatever stands at
    ``path`` and is not a regular file (a symlink, a FIFO) is replaced, never
    written through.
    """
    fd = open_in_place(str(path))
    try:
        yield RawWriter(fd)
        if fsync:
            flush_to_disk(fd)
    except BaseException:
        empty_quietly(fd)
        _remove_quietly(str(path))
        raise
    finally:
        os.close(fd)


def open_in_place(name: str, mode: int = FILE_MODE) -> int:
    """``name`` opened for writing, emptied; a symlink or a FIFO standing there is replaced by a new file,
    never written through nor waited on."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(name, flags, mode)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO nobody reads
            raise
    os.unlink(name)
    return os.open(name, flags | os.O_EXCL, mode)


def json_bytes(content: Any) -> bytes:
    """Compact JSON: the C encoder does it (an ``indent`` would fall back to pure Python)."""
    return json.dumps(content, separators=(",", ":")).encode()


def write_json(path: Path, content: Any, fsync: bool = True) -> None:
    """Publish ``content`` as JSON at ``path`` atomically (three file operations: open, write, rename)."""
    data = json_bytes(content)
    with atomic_writer(path, fsync=fsync) as handle:
        handle.write(data)


def write_new(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to a file that must not exist yet (FileExistsError if it does): open and write only.

    For hidden files that nobody reads before the writer has finished with them.
    """
    try:
        with _created(path) as handle:
            handle.write(data)
            if fsync:
                flush_to_disk(handle.fd)
    except FileExistsError:
        raise
    except BaseException:  # never leave a part of it for a later reader to take for the whole
        _remove_quietly(str(path))
        raise


def rename_no_replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` in one step, never replacing a ``target`` already there (FileExistsError).

    renameat2(RENAME_NOREPLACE) where the filesystem has it; elsewhere (Lustre,
    NFS) a hard link then an unlink, which a crash may leave as two names of
    one file. A ``source`` another process renamed away between the two
    (Harvester taking a dump) is not moved: the link is taken back and
    FileNotFoundError raised, as renameat2 would.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(target))
    os.link(source, target)
    try:
        os.unlink(source)
    except FileNotFoundError:
        _remove_quietly(str(target))
        raise


def _libc_renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc 2.28+: the link fallback serves
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_renameat2 = _libc_renameat2()


def publish_json_if_absent(path: Path, content: Any) -> bool:
    """Publish ``content`` at ``path`` only if nothing is there; True if it was published.

    ``os.link`` fails when the target exists, so a file that a reader has not
    yet taken away is never replaced, even by a racing writer.
    """
    path = Path(path)
    if path.exists():
        return False
    temp = temp_path(path)
    try:
        write_new(temp, json_bytes(content))
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        _remove_quietly(temp)


def read_json(path: Path | str, limit: int = MAX_READ) -> Any:
    """JSON from a file others wrote; ValueError also for JSON nested too deeply to parse."""
    try:
        return json.loads(read_bytes(path, limit))
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None


def read_bytes(path: Path | str, limit: int = MAX_READ, short_read_is_end: bool = False) -> bytes:
    """The content of the regular file at ``path``; never waits on a FIFO or reads a device without end.

    Read to the end (a short read is not the end everywhere: FUSE, /proc),
    unless the caller knows the file's filesystem ends a read only at the end
    of the file (``short_read_is_end``); a file that is empty or longer than
    one read is first checked to be a regular file of at most ``limit`` bytes,
    so a file of usual size costs no stat.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # open() of a FIFO waits for a writer
    try:
        chunks, total = [_read(fd, path)], 0
        if len(chunks[0]) in (0, READ_SIZE):
            _check_regular_within(fd, path, limit)
        elif short_read_is_end:
            return chunks[0]
        while chunks[-1]:
            total += len(chunks[-1])
            if total > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
            chunks.append(_read(fd, path))
        return b"".join(chunks)
    finally:
        os.close(fd)


# Filesystems whose reads of a regular file fill the buffer up to the file's end (through the page cache or
# a client that loops until it has all): on them, a short read is the end. FUSE, which may hand on its
# daemon's short reads (direct_io), and procfs, which hands out a page at a time, are not among them.
FILLING_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay",
                                 "nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph"})


def short_read_is_end(path: Path | str) -> bool:
    """Whether a short read of a regular file on the filesystem of ``path`` means its end; False when unsure.

    The filesystem is the mount whose device is the one of ``path`` (one stat
    and one read of /proc/self/mountinfo, on the node, not on ``path``'s
    filesystem).
    """
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    wanted = f"{os.major(device)}:{os.minor(device)}"
    types = {mount.fstype for mount in read_mounts() if mount.device == wanted}
    return len(types) == 1 and types <= FILLING_FILESYSTEMS


def _check_regular_within(fd: int, path: Path | str, limit: int) -> None:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if status.st_size > limit:
        raise OSError(errno.EFBIG, f"{status.st_size} bytes, more than the {limit} allowed", str(path))


def _read(fd: int, path: Path | str) -> bytes:
    try:
        return os.read(fd, READ_SIZE)
    except OSError as error:  # named like open() names it: the file, not the descriptor
        raise type(error)(error.errno, error.strerror, str(path)) from None


def empty_quietly(fd: int) -> None:
    """Free a failed file's blocks now: removing it frees them only once no process has it open, and a
    process forked meanwhile (a payload's launch, in another thread) holds it until its exec; a full
    filesystem would stay full for the writes that follow at once (the log tarball, the declarations)."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
