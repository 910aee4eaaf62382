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
from pathlib import Path

from .mounts import unmount_all_below

log = logging.getLogger(__name__)


def remove_tree(path: Path) -> list[str]:
    """Unmount what is mounted inside, then remove the tree, making its directories the owner's to empty if
    the payload took that from them. A tree with a mount that stays is left whole; its mount points are
    returned."""
    if mounted := unmount_all_below(path):
        return mounted
    _remove_unmounted_tree(path)
    if _is_directory_itself(path):  # a directory the payload chmod'ed 000 or 0500 stops even its owner's removal
        _run_helper(["chmod", "-R", "u+rwX", "--", os.fspath(path)])
        _remove_unmounted_tree(path)
    return []


def _is_directory_itself(path: Path) -> bool:
    """A directory, not a symlink to one (chmod -R follows a symlink it is given)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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
