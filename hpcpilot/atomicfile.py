"""Atomic file publication: a reader sees the old file, the new file, or none, never half of one.

Every file Harvester reads goes through here: written to a hidden temp file
in the same directory, flushed to disk, then renamed into place.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TEMP_PREFIX = ".hpcpilot-tmp-"
FILE_MODE = 0o644


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


def temp_path(path: Path) -> Path:
    """A hidden, unique name beside ``path`` (Harvester never reads dot files)."""
    return path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}.{path.name}"


@contextmanager
def _created(path: Path) -> Iterator[RawWriter]:
    """A writer on a new file (never an existing one: O_EXCL), closed on exit."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        yield RawWriter(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, fsync: bool = True) -> Iterator[RawWriter]:
    """Yield a writer; on a clean exit its content replaces ``path`` in one rename."""
    path = Path(path)
    temp = temp_path(path)
    try:
        with _created(temp) as handle:
            yield handle
            if fsync:
                os.fsync(handle.fd)
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(str(temp))
        raise


def write_json(path: Path, content: Any, fsync: bool = True) -> None:
    """Publish ``content`` as JSON at ``path`` atomically (three file operations: open, write, rename)."""
    data = json.dumps(content, indent=1, sort_keys=True).encode()
    with atomic_writer(path, fsync=fsync) as handle:
        handle.write(data)


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
        with _created(temp) as handle:
            handle.write(json.dumps(content, indent=1).encode())
            os.fsync(handle.fd)
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        _remove_quietly(str(temp))


def read_json(path: Path) -> Any:
    with open(path, "rb") as handle:
        return json.load(handle)


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
