"""Removing a scratch tree whatever its payload left in it: mounts, directories it locked, nesting too deep.

Used for a job's scratch when the job ends, and for the root of a pilot that
died without removing its own (scratchroot.py).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from contextlib import suppress
from pathlib import Path

from .mounts import DIRECTORY_ITSELF, PROC_SELF, unmount_all_below

log = logging.getLogger(__name__)


def remove_tree(path: Path) -> list[str]:
    """Unmount what is mounted inside, then remove the tree, making its directories the owner's to empty if
    the payload took that from them. A tree with a mount that stays is left whole; its mount points are
    returned. Nothing outside the tree is acted on, whatever of it the payload swapped for a symlink."""
    if mounted := unmount_all_below(path):
        return mounted
    _remove_unmounted_tree(path)
    if os.path.lexists(path):  # a directory the payload chmod'ed 000 or 0500 stops even its owner's removal
        _give_back_owners_rights(path)
        _remove_unmounted_tree(path)
    return []


def _give_back_owners_rights(tree: Path) -> None:
    """u+rwx on every directory of ``tree``, through directories held open, never reached through a link: a
    path (``chmod -R``) would follow a link the payload swapped in for the tree or a directory in it."""
    try:
        walk = _DirectoryWalk(tree)
    except OSError:  # gone, or a link
        return
    try:
        walk.run()
    finally:
        walk.close()


class _DirectoryWalk:
    """Depth first, one directory held at a time (a tree may be nested deeper than there are descriptors):
    down by name, never through a link, and back up by "..", which must be the directory it came from (the
    payload may have moved this one elsewhere meanwhile: the walk then ends)."""

    def __init__(self, tree: Path):
        self.fd = os.open(tree, DIRECTORY_ITSELF)
        self.device = os.fstat(self.fd).st_dev
        self.above: list[tuple[tuple[int, int], list[str]]] = []  # top down to here: identity, subdirectories left

    def run(self) -> None:
        self._enter()
        while self.above:
            left = self.above[-1][1]
            if left:
                if self._moved_to(left.pop()):
                    self._enter()
                continue
            self.above.pop()
            if self.above and not self._moved_to("..", expected=self.above[-1][0]):
                return

    def close(self) -> None:
        os.close(self.fd)

    def _enter(self) -> None:
        status = os.fstat(self.fd)
        here = (status.st_dev, status.st_ino)
        if status.st_dev != self.device:  # mounted since the tree was unmounted: not the tree's to change
            self.above.append((here, []))
            return
        if status.st_mode & 0o700 != 0o700:
            with suppress(OSError):  # not the owner: its removal fails, and is named in a warning
                os.chmod(f"{PROC_SELF}/fd/{self.fd}", stat.S_IMODE(status.st_mode) | 0o700)  # the held one itself
        self.above.append((here, self._subdirectories()))

    def _subdirectories(self) -> list[str]:
        try:
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return []
        try:
            with os.scandir(listing) as entries:
                return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        finally:
            os.close(listing)

    def _moved_to(self, name: str, expected: tuple[int, int] | None = None) -> bool:
        """Hold ``name`` instead, if it is a directory (and ``expected``, if given); False if not."""
        try:
            fd = os.open(name, DIRECTORY_ITSELF, dir_fd=self.fd)
        except OSError:
            return False
        status = os.fstat(fd)
        if expected is not None and (status.st_dev, status.st_ino) != expected:
            os.close(fd)
            return False
        os.close(self.fd)
        self.fd = fd
        return True


def _remove_unmounted_tree(path: Path) -> None:
    """shutil.rmtree, or ``rm -rf`` for a tree nested deeper than rmtree's recursion reaches."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        _run_helper(["rm", "-rf", "--one-file-system", "--", os.fspath(path)])


def _run_helper(argv: list[str]) -> None:
    """A tool that removes what it can of a scratch: what it leaves is tried again, or named in a warning,
    as is all of it when it cannot be started (a payload that took every process its user may have)."""
    try:
        # Nothing of the pilot's own: a helper still at work on a dead pilot's scratch when the rank ends must not
        # keep the pilot's output open for whoever reads it to its end.
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
    except OSError as error:
        log.warning("cannot run %s: %s", argv[0], error)
