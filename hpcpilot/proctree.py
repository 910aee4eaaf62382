"""The payload's process tree: find every process of one payload, sample it, kill it.

A payload is started as ``bash -c CMD`` in a session of its own, with a unique
token ``HPCPILOT_JOB_TOKEN=<token>`` in its environment. Its members are:

- the root and every descendant (by parent pid), also those that called setsid;
- every process still in the root's session (double-forked daemons);
- every process of our uid whose environment carries the token (orphans that
  left the session and were reparented to the pilot or to init);
- every member seen before that still runs, and their descendants.

Parent pids, groups and sessions come from one pass over ``/proc/*/stat``;
environments are read only when a member has vanished (it may have left
orphans behind) or at kill time, and each process at most once.
"""
from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Collection, Iterable

import psutil

log = logging.getLogger(__name__)

TOKEN_ENV = "HPCPILOT_JOB_TOKEN"
PR_SET_CHILD_SUBREAPER = 36
KILL_ROUNDS = 20
KILL_ROUND_PAUSE = 0.05


def new_token() -> str:
    """A fresh token that marks one payload's environment."""
    return secrets.token_hex(16)


def become_subreaper(enable: bool = True) -> bool:
    """Make orphans of our descendants reparent to this process instead of init.

    The pilot then must reap them: ``ProcessTree`` does so for its payload's
    members, ``reap_orphans`` for everything else. True on success.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) != 0
    except (OSError, AttributeError) as exc:
        log.warning("prctl unavailable, orphans will reparent to init: %s", exc)
        return False
    if failed:
        log.warning("PR_SET_CHILD_SUBREAPER failed: %s", os.strerror(ctypes.get_errno()))
    return not failed


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this module needs."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    start_ticks: int
    zombie: bool

    @property
    def key(self) -> tuple[int, int]:
        """Identifies a process across pid reuse."""
        return (self.pid, self.start_ticks)


def read_proc_table() -> dict[int, ProcStat]:
    """One pass over ``/proc``: every process now present (zombies included)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                table[stat.pid] = stat
    return table


def _read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2:].split()
    return ProcStat(pid=pid, ppid=int(rest[1]), pgrp=int(rest[2]), session=int(rest[3]),
                    start_ticks=int(rest[19]), zombie=rest[0] in (b"Z", b"X"))


def reap_orphans(known_roots: Collection[int]) -> list[int]:
    """Reap zombie children of this process that it never started itself; return their pids.

    Needed once ``become_subreaper`` made the pilot inherit orphans. Never
    reaps a pid in ``known_roots`` (pass every live Popen started with
    ``start_new_session``: reaping it would steal its exit status from
    ``Popen.wait``), nor a child in the pilot's own session (plain
    ``subprocess.run`` children of other modules).
    """
    own_session = os.getsid(0)
    reaped = []
    for stat in read_proc_table().values():
        if (stat.zombie and stat.ppid == os.getpid() and stat.pid not in known_roots
                and stat.session != own_session and _reap(stat.pid)):
            reaped.append(stat.pid)
    return reaped


def _reap(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


@dataclass(frozen=True)
class TreeSample:
    """Resources of a whole process tree at one moment: memory in kB, I/O in bytes."""

    time: float
    nprocs: int
    rss: int
    pss: int
    vms: int
    swap: int
    rchar: int
    wchar: int
    read_bytes: int
    write_bytes: int


@dataclass(frozen=True)
class IoCounters:
    rchar: int = 0
    wchar: int = 0
    read_bytes: int = 0
    write_bytes: int = 0

    def __add__(self, other: IoCounters) -> IoCounters:
        return IoCounters(*(a + b for a, b in zip(_values(self), _values(other))))

    def maximum(self, other: IoCounters) -> IoCounters:
        return IoCounters(*(max(a, b) for a, b in zip(_values(self), _values(other))))


def _values(counters: IoCounters) -> tuple[int, ...]:
    return tuple(getattr(counters, field.name) for field in fields(counters))


@dataclass
class _IoRecord:
    """The highest I/O counters seen for one process, and who will reap it."""

    counters: IoCounters
    ppid: int


@dataclass(frozen=True)
class _Memory:
    rss: int
    pss: int
    vms: int
    swap: int


class IoLedger:
    """I/O totals of a tree that never go backwards.

    The counters of an exited process are lost, except that the kernel adds
    them to its parent's when the parent reaps it. So a vanished process
    still counts unless its parent is a live member (whose own counters now
    include it); the total is also kept monotonic against races.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[int, int], _IoRecord] = {}
        self._finished = IoCounters()
        self._highest = IoCounters()

    def record(self, stat: ProcStat, counters: IoCounters) -> None:
        known = self._records.get(stat.key)
        best = counters if known is None else known.counters.maximum(counters)
        self._records[stat.key] = _IoRecord(best, stat.ppid)

    def settle(self, table: dict[int, ProcStat], live_members: Collection[int]) -> None:
        """Account for processes that are gone from ``/proc`` (reaped)."""
        for key in [key for key in self._records if _is_gone(key, table)]:
            gone = self._records.pop(key)
            if gone.ppid not in live_members:
                self._finished = self._finished + gone.counters

    def total(self) -> IoCounters:
        current = self._finished
        for record in self._records.values():
            current = current + record.counters
        self._highest = self._highest.maximum(current)
        return self._highest


def _is_gone(key: tuple[int, int], table: dict[int, ProcStat]) -> bool:
    stat = table.get(key[0])
    return stat is None or stat.start_ticks != key[1]


class ProcessTree:
    """Every process of one payload, for sampling and killing.

    Safe to share between a monitoring thread and a killing one: calls are
    serialised (a ``sample`` waits while ``kill`` runs its grace period).
    """

    def __init__(self, root_pid: int, token: str, session_id: int | None = None) -> None:
        self.root_pid = root_pid
        self._token_entry = f"{TOKEN_ENV}={token}\0".encode()
        self._session = _payload_session(root_pid) if session_id is None else session_id
        self._members: dict[tuple[int, int], ProcStat] = {}
        self._without_token: set[tuple[int, int]] = set()
        self._handles: dict[tuple[int, int], psutil.Process] = {}
        self._io = IoLedger()
        self._table: dict[int, ProcStat] = {}
        self._uid = os.getuid()
        self._lock = threading.RLock()

    # ---- membership -------------------------------------------------------

    def pids(self, scan_environ: bool = False) -> set[int]:
        """Pids of the live members now (zombies excluded).

        ``scan_environ`` forces a search for the token in every environment
        of our uid; it happens anyway when a member has vanished.
        """
        with self._lock:
            return set(self._refresh(scan_environ))

    def _refresh(self, scan_environ: bool) -> dict[int, ProcStat]:
        table = self._table = read_proc_table()
        seeds = self._seeds(table)
        if scan_environ or self._lost_members(table):
            seeds |= self._token_holders(table, exclude=seeds)
        members = {pid: table[pid] for pid in _with_descendants(seeds, table)
                   if not table[pid].zombie and _may_signal(pid)}
        self._reap_member_zombies(table)
        self._members = {stat.key: stat for stat in members.values()}
        self._forget_gone(table)
        return members

    def _lost_members(self, table: dict[int, ProcStat]) -> bool:
        """True if the root or a known member died: it may have left unseen orphans."""
        root = table.get(self.root_pid)
        if root is None or root.zombie:
            return True
        return any(_is_gone(key, table) or table[key[0]].zombie for key in self._members)

    def _seeds(self, table: dict[int, ProcStat]) -> set[int]:
        seeds = {key[0] for key in self._members if not _is_gone(key, table)}
        if self.root_pid in table:
            seeds.add(self.root_pid)
        if self._session is not None:
            seeds |= {stat.pid for stat in table.values() if stat.session == self._session}
        return seeds

    def _token_holders(self, table: dict[int, ProcStat], exclude: set[int]) -> set[int]:
        holders = set()
        for stat in table.values():
            if stat.pid in exclude or stat.zombie or stat.key in self._without_token:
                continue
            if self._carries_token(stat.pid):
                holders.add(stat.pid)
            else:
                self._without_token.add(stat.key)
        return holders

    def _carries_token(self, pid: int) -> bool:
        try:
            if os.stat(f"/proc/{pid}").st_uid != self._uid:
                return False
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            return False
        return environ.startswith(self._token_entry) or b"\0" + self._token_entry in environ

    def _reap_member_zombies(self, table: dict[int, ProcStat]) -> None:
        """Reap payload processes reparented to us (subreaper); never the root (Popen's)."""
        me = os.getpid()
        for stat in table.values():
            if (stat.zombie and stat.ppid == me and stat.pid != self.root_pid
                    and (stat.key in self._members or self._in_session(stat))):
                _reap(stat.pid)

    def _in_session(self, stat: ProcStat) -> bool:
        return self._session is not None and stat.session == self._session

    def _forget_gone(self, table: dict[int, ProcStat]) -> None:
        self._without_token = {key for key in self._without_token if not _is_gone(key, table)}
        self._handles = {key: proc for key, proc in self._handles.items() if key in self._members}

    # ---- killing ----------------------------------------------------------

    def kill(self, grace: float, poll: float = 0.1) -> list[int]:
        """SIGTERM every member, wait up to ``grace`` s, SIGKILL the rest.

        Returns the pids that needed SIGKILL, new members that appeared
        during the grace period included.
        """
        with self._lock:
            members = self._refresh(scan_environ=True)
            if not members:
                return []
            _signal_members(members.values(), signal.SIGTERM)
            _signal_members(members.values(), signal.SIGCONT)  # a stopped process cannot handle TERM
            if self._wait_until_empty(grace, poll):
                return []
            return self._kill_survivors()

    def _wait_until_empty(self, grace: float, poll: float) -> bool:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self._refresh(scan_environ=True):
                return True
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        return not self._refresh(scan_environ=True)

    def _kill_survivors(self) -> list[int]:
        killed: set[int] = set()
        for _ in range(KILL_ROUNDS):
            survivors = self._refresh(scan_environ=True)
            if not survivors:
                break
            _signal_members(survivors.values(), signal.SIGKILL)
            killed.update(survivors)
            time.sleep(KILL_ROUND_PAUSE)
        remaining = self._refresh(scan_environ=True)
        if remaining:  # e.g. stuck in uninterruptible I/O; the caller may try again later
            log.warning("payload %d: members survive SIGKILL: %s", self.root_pid, sorted(remaining))
        log.info("payload %d: SIGKILL sent to %s", self.root_pid, sorted(killed))
        return sorted(killed)

    # ---- sampling ---------------------------------------------------------

    def sample(self) -> TreeSample:
        """Summed memory (kB) and I/O (bytes) of the live members now."""
        with self._lock:
            members = self._refresh(scan_environ=False)
            self._io.settle(self._table, members)
            memory = [m for m in map(self._measure, members.values()) if m is not None]
            io = self._io.total()
        return TreeSample(
            time=time.time(), nprocs=len(memory),
            rss=sum(m.rss for m in memory) // 1024, pss=sum(m.pss for m in memory) // 1024,
            vms=sum(m.vms for m in memory) // 1024, swap=sum(m.swap for m in memory) // 1024,
            rchar=io.rchar, wchar=io.wchar, read_bytes=io.read_bytes, write_bytes=io.write_bytes)

    def _measure(self, stat: ProcStat) -> _Memory | None:
        """Memory of one process in bytes, recording its I/O; None if it vanished."""
        try:
            proc = self._handle(stat)
            memory = _memory_of(proc)
            self._io.record(stat, _io_of(proc))
        except (psutil.NoSuchProcess, ProcessLookupError):
            return None
        return memory

    def _handle(self, stat: ProcStat) -> psutil.Process:
        proc = self._handles.get(stat.key)
        if proc is None:
            proc = self._handles[stat.key] = psutil.Process(stat.pid)
        return proc


def _payload_session(root_pid: int) -> int | None:
    """The root's session, if it leads one of its own (start_new_session)."""
    try:
        session = os.getsid(root_pid)
    except OSError:
        return None
    return session if session == root_pid and session != os.getsid(0) else None


def _with_descendants(seeds: Iterable[int], table: dict[int, ProcStat]) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = set(), [pid for pid in seeds if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _may_signal(pid: int) -> bool:
    """Never the pilot itself, init or kthreadd, whatever the scan says."""
    return pid not in (os.getpid(), 0, 1, 2)


def _signal_members(members: Iterable[ProcStat], signum: int) -> None:
    members = list(members)
    for group in {stat.pgrp for stat in members} - {0, 1, os.getpgrp()}:
        _send(os.killpg, group, signum)
    for stat in members:
        _send(os.kill, stat.pid, signum)


def _send(sender: Callable[[int, int], None], target: int, signum: int) -> None:
    try:
        sender(target, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.warning("cannot send signal %d to %d: %s", signum, target, exc)


def _memory_of(proc: psutil.Process) -> _Memory:
    try:
        full = proc.memory_full_info()
        return _Memory(rss=full.rss, pss=full.pss, vms=full.vms, swap=full.swap)
    except psutil.AccessDenied:
        # Without smaps access, rss bounds pss from above: safer for a memory limit.
        basic = proc.memory_info()
        return _Memory(rss=basic.rss, pss=basic.rss, vms=basic.vms, swap=0)


def _io_of(proc: psutil.Process) -> IoCounters:
    try:
        io = proc.io_counters()
    except psutil.AccessDenied:
        return IoCounters()
    return IoCounters(rchar=io.read_chars, wchar=io.write_chars,
                      read_bytes=io.read_bytes, write_bytes=io.write_bytes)
