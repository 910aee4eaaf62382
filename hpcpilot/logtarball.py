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
        target.write(gzip.compress(ustar_header(arcname, len(content), time.time(), FILE_MODE)))
        target.write(gzip.compress(content + bytes(-len(content) % BLOCK)))
    target.write(gzip.compress(bytes(2 * BLOCK)))  # the end-of-archive marker
    target.write(gzip.flush())


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
        target.write(gzip.compress(ustar_header(arcname, status.st_size, status.st_mtime, status.st_mode)))
        remaining = status.st_size
        while remaining:  # exactly the size in the header, even if the file grows, shrinks or fails meanwhile
            chunk = _read_or_zeros(fd, min(READ_SIZE, remaining), arcname)
            target.write(gzip.compress(chunk))
            remaining -= len(chunk)
        target.write(gzip.compress(bytes(-status.st_size % BLOCK)))
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
    header = bytearray(BLOCK)
    header[0:len(encoded)] = encoded
    header[100:108] = _octal(stat.S_IMODE(mode) & MODE_BITS, 8)
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[124:136] = _octal(size, 12) if size < _OCTAL_SIZE_LIMIT else b"\x80" + size.to_bytes(11, "big")
    header[136:148] = _octal(min(max(0, int(mtime)), _LAST_MTIME), 12)
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)
