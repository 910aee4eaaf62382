"""Atomic file publication: a reader sees the old file, the new file, or none, never half of one.

Every file Harvester reads goes through here: written to a hidden temp file
in the same directory, flushed to disk, then renamed into place.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TEMP_PREFIX = ".hpcpilot-tmp-"
FILE_MODE = 0o644


@contextmanager
def atomic_writer(path: Path, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """Yield a file object; on a clean exit its content replaces ``path`` in one rename."""
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix="." + path.name, dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        _remove_quietly(temp_name)
        raise


def write_json(path: Path, content: Any, fsync: bool = True) -> None:
    """Publish ``content`` as JSON at ``path`` atomically."""
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
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix="." + path.name, dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(content, indent=1).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp_name, path)
        return True
    except FileExistsError:
        return False
    finally:
        _remove_quietly(temp_name)


def read_json(path: Path) -> Any:
    with open(path, "rb") as handle:
        return json.load(handle)


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
