"""Keeping a job's secrets (values of pilotSecrets and configured fields) out of logs, reports and tarballs."""
from __future__ import annotations

import os
import stat
from pathlib import Path

REDACTED = "***"


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_files(scratch: Path, names: list[str], secrets: tuple[str, ...]) -> None:
    """Blank the job's secrets in files that go into the log tarball (line by line: stdout can be large).

    Only regular files right in scratch are rewritten, through a descriptor of
    scratch itself: what the payload left there (a symlink, a FIFO, its
    scratch replaced by a link) is never followed nor waited on.
    """
    if not secrets:
        return
    masks = [(secret.encode(), REDACTED.encode()) for secret in secrets]
    try:
        directory = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # no longer the pilot's directory: nothing in it goes into the tarball either
        return
    try:
        for name in names:
            _redact(directory, name, masks)
    finally:
        os.close(directory)


def _redact(directory: int, name: str, masks: list[tuple[bytes, bytes]]) -> None:
    try:
        source_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:  # not there, or a symlink
        return
    with open(source_fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source_fd).st_mode):
            return
        redacted = f".{name}.{os.urandom(6).hex()}.redacted"  # a fresh name nobody can have laid a trap at
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(redacted, flags, 0o644, dir_fd=directory), "wb") as target:
            for line in source:
                for secret, mask in masks:
                    line = line.replace(secret, mask)
                target.write(line)
    os.replace(redacted, name, src_dir_fd=directory, dst_dir_fd=directory)
