"""The payload's process tree: find every process of one payload, sample it, kill it.

A payload is started as ``bash -c CMD`` in a session of its own, with a unique
token ``HPCPILOT_JOB_TOKEN=<token>`` in its environment. Its members are:

- the root and every descendant (by parent pid), also those that called setsid;
- every process still in the root's session (double-forked daemons);
- every process of our uid whose environment carries the token (orphans that
  left the session and were reparented to init or the nearest subreaper,
  which is the rank itself when it is PID 1 of its namespace: it reaps them);
- every member seen before that still runs, and their descendants.

Parent pids, groups and sessions come from one pass over ``/proc/*/stat``
(a monitor pass shares one such table among all payloads); environments are
read only of processes born after the root, each at most once, at every
look (an orphan may have left while the root runs, before any look saw it).

Once a payload has exited, what it left in its process group is ended at once
(``ProcessTree.end_leftovers``, cheap when the group is empty); what left the
group is found by its token in a ``LeftoverSweep`` over all finished payloads.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Collection, Iterable

log = logging.getLogger(__name__)

TOKEN_ENV = "HPCPILOT_JOB_TOKEN"
KILL_ROUNDS = 20
KILL_ROUND_PAUSE = 0.05
# One summed block (Linux >= 4.14) instead of one block per mapping: same fields, far cheaper.
SMAPS = "smaps_rollup" if os.path.exists("/proc/self/smaps_rollup") else "smaps"
MEMORY_LINE = re.compile(rb"^(Rss|Pss|Swap):\s+(\d+) kB", re.MULTILINE)


# Every token this process hands out starts with it: a rank's guard finds what the rank's payloads left
# running, even outside their process groups, by this prefix alone.
TOKEN_PREFIX = secrets.token_hex(6)


def new_token() -> str:
    """A fresh token that marks one payload's environment."""
    return f"{TOKEN_PREFIX}.{secrets.token_hex(10)}"


def token_holders(matches: Callable[[bytes], bool]) -> dict[int, ProcStat]:
    """Live processes of our uid whose payload token ``matches``, and their descendants."""
    table, uid = read_proc_table(), os.getuid()
    holders = {stat.pid for stat in table.values()
               if not stat.zombie and matches(_token_in(_environ_of(stat.pid, uid)) or b"")}
    return {pid: table[pid] for pid in _with_descendants(holders, table) if not table[pid].zombie and _may_signal(pid)}


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this module needs."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    start_ticks: int
    zombie: bool
    vsize: int = 0  # bytes

    @property
    def key(self) -> tuple[int, int]:
        """Identifies a process across pid reuse."""
        return (self.pid, self.start_ticks)


class ProcTable(dict[int, ProcStat]):
    """Pid -> ProcStat of every process present at one moment (zombies included).

    Indexed by parent and by session on first use, so that many payload
    trees can share one table without each scanning all of it.
    """

    @cached_property
    def children(self) -> dict[int, list[int]]:
        return _index(self.values(), lambda stat: stat.ppid)

    @cached_property
    def sessions(self) -> dict[int, list[int]]:
        return _index(self.values(), lambda stat: stat.session)


def _index(stats: Iterable[ProcStat], key: Callable[[ProcStat], int]) -> dict[int, list[int]]:
    index: dict[int, list[int]] = {}
    for stat in stats:
        index.setdefault(key(stat), []).append(stat.pid)
    return index


def read_proc_table() -> ProcTable:
    """One pass over ``/proc``: every process now present (zombies included)."""
    table = ProcTable()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                table[stat.pid] = stat
    return table


def _read_stat(pid: int) -> ProcStat | None:
    try:
        raw = _read_small(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2:].split()
    return ProcStat(pid=pid, ppid=int(rest[1]), pgrp=int(rest[2]), session=int(rest[3]),
                    start_ticks=int(rest[19]), zombie=rest[0] in (b"Z", b"X"), vsize=int(rest[20]))


def _read_small(path: str) -> bytes:
    """One read of a small /proc file: os.open/os.read costs a third less than open()."""
    handle = os.open(path, os.O_RDONLY)
    try:
        return os.read(handle, 4096)
    finally:
        os.close(handle)


def _read_all(path: str) -> bytes:
    handle = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(handle, 65536)]
        while chunks[-1]:
            chunks.append(os.read(handle, 65536))
        return b"".join(chunks)
    finally:
        os.close(handle)


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


def _values(counters: IoCounters) -> tuple[int, int, int, int]:
    return (counters.rchar, counters.wchar, counters.read_bytes, counters.write_bytes)


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
    include it, or will); the total is also kept monotonic against races.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[int, int], _IoRecord] = {}
        self._finished = IoCounters()
        self._highest = IoCounters()

    def record(self, stat: ProcStat, counters: IoCounters) -> None:
        known = self._records.get(stat.key)
        best = counters if known is None else known.counters.maximum(counters)
        self._records[stat.key] = _IoRecord(best, stat.ppid)

    def settle(self, table: ProcTable, live_members: Collection[int]) -> None:
        """Account for processes that are gone from ``/proc`` (reaped)."""
        for key in [key for key in self._records if _is_gone(key, table)]:
            gone = self._records.pop(key)
            if gone.ppid not in live_members:
                self._finished = self._finished + gone.counters

    def total(self, measured: Collection[tuple[int, int]], live_members: Collection[int]) -> IoCounters:
        """The total now; ``measured`` are the keys whose counters were just read.

        A record not read now (exited meanwhile) whose parent is a live member
        is left out: the parent may have reaped it, and then counts it itself.
        """
        current = self._finished
        for key, record in self._records.items():
            if key in measured or record.ppid not in live_members:
                current = current + record.counters
        self._highest = self._highest.maximum(current)
        return self._highest


def _is_gone(key: tuple[int, int], table: ProcTable) -> bool:
    stat = table.get(key[0])
    return stat is None or stat.start_ticks != key[1]


class ProcessTree:
    """Every process of one payload, for sampling and killing.

    Safe to share between a monitoring thread and a killing one: calls are
    serialised (a ``sample`` waits while ``kill`` runs its grace period).
    """

    def __init__(self, root_pid: int, token: str, session_id: int | None = None) -> None:
        self.root_pid = root_pid
        self.token = token
        self._token_entry = f"{TOKEN_ENV}={token}\0".encode()
        self._session = _payload_session(root_pid) if session_id is None else session_id
        root = _read_stat(root_pid)
        self._born = root.start_ticks if root else 0  # nothing older can carry the token
        self._members: dict[tuple[int, int], ProcStat] = {}
        self._without_token: set[tuple[int, int]] = set()
        self._io = IoLedger()
        self._table = ProcTable()
        self._uid = os.getuid()
        self._lock = threading.RLock()

    # ---- membership -------------------------------------------------------

    def pids(self, table: ProcTable | None = None) -> set[int]:
        """Pids of the live members now (zombies excluded). ``table`` (from ``read_proc_table``) saves
        reading ``/proc`` again."""
        with self._lock:
            return set(self._refresh(table))

    def _refresh(self, table: ProcTable | None = None) -> dict[int, ProcStat]:
        table = self._table = read_proc_table() if table is None else table
        seeds = self._seeds(table)
        seeds |= self._token_holders(table, exclude=seeds)
        members = {pid: table[pid] for pid in _with_descendants(seeds, table)
                   if not table[pid].zombie and _may_signal(pid)}
        self._reap_member_zombies(table)
        self._members = {stat.key: stat for stat in members.values()}
        self._forget_gone(table)
        return members

    def _seeds(self, table: ProcTable) -> set[int]:
        seeds = {key[0] for key in self._members if not _is_gone(key, table)}
        if self._root_pid_reused(table):  # and with it the session's id: nothing of the payload is left there
            return seeds
        if self.root_pid in table:
            seeds.add(self.root_pid)
        if self._session is not None:
            seeds.update(table.sessions.get(self._session, ()))
        return seeds

    def _root_pid_reused(self, table: ProcTable) -> bool:
        """The root was reaped and its pid went to another process: a kill's grace of seconds, the root reaped
        early in it, is enough for that on a busy node with pid_max 32768."""
        root = table.get(self.root_pid)
        return root is not None and bool(self._born) and root.start_ticks != self._born

    def _token_holders(self, table: ProcTable, exclude: set[int]) -> set[int]:
        holders = set()
        for stat in table.values():
            older = stat.start_ticks < self._born  # cannot have inherited the token
            if older or stat.pid in exclude or stat.zombie or stat.key in self._without_token:
                continue
            if self._carries_token(stat.pid):
                holders.add(stat.pid)
            else:
                self._without_token.add(stat.key)
        return holders

    def _carries_token(self, pid: int) -> bool:
        environ = _environ_of(pid, self._uid)
        return environ.startswith(self._token_entry) or b"\0" + self._token_entry in environ

    def _reap_member_zombies(self, table: ProcTable) -> None:
        """Payload processes whose orphans came to the rank, which then must reap them: the rank is PID 1 of
        its PID namespace (a container started without an init). Never the root, Popen's to wait for."""
        for stat in _zombie_children(table):
            if stat.pid != self.root_pid and (stat.key in self._members or self._in_session(stat)):
                _reap(stat.pid)

    def _in_session(self, stat: ProcStat) -> bool:
        return self._session is not None and stat.session == self._session

    def _forget_gone(self, table: ProcTable) -> None:
        self._without_token = {key for key in self._without_token if not _is_gone(key, table)}

    # ---- killing ----------------------------------------------------------

    def kill(self, grace: float, poll: float = 0.1) -> list[int]:
        """SIGTERM every member, wait up to ``grace`` s, SIGKILL the rest.

        Returns the pids that needed SIGKILL, new members that appeared
        during the grace period included.
        """
        with self._lock:
            return end_processes(self._refresh, grace, poll,
                                 f"payload {self.root_pid}")

    def end_leftovers(self, grace: float) -> list[int]:
        """After the payload exited: end what it left in its process group.

        The common case, an empty group, costs one system call. Processes that
        left the group (setsid, setpgid) are not looked for here: the token
        search that finds them reads every environment of our uid, so
        ``LeftoverSweep`` does it for all finished payloads at once.
        """
        if self._group_is_empty():
            return []
        return self.kill(grace)

    def _group_is_empty(self) -> bool:
        if self._session is None:  # the root shares the pilot's group: no cheap test
            return False
        try:
            os.killpg(self._session, 0)  # the session leader's group: the payload started it
        except ProcessLookupError:
            return True
        except PermissionError:  # someone is in it
            return False
        return False

    # ---- sampling ---------------------------------------------------------

    def sample(self, table: ProcTable | None = None) -> TreeSample:
        """Summed memory (kB) and I/O (bytes) of the live members now.

        Pass ``table`` (from ``read_proc_table``) to share one read of
        ``/proc`` among the trees of many payloads.
        """
        with self._lock:
            members = self._refresh(table)
            self._io.settle(self._table, members)
            # Parents before children (a child starts after its parent): a child reaped
            # between the two reads is then not counted twice, in itself and in its parent.
            in_order = sorted(members.values(), key=lambda stat: stat.start_ticks)
            measured = {stat.key: usage for stat in in_order if (usage := self._measure(stat)) is not None}
            io = self._io.total(measured, members)
        memory = list(measured.values())
        return TreeSample(
            time=time.time(), nprocs=len(memory),
            rss=sum(m.rss for m in memory) // 1024, pss=sum(m.pss for m in memory) // 1024,
            vms=sum(m.vms for m in memory) // 1024, swap=sum(m.swap for m in memory) // 1024,
            rchar=io.rchar, wchar=io.wchar, read_bytes=io.read_bytes, write_bytes=io.write_bytes)

    def _measure(self, stat: ProcStat) -> _Memory | None:
        """Memory of one process in bytes, recording its I/O; None if it vanished."""
        try:
            memory = _memory_of(stat)
            self._io.record(stat, _io_of(stat.pid))
        except (FileNotFoundError, ProcessLookupError):
            return None
        return memory


class LeftoverSweep:
    """Ends what finished payloads left behind outside their process group.

    Such processes are known only by the token in their environment. Reading
    every environment of our uid after each payload would cost milliseconds
    per job, so tokens of finished payloads are collected here and searched
    for together, every so often and once at the end. Each process's
    environment is read once (its token is remembered while it lives).
    """

    def __init__(self) -> None:
        self._finished: set[bytes] = set()
        self._token_of: dict[tuple[int, int], bytes | None] = {}
        self._carried: set[bytes | None] = set()  # the tokens live processes carried at the last look
        self._uid = os.getuid()
        self._lock = threading.Lock()

    def add(self, token: str) -> None:
        """Look out for processes of this finished payload from the next sweep on."""
        with self._lock:
            self._finished.add(token.encode())

    def sweep(self, grace: float, poll: float = 0.1) -> list[int]:
        """SIGTERM every leftover, SIGKILL those alive after ``grace``; pids that needed SIGKILL."""
        with self._lock:
            if not self._finished:
                return []
            killed = end_processes(self._leftovers, grace, poll, "finished payloads")
            self._forget_ended()
            return killed

    def _forget_ended(self) -> None:
        """Keep only the tokens live processes still carry: kept for every finished payload, they added up over a
        long run, and a token nobody carries comes back on no process (only a holder hands it on)."""
        self._finished &= self._carried

    def _leftovers(self) -> dict[int, ProcStat]:
        table = read_proc_table()
        self._token_of = {key: token for key, token in self._token_of.items() if not _is_gone(key, table)}
        holders = {stat.pid for stat in table.values() if not stat.zombie and self._is_leftover(stat)}
        self._carried = {self._token_of[stat.key] for stat in table.values() if not stat.zombie}
        self._reap_leftover_zombies(table)
        return {pid: table[pid] for pid in _with_descendants(holders, table)
                if not table[pid].zombie and _may_signal(pid)}

    def _is_leftover(self, stat: ProcStat) -> bool:
        if stat.key not in self._token_of:
            self._token_of[stat.key] = _token_in(_environ_of(stat.pid, self._uid))
        return self._token_of[stat.key] in self._finished

    def _reap_leftover_zombies(self, table: ProcTable) -> None:
        """Leftovers that came to the rank (PID 1 of its namespace) are its to reap."""
        for stat in _zombie_children(table):
            if self._token_of.get(stat.key) in self._finished:
                _reap(stat.pid)


def end_processes(find: Callable[[], dict[int, ProcStat]], grace: float, poll: float, what: str) -> list[int]:
    """SIGTERM what ``find`` returns, wait up to ``grace`` s for it to be empty, SIGKILL the rest.

    ``find`` is called again and again, so processes born meanwhile are ended
    too. Returns the pids that needed SIGKILL.
    """
    members = find()
    if not members:
        return []
    _signal_members(members.values(), signal.SIGTERM)
    _signal_members(members.values(), signal.SIGCONT)  # a stopped process cannot handle TERM
    if _wait_until_empty(find, grace, poll):
        return []
    return kill_until_gone(find, what)


def _wait_until_empty(find: Callable[[], dict[int, ProcStat]], grace: float, poll: float) -> bool:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not find():
            return True
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    return not find()


def kill_until_gone(find: Callable[[], dict[int, ProcStat]], what: str) -> list[int]:
    """SIGKILL what ``find`` returns, round after round while it returns any; pids that needed it."""
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        survivors = find()
        if not survivors:
            break
        _signal_members(survivors.values(), signal.SIGKILL)
        killed.update(survivors)
        time.sleep(KILL_ROUND_PAUSE)
    remaining = find()
    if remaining:  # e.g. stuck in uninterruptible I/O; the caller may try again later
        log.warning("%s: processes survive SIGKILL: %s", what, sorted(remaining))
    log.info("%s: SIGKILL sent to %s", what, sorted(killed))
    return sorted(killed)


def _environ_of(pid: int, uid: int) -> bytes:
    """The environment block of a process of ``uid``; empty if not ours, gone or unreadable."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return b""
        return _read_all(f"/proc/{pid}/environ")
    except OSError:
        return b""


def _token_in(environ: bytes) -> bytes | None:
    """The payload token in an environment block, if it has one."""
    prefix = f"{TOKEN_ENV}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):]
    return None


def _payload_session(root_pid: int) -> int | None:
    """The root's session, if it leads one of its own (start_new_session)."""
    try:
        session = os.getsid(root_pid)
    except OSError:
        return None
    return session if session == root_pid and session != os.getsid(0) else None


def _with_descendants(seeds: Iterable[int], table: ProcTable) -> set[int]:
    found, todo = set(), [pid for pid in seeds if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(table.children.get(pid, ()))
    return found


def _zombie_children(table: ProcTable) -> list[ProcStat]:
    """Zombies this process may reap."""
    return [table[pid] for pid in table.children.get(os.getpid(), ()) if table[pid].zombie]


def _reap(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


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


def _memory_of(stat: ProcStat) -> _Memory:
    """Memory of one process in bytes; vms comes from the table's stat."""
    try:
        kb = _kb_fields(_read_all(f"/proc/{stat.pid}/{SMAPS}"))
    except PermissionError:
        kb = {}
    if "Rss" not in kb:  # not ours to read, or a zombie
        # rss bounds pss from above: safer for a memory limit.
        rss = int(_read_small(f"/proc/{stat.pid}/statm").split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return _Memory(rss=rss, pss=rss, vms=stat.vsize, swap=0)
    return _Memory(rss=kb["Rss"] * 1024, pss=kb.get("Pss", kb["Rss"]) * 1024, vms=stat.vsize,
                   swap=kb.get("Swap", 0) * 1024)


def _kb_fields(text: bytes) -> dict[str, int]:
    """The ``Rss:``, ``Pss:`` and ``Swap:`` lines in kB, summed (over all mappings of smaps)."""
    found: dict[str, int] = {}
    for name, value in MEMORY_LINE.findall(text):
        found[name.decode()] = found.get(name.decode(), 0) + int(value)
    return found


def _io_of(pid: int) -> IoCounters:
    try:
        text = _read_small(f"/proc/{pid}/io")
    except PermissionError:
        return IoCounters()
    values = {name: int(value) for name, _, value in (line.partition(b": ") for line in text.splitlines())}
    return IoCounters(rchar=values.get(b"rchar", 0), wchar=values.get(b"wchar", 0),
                      read_bytes=values.get(b"read_bytes", 0), write_bytes=values.get(b"write_bytes", 0))
