"""adler32 and md5 of files, computed while the bytes pass (copy and check in one read)."""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import BinaryIO

from .jobs import Checksum

CHUNK_SIZE = 4 * 1024 * 1024


class RunningChecksum:
    """Size, adler32 and (optionally) md5 of a byte stream fed in pieces."""

    def __init__(self, want_md5: bool = False):
        self.size = 0
        self._adler = 1
        self._md5 = hashlib.md5() if want_md5 else None

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._adler = zlib.adler32(data, self._adler)
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


def copy_with_checksum(source: Path, target: BinaryIO | None, want_md5: bool = False) -> RunningChecksum:
    """Copy ``source`` into the open ``target`` (None: read only), checksumming in the same pass."""
    running = RunningChecksum(want_md5)
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with open(source, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            running.update(view[:count])
            if target is not None:
                target.write(view[:count])
    return running


def file_checksum(path: Path, want_md5: bool = False) -> RunningChecksum:
    """Checksum a file without copying it."""
    return copy_with_checksum(path, None, want_md5)


class ChecksummingWriter:
    """A write-only file wrapper that checksums what passes through (for tarballs)."""

    def __init__(self, target: BinaryIO):
        self._target = target
        self.checksum = RunningChecksum()

    def write(self, data: bytes) -> int:
        self.checksum.update(data)
        return self._target.write(data)

    def flush(self) -> None:
        self._target.flush()


def matches(running: RunningChecksum, expected: Checksum | None) -> bool:
    return expected is None or running.value(expected.kind) == expected.value

