"""The job's log tarball: a gzip-compressed ustar archive of a few regular files, streamed in one pass.

``tarfile`` costs more per member than the bytes of a short job's logs do;
this writes the same format with one header per member and one zlib stream.
Files are packed only if regular, opened without following a symlink; texts
the pilot holds in memory go in as they are.
"""
from __future__ import annotations

import logging
import os
import stat
import time
import zlib
from typing import BinaryIO, Iterable

log = logging.getLogger(__name__)

BLOCK = 512
READ_SIZE = 1 << 20
FILE_MODE = 0o644  # of members from memory
MODE_BITS = 0o755  # what a member keeps of its file's mode: never setuid/setgid, never writable by others
_OCTAL_SIZE_LIMIT = 8 ** 11  # bigger sizes take the base-256 form GNU tar and Python read
_LAST_MTIME = 8 ** 11 - 1  # the latest time 11 octal digits hold (year 4147); a later one is clamped


class TarballError(OSError):
    """A member cannot be described in a tar header."""


def write_tarball(target: BinaryIO, members: Iterable[tuple[str, str]], level: int = 6,
                  in_memory: Iterable[tuple[str, bytes]] = ()) -> None:
    """Write ``members`` ((path on disk, name in the archive) pairs), then ``in_memory`` ((name in the archive,
    content) pairs), to ``target`` as a .tar.gz."""
    gzip = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: with the gzip header and trailer
    for path, arcname in members:
        _add(gzip, target, path, arcname)
    for arcname, content in in_memory:
        header = ustar_header(arcname, len(content), time.time(), FILE_MODE)
        _pack(gzip, target, header + content + bytes(-len(content) % BLOCK))
    _pack(gzip, target, bytes(2 * BLOCK))  # the end-of-archive marker
    target.write(gzip.flush())


def _pack(gzip: zlib._Compress, target: BinaryIO, data: bytes) -> None:
    """Compress ``data`` into ``target``. zlib mostly keeps small pieces until a later one or the flush: an
    empty result is not written (the compressed stream does not depend on how its input was cut)."""
    compressed = gzip.compress(data)
    if compressed:
        target.write(compressed)


def _add(gzip: zlib._Compress, target: BinaryIO, path: str, arcname: str) -> None:
    """One regular file; one the pilot cannot open (the payload may have made it unreadable) is left out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        log.warning("%s left out of the log tarball: %s", arcname, error.strerror)
        return
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return
        _pack(gzip, target, ustar_header(arcname, status.st_size, status.st_mtime, status.st_mode))
        remaining = status.st_size
        while remaining:  # exactly the size in the header, even if the file grows, shrinks or fails meanwhile
            chunk = _read_or_zeros(fd, min(READ_SIZE, remaining), arcname)
            _pack(gzip, target, chunk)
            remaining -= len(chunk)
        _pack(gzip, target, bytes(-status.st_size % BLOCK))
    finally:
        os.close(fd)


def _read_or_zeros(fd: int, count: int, arcname: str) -> bytes:
    """The next bytes of the file; zeros where it ended early or cannot be read (its header is written)."""
    try:
        return os.read(fd, count) or bytes(count)
    except OSError as error:
        log.warning("%s: cannot be read to its end, zeros stand for the rest: %s", arcname, error.strerror)
        return bytes(count)


def ustar_header(name: str, size: int, mtime: float, mode: int) -> bytes:
    """The 512-byte POSIX ustar header of a regular file owned by nobody in particular."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise TarballError(f"member name {name!r} is longer than 100 bytes")
    size_field = _octal(size, 12) if size < _OCTAL_SIZE_LIMIT else b"\x80" + size.to_bytes(11, "big")
    before = b"".join((encoded.ljust(100, b"\0"), _octal(stat.S_IMODE(mode) & MODE_BITS, 8), _OWNER_IDS,
                       size_field, _octal(min(max(0, int(mtime)), _LAST_MTIME), 12)))
    # the checksum counts its own field as 8 spaces, and what follows the magic is all zeros
    checksum = sum(before) + _CHECKSUM_OF_SPACES_AND_MAGIC
    return b"".join((before, b"%06o\x00 " % checksum, _TYPE_LINK_AND_MAGIC, _ZEROS_AFTER_MAGIC))


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


_OWNER_IDS = _octal(0, 8) * 2  # uid, gid
_TYPE_LINK_AND_MAGIC = b"0" + bytes(100) + b"ustar\x0000"  # regular file, no link name, POSIX ustar
_CHECKSUM_OF_SPACES_AND_MAGIC = 8 * ord(" ") + sum(_TYPE_LINK_AND_MAGIC)
_ZEROS_AFTER_MAGIC = bytes(BLOCK - 265)  # owner and group names, device numbers, name prefix: unused
