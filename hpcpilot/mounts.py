"""The node's mount table, as ``/proc/self/mountinfo`` gives it, and taking mounts out of a tree to be removed.

A payload may leave a filesystem mounted in its scratch: a root payload's
bind mount, or a FUSE mount a user may make (squashfuse, cvmfsexec).
Removing the scratch would then delete, or walk for hours, whatever is
mounted there; a bind mount of the same filesystem does not even show as
another device. So mounts below a tree are unmounted first (as root may;
a user's own FUSE mount through fusermount), and a tree with a mount that
stays is left in place.
"""
from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROC_SELF = Path("/proc/self")
_MNT_DETACH = 2
FUSERMOUNT_WAIT = 10.0  # seconds: it talks to no filesystem, but must never hold a rank for long


@dataclass(frozen=True)
class Mount:
    device: str  # MAJOR:MINOR
    root: str  # the directory of its filesystem mounted here
    point: str
    fstype: str
    super_options: str


def read_mounts(proc: Path = PROC_SELF) -> list[Mount]:
    """Every mount this process sees; none when the table cannot be read."""
    return _parsed(_mountinfo(proc))


def _mountinfo(proc: Path) -> str:
    try:
        return (proc / "mountinfo").read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return ""


def _parsed(table: str) -> list[Mount]:
    return [mount for line in table.splitlines() if (mount := _parse(line)) is not None]


def _parse(line: str) -> Mount | None:
    # ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL FIELDS...] - FSTYPE SOURCE SUPER_OPTIONS
    before, _, after = line.partition(" - ")
    fields, tail = before.split(), after.split()
    if len(fields) < 5 or len(tail) < 3:
        return None
    return Mount(fields[2], _unescape(fields[3]), _unescape(fields[4]), tail[0], tail[2])


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def _escape(path: str) -> str:
    """A path as mountinfo writes it."""
    return re.sub(r"[ \t\n\\]", lambda match: f"\\{ord(match.group()):03o}", path)


def mounts_below(tree: Path, proc: Path = PROC_SELF) -> list[Mount]:
    """The mounts on ``tree`` or inside it, deepest first."""
    return _mounts_below(os.path.realpath(tree), proc)


def _mounts_below(top: str, proc: Path = PROC_SELF) -> list[Mount]:
    """The mounts on the canonical path ``top`` or inside it, deepest first."""
    table = _mountinfo(proc)
    if _escape(top) not in table:  # the usual case, asked once per job: no need to parse a node's many mounts
        return []
    inside = [m for m in _parsed(table) if m.point == top or m.point.startswith(top.rstrip("/") + "/")]
    return sorted(inside, key=lambda m: m.point.count("/"), reverse=True)


def unmount_all_below(tree: Path) -> list[str]:
    """Detach every mount inside ``tree``; the mount points that stay (not ours to unmount). Pass after pass:
    a mount covered by another one mounted above it can be reached only once that one is gone.

    Only mounts inside the directory at ``tree`` now: a payload may have swapped it, or a directory in it, for
    a symlink to elsewhere since it was looked at. So the tree is held open, never through a link, and each
    mount point reached from it one directory at a time, never through a link either; a link at ``tree`` has
    nothing below it. Each pass opens the tree again: one mounted on itself, once detached, is no longer in
    the node's tree (its path is "/"), and what it covered is the tree now."""
    before = math.inf
    while True:
        try:
            top = os.open(tree, DIRECTORY_ITSELF)
        except (FileNotFoundError, NotADirectoryError):  # gone, or a link (O_NOFOLLOW | O_DIRECTORY: ENOTDIR)
            return []
        except OSError:  # not this user's to enter: what is mounted there stays
            return [mount.point for mount in mounts_below(tree)]
        try:
            remaining = _mounts_below(_held_path(top))
            if not remaining or len(remaining) >= before:
                return [mount.point for mount in remaining]
            for mount in remaining:
                _detach_inside(top, mount)
        finally:
            os.close(top)
        before = len(remaining)


DIRECTORY_ITSELF = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC  # a directory itself, never a link to one


def _held_path(fd: int) -> str:
    """The path of what ``fd`` holds, as the kernel names it now."""
    return os.readlink(f"{PROC_SELF}/fd/{fd}")


def _detach_inside(top: int, mount: Mount) -> None:
    """Detach ``mount`` if its point is reached from the tree ``top`` without a link (else it stays)."""
    point = _open_inside(top, os.path.relpath(mount.point, _held_path(top)))
    if point is None:
        return
    try:  # umount2 of the held mount itself, through /proc: no path the payload could change meanwhile
        if _libc_umount2(os.fsencode(f"{PROC_SELF}/fd/{point}"), _MNT_DETACH) != 0 and \
                mount.fstype.startswith("fuse"):
            _fusermount_detach(_held_path(point))
    finally:
        os.close(point)


def _open_inside(top: int, relative: str) -> int | None:
    """The directory at ``relative`` below ``top``, opened one name at a time, none a link; None if there is
    none such (gone, outside, or a link swapped in)."""
    names = Path(relative).parts
    if ".." in names:
        return None
    current = os.open(".", DIRECTORY_ITSELF, dir_fd=top)
    for name in names:
        try:
            child = os.open(name, DIRECTORY_ITSELF, dir_fd=current)
        except OSError:
            child = None
        os.close(current)
        if child is None:
            return None
        current = child
    return current


def _fusermount_detach(point: str) -> None:
    """A user's own FUSE mount (squashfuse, cvmfsexec), which only root may umount2: fusermount lets its owner."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        return
    try:
        subprocess.run([tool, "-u", "-z", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=FUSERMOUNT_WAIT, check=False)
    except (OSError, subprocess.TimeoutExpired):  # then the mount stays, and with it the tree
        pass


_libc_umount2 = ctypes.CDLL(None, use_errno=True).umount2
_libc_umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
