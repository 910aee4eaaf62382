"""Keeping a job's secrets (values of pilotSecrets and configured fields) out of logs, reports and tarballs."""
from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .errors import storable_diag

log = logging.getLogger(__name__)

REDACTED = "***"
CHUNK = 1 << 20  # what redaction holds in memory, however long the payload's lines


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def for_panda(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` as it may go to PanDA: its secrets blanked, each character PanDA cannot store replaced
    (``storable_diag``)."""
    return storable_diag(redact(text, secrets))


def rewrite_json(value: Any, rewrite: Callable[[str], str], numbers: bool = True) -> Any:
    """Decoded JSON with ``rewrite`` applied to every string and key, at any depth; a number whose text it
    would change (a secret's digits) becomes REDACTED. ``numbers`` False: ``rewrite`` never changes a number's
    text (no secrets to blank), and numbers go as they are, without each one turned into text."""
    # Loops, not comprehensions: a comprehension is a call of its own, and two calls a level reached the
    # recursion limit at half the depth json.loads reads.
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        rewritten = {}
        for key, item in value.items():
            rewritten[rewrite(key)] = rewrite_json(item, rewrite, numbers)
        return rewritten
    if isinstance(value, list):
        items = []
        for item in value:
            items.append(rewrite_json(item, rewrite, numbers))
        return items
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool) and \
            rewrite(str(value)) != str(value):
        return REDACTED
    return value


def redact_files(scratch: Path, names: list[str], secrets: tuple[str, ...]) -> None:
    """Blank the job's secrets in files that go into the log tarball (in chunks: stdout can be large, and a
    secret such as a PEM key can span lines).

    Only regular files right in scratch are rewritten, through a descriptor of
    scratch itself: what the payload left there (a symlink, a FIFO, its
    scratch replaced by a link) is never followed nor waited on.
    """
    if not secrets:
        return
    encoded = [secret.encode() for secret in secrets]
    try:
        directory = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # no longer the pilot's directory: nothing in it goes into the tarball either
        return
    try:
        for name in names:
            _redact_or_remove(directory, name, encoded)
    finally:
        os.close(directory)


def _redact_or_remove(directory: int, name: str, secrets: list[bytes]) -> None:
    """A file that cannot be redacted (its blanked copy meets a full scratch, say) must not go out as it is:
    it is removed, and the log tarball goes without it."""
    redacted = f".{name}.{os.urandom(6).hex()}.redacted"  # a fresh name nobody can have laid a trap at
    try:
        _redact(directory, name, redacted, secrets)
    except OSError as error:
        log.warning("cannot blank the job's secrets in %s (%s): left out of the log tarball", name, error.strerror)
        for leftover in (redacted, name):
            try:
                os.unlink(leftover, dir_fd=directory)
            except OSError:
                pass


def _redact(directory: int, name: str, redacted: str, secrets: list[bytes]) -> None:
    try:
        source_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:  # not there, or a symlink
        return
    if not stat.S_ISREG(os.fstat(source_fd).st_mode):  # a directory, a FIFO: never packed either
        os.close(source_fd)
        return
    with open(source_fd, "rb") as source:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(redacted, flags, 0o644, dir_fd=directory), "wb") as target:
            copy_redacted(source, target, secrets)
    os.replace(redacted, name, src_dir_fd=directory, dst_dir_fd=directory)


def copy_redacted(source: BinaryIO, target: BinaryIO, secrets: list[bytes], chunk_size: int = CHUNK) -> None:
    """Copy with every secret masked (the longest first where they overlap), as if the file were one string.

    A secret starting in a chunk's last ``longest - 1`` bytes may end in the
    next chunk, so that tail is carried over and searched again; a secret
    starting before it lies whole in the chunk.
    """
    ordered = sorted(secrets, key=len, reverse=True)
    pattern = re.compile(b"|".join(re.escape(secret) for secret in ordered))
    longest, mask = len(ordered[0]), REDACTED.encode()
    carried = b""
    while chunk := source.read(chunk_size):
        data = carried + chunk
        safe = len(data) - (longest - 1)
        written = 0
        for match in pattern.finditer(data):
            if match.start() >= safe:
                break
            target.write(data[written:match.start()] + mask)
            written = match.end()
        cut = max(safe, written)
        target.write(data[written:cut])
        carried = data[cut:]
    target.write(pattern.sub(mask, carried))
