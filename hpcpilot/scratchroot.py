"""A rank's scratch root on node-local storage, and the roots of pilots that died without removing theirs.

Each rank makes its own root, ``hpcpilot-<pid>-<random>`` in the scratch
directory, and holds a lock (flock) on the file ``.alive`` inside it for as
long as it lives. A rank killed (SIGKILL, the OOM killer, the batch system at
the walltime) leaves its root behind, on a node-local disk that may outlive
the batch job; its lock goes with the process. So each rank, as it starts,
removes the roots beside its own whose lock it can take: their pilots are
gone. A root without that file (a pilot run with keep_scratch, whose scratch
is kept for whoever inspects it, or one of an older hpcpilot) is left alone,
and so is another user's. So is one whose file names another node: a scratch
directory shared between nodes (NFS mounted nolock, Lustre with localflock)
may show no node the locks of another, whose living pilots' roots would look
dead. A root is made as ``hpcpilot-<pid>-<random>.new``, its lock file
locked in it, then renamed: one still under that name an hour on is a rank's
killed as it made it, and goes too.

A dead root may hold a million files: its removal takes many minutes
(200,000 took 340 s on a busy disk here), so a rank removes dead roots on a
thread of its own while its jobs start, and removes a root's lock file last:
a rank that ends before the removal does leaves the rest, lock file and all,
to the next one.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from .mounts import unmount_all_below
from .nodename import node_identity
from .scratchtree import remove_tree

log = logging.getLogger(__name__)

PREFIX = "hpcpilot-"
_ROOT_NAME = re.compile(PREFIX + r"[0-9]+-[A-Za-z0-9_]{8}")  # as make_root names it, nothing else
MAKING = ".new"  # a root's name while its rank makes it
_MAKING_NAME = re.compile(_ROOT_NAME.pattern + re.escape(MAKING))
# A rank makes its root in a few system calls, and holds its lock for all but the first two. A root still being
# made after an hour is a killed rank's; one taken from a rank that was stopped that long costs it only its
# rename, which then fails (the rank tries again, or uses another scratch directory).
MAKING_GRACE = 3600.0
ALIVE = ".alive"
NICEST = 19  # the removal of dead roots waits for any other work of the node
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never through a link, never waiting


def make_root(parent: Path, keep: bool) -> Path:
    """This rank's new root in ``parent`` (mode 0700); locked as alive for the process's life unless ``keep``
    (the lock's descriptor stays open, close-on-exec: no payload holds it)."""
    return _made_root(parent, keep)[0]


def make_root_to_release(parent: Path) -> tuple[Path, int | None]:
    """A locked root as make_root's, for what ends before the process does (an event channel's socket): with
    the descriptor of its lock, to close once ``remove_own`` has removed the root (None: it could not be
    locked, and is used as a kept one)."""
    return _made_root(parent, keep=False)


def _made_root(parent: Path, keep: bool) -> tuple[Path, int | None]:
    """Made, lock file and all, under a name of its own, then renamed: under its final name a root has its
    lock file from the start, and one its rank was killed while making is recognisable (``_reclaimed``)."""
    making = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=MAKING, dir=parent))
    lock = None if keep else _held_alive_lock(making)
    root = making.with_name(making.name.removesuffix(MAKING))
    try:
        os.rename(making, root)  # fails if a later rank took it for a dead one's: this one is then not used
    except OSError:
        remove_own(making)
        release(lock)
        raise
    return root, lock


def release(lock: int | None) -> None:
    """The lock of a root make_root_to_release made: let go once the root is removed (or left to a later rank)."""
    if lock is not None:
        os.close(lock)


def _held_alive_lock(making: Path) -> int | None:
    """The file is locked, and names this node, before the root has its name: the descriptor holding it."""
    lock_file = making / ALIVE
    try:
        fd = os.open(lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as error:
        return _unlocked(making, error)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, _this_node())
    except OSError as error:  # no flock (Lustre mounted without it: ENOSYS; NFS: ENOLCK), or no space left
        lock_file.unlink(missing_ok=True)  # before the lock goes: never seen unlocked naming this node
        os.close(fd)
        return _unlocked(making, error)
    return fd


def _unlocked(root: Path, error: OSError) -> None:
    """The root is used without its lock, as a kept one: the scratch is no less usable for it."""
    log.warning("cannot lock %s (%s): if this rank is killed, its scratch stays in %s", root / ALIVE,
                error.strerror, root.parent)


def _this_node() -> bytes:
    return node_identity() + b"\n"


def remove_own(root: Path) -> bool:
    """The rank ends, its jobs' scratch removed: its root goes, lock file last. A root that still holds what a
    job left (a directory its payload moved aside, a mount) keeps its lock file, which a later rank on this node
    takes once this one has ended, and removes the rest with it; removed without the lock file, it would stay
    for good. True if the root is gone. (The last step of a dead root's removal too.)"""
    try:
        if set(os.listdir(root)) - {ALIVE}:
            return False
        (root / ALIVE).unlink(missing_ok=True)  # roots kept unlocked (no flock) have none
    except OSError:
        return False
    try:
        root.rmdir()
    except FileNotFoundError:  # another remover's, or not there any more under this name
        return False
    except OSError:  # something came in since (a dead rank's payload writes on): a later rank must still take it
        _mark_dead(root)
        return False
    return True


def _mark_dead(root: Path) -> None:
    """A lock file no process holds, naming this node: the next rank here removes the root."""
    try:
        fd = os.open(root / ALIVE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        return _left_for_good(root, error)
    try:
        os.write(fd, _this_node())
    except OSError as error:  # no space left: an empty lock file names no node, and would keep the root for good
        with contextlib.suppress(OSError):
            os.unlink(root / ALIVE)
        _left_for_good(root, error)
    finally:
        os.close(fd)


def _left_for_good(root: Path, error: OSError) -> None:
    log.warning("cannot remove %s, nor mark it for a later pilot to remove (%s): it stays", root, error.strerror)


def reclaim_dead_roots_in_background(parent: Path, own: Path) -> threading.Thread | None:
    """``reclaim_dead_roots`` on a daemon thread, which the rank's start does not wait for (nor its end: what it
    has not removed by then a later rank does); None, and the dead roots left for later, when no thread can be
    started (ulimit -u)."""
    thread = threading.Thread(target=_reclaim_at_lowest_priority, args=(parent, own), name="reclaim-dead-scratch",
                              daemon=True)
    try:
        thread.start()
    except RuntimeError as error:  # "can't start new thread": the rank needs none of this to run its jobs
        log.warning("cannot start a thread to remove the scratch of dead pilots in %s (%s): left for a later rank",
                    parent, error)
        return None
    return thread


def _reclaim_at_lowest_priority(parent: Path, own: Path) -> None:
    """Minutes of unlinking on the node's disk and CPU must not slow the payloads the rank starts meanwhile."""
    _lowest_priority()
    reclaim_dead_roots(parent, own)


def _lowest_priority() -> None:
    """This thread's, and so its helpers' (rm -rf): Linux gives each thread its own nice value, and
    the disk schedulers that weigh I/O (BFQ) take its I/O priority from it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICEST)
    except OSError as error:  # the removal goes on at the rank's priority
        log.debug("cannot lower the priority of the removal of dead scratch: %s", error)


def reclaim_dead_roots(parent: Path, own: Path) -> list[Path]:
    """Remove the roots in ``parent`` of this user's pilots that died; those removed."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    reclaimed = []
    for entry in entries:
        if entry.path != os.fspath(own) and _reclaimed(entry):
            reclaimed.append(Path(entry.path))
    if reclaimed:
        log.info("removed the scratch of %d pilot(s) that ended without removing it, in %s", len(reclaimed), parent)
    return reclaimed


def _ours(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.geteuid()
    except OSError:
        return False


def _reclaimed(entry: os.DirEntry) -> bool:
    """A root of this user's, or one being made long ago, removed if its pilot is dead."""
    if _ROOT_NAME.fullmatch(entry.name):
        return _ours(entry) and _removed_if_dead(Path(entry.path))
    if _MAKING_NAME.fullmatch(entry.name):
        return _ours(entry) and _made_long_ago(entry) and _removed_if_dead(Path(entry.path), made_in_part=True)
    return False


def _made_long_ago(entry: os.DirEntry) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_mtime < time.time() - MAKING_GRACE
    except OSError:
        return False


def _removed_if_dead(root: Path, made_in_part: bool = False) -> bool:
    """Removed while its lock is held here, which only a dead pilot's root lets this rank take. A root
    ``made_in_part`` may lack its lock file, or the node in it: its rank was killed before it wrote them."""
    try:
        fd = os.open(root / ALIVE, _OPEN_FLAGS)
    except FileNotFoundError:  # kept on purpose, or not one of ours; or its rank was killed before making it
        return made_in_part and _removed_lock_file_last(root)
    except OSError:
        return False
    try:
        return _dead_here(fd, made_in_part) and _removed_lock_file_last(root)
    finally:
        os.close(fd)


def _removed_lock_file_last(root: Path) -> bool:
    """Everything in the root but its lock file, then the lock file and the root. What a removal leaves (a
    directory it cannot empty now, or all that the rank's end cut short) keeps the lock file, unlocked once
    this rank lets go: a later rank tries again. A mount left inside keeps the root whole."""
    try:
        _writable_again(root)  # first: neither mounts nor files are taken out through a link swapped in
        if unmount_all_below(root):
            return False
        for entry in [entry for entry in os.scandir(root) if entry.name != ALIVE]:
            _remove_entry(entry)
    except OSError:
        return False
    return remove_own(root)


def _writable_again(root: Path) -> None:
    """The root's mode as make_root gave it: a payload may have taken its owner's write permission away
    (chmod -R a-w ..), which keeps anything in it from being removed. Never through a link swapped in."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _remove_entry(entry: os.DirEntry) -> None:
    if entry.is_dir(follow_symlinks=False):
        remove_tree(Path(entry.path))
    else:
        os.unlink(entry.path)


def _dead_here(fd: int, made_in_part: bool) -> bool:
    """The lock file of a root of this node whose lock this rank took: its pilot is dead."""
    try:
        node = os.read(fd, 4096)
        if node != _this_node() and not (made_in_part and node == b""):  # another node's: its lock may not show
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # its pilot lives (or another rank is removing it)
        return False
