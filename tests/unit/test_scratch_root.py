"""A rank's scratch root, and the roots that pilots killed before removing theirs leave on the node."""
from __future__ import annotations

import errno
import os
import pwd
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcpilot import scratchroot
from hpcpilot.mounts import mounts_below
from hpcpilot.nodename import node_identity
from tests.unit.test_harvester_files import unprivileged_outcome
from tests.unit.test_scratch_trees import _bind_mount, _precious

MAKE_ROOT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from hpcpilot import scratchroot
    root = scratchroot.make_root(Path(sys.argv[1]), keep=sys.argv[2] == "keep")
    (root / "job-1-x").mkdir()
    (root / "job-1-x" / "payload.stdout").write_text("left behind")
    print(root, flush=True)
    time.sleep(300)
""")


def rank_making_a_root(parent: Path, keep: bool = False, node: str | None = None) -> tuple[subprocess.Popen, Path]:
    """A process that makes its root (with a job's scratch in it) and lives on: (the process, its root); on a
    ``node`` of that name (a UTS namespace of its own), if given."""
    command = [sys.executable, "-c", MAKE_ROOT, str(parent), "keep" if keep else "lock"]
    if node is not None:
        command = ["unshare", "--uts", "sh", "-c", f'hostname {node} && exec "$@"', "rank", *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    root = process.stdout.readline().strip()
    if not root:  # never Path(""), the working directory, which the tests would chown and remove
        killed(process)
        pytest.fail("the rank made no root")
    return process, Path(root)


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


@pytest.mark.timeout(60)
def test_the_root_of_a_killed_rank_is_removed_by_the_next_one_and_a_living_rank_s_is_not(tmp_path: Path) -> None:
    dead, dead_root = rank_making_a_root(tmp_path)
    living, living_root = rank_making_a_root(tmp_path)
    try:
        killed(dead)
        own = scratchroot.make_root(tmp_path, keep=False)
        assert scratchroot.reclaim_dead_roots(tmp_path, own=own) == [dead_root]
        assert not dead_root.exists()
        assert (living_root / "job-1-x" / "payload.stdout").read_text() == "left behind"
        assert (own / scratchroot.ALIVE).exists()
    finally:
        killed(living)
    assert scratchroot.reclaim_dead_roots(tmp_path, own=own) == [living_root]
    assert sorted(tmp_path.iterdir()) == [own]


@pytest.mark.timeout(60)
def test_the_root_of_another_node_whose_lock_does_not_show_here_is_left_alone(tmp_path: Path) -> None:
    """A scratch directory shared between nodes may keep each node's locks to itself (NFS mounted nolock,
    Lustre with localflock): a living pilot's root on another node then looks as a dead one's would here."""
    if os.geteuid() != 0:
        pytest.skip("naming a process's node otherwise needs root (unshare --uts)")
    elsewhere, elsewhere_root = rank_making_a_root(tmp_path, node="another-node")
    killed(elsewhere)  # its lock gone here, as if it had never shown
    own = scratchroot.make_root(tmp_path, keep=False)
    assert scratchroot.reclaim_dead_roots(tmp_path, own=own) == []
    assert (elsewhere_root / "job-1-x" / "payload.stdout").read_text() == "left behind"


RECLAIM = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hpcpilot import scratchroot
    parent = Path(sys.argv[1])
    print([str(root) for root in scratchroot.reclaim_dead_roots(parent, scratchroot.make_root(parent, keep=False))])
""")


def on_node(node: bytes, command: list[str]) -> list[str]:
    """``command`` run on a node named ``node``, any bytes (a UTS namespace of its own; ``hostname`` takes no
    control character)."""
    naming = f"import socket; socket.sethostname({node!r})"
    return ["unshare", "--uts", "sh", "-c", f'{sys.executable} -c "{naming}" && exec "$@"', "rank", *command]


@pytest.mark.timeout(60)
def test_nodes_whose_names_differ_only_in_odd_bytes_never_take_each_others_roots_for_their_own(tmp_path: Path) -> None:
    """The lock file names its node by the host name's bytes: as logged (each control character or byte that
    is not UTF-8 shown as U+FFFD), b'n\\x01' and b'n\\x02' were one node, and the root of a pilot living on
    the other, its lock not shown here (a shared scratch directory), was removed as a dead one's."""
    if os.geteuid() != 0:
        pytest.skip("naming a process's node otherwise needs root (unshare --uts)")
    maker = subprocess.Popen(on_node(b"n\x01", [sys.executable, "-c", MAKE_ROOT, str(tmp_path), "lock"]),
                             stdout=subprocess.PIPE, text=True)
    elsewhere_root = Path(maker.stdout.readline().strip())
    killed(maker)  # its lock gone here, as if it had never shown
    assert elsewhere_root.name.startswith(scratchroot.PREFIX)
    reclaimer = subprocess.run(on_node(b"n\x02", [sys.executable, "-c", RECLAIM, str(tmp_path)]),
                               capture_output=True, text=True, timeout=30)
    assert reclaimer.returncode == 0, reclaimer.stderr[-2000:]
    assert reclaimer.stdout.strip() == "[]"
    assert (elsewhere_root / "job-1-x" / "payload.stdout").read_text() == "left behind"


@pytest.mark.timeout(60)
def test_a_root_kept_for_inspection_is_never_reclaimed(tmp_path: Path) -> None:
    kept, kept_root = rank_making_a_root(tmp_path, keep=True)
    killed(kept)
    assert scratchroot.reclaim_dead_roots(tmp_path, own=tmp_path / "none") == []
    assert (kept_root / "job-1-x" / "payload.stdout").exists()


@pytest.mark.timeout(60)
def test_another_user_s_root_and_what_is_no_root_are_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making another user's directory needs root")
    dead, others = rank_making_a_root(tmp_path)
    killed(dead)
    nobody = pwd.getpwnam("nobody")
    os.chown(others, nobody.pw_uid, nobody.pw_gid)
    (tmp_path / "hpcpilot-1-aaaaaaaa").write_text("a file, not a root")
    (tmp_path / "hpcpilot-2-bbbbbbbb").symlink_to(tmp_path / "elsewhere")
    demo = tmp_path / "hpcpilot-demo-20261127-053000"  # an access point, say, with a file of that name
    demo.mkdir()
    (demo / scratchroot.ALIVE).write_text("")
    assert scratchroot.reclaim_dead_roots(tmp_path, own=tmp_path / "none") == []
    assert others.exists() and (tmp_path / "hpcpilot-1-aaaaaaaa").exists() and (demo / scratchroot.ALIVE).exists()


def test_a_rank_s_own_root_is_removed_at_the_end(tmp_path: Path) -> None:
    root = scratchroot.make_root(tmp_path, keep=False)
    assert [entry.name for entry in root.iterdir()] == [scratchroot.ALIVE]
    assert scratchroot.remove_own(root)
    assert list(tmp_path.iterdir()) == []


ENDING_WITH_A_JOB_S_LEFTOVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hpcpilot import scratchroot
    root = scratchroot.make_root(Path(sys.argv[1]), keep=False)
    (root / "job-1-x.moved").mkdir()  # what a payload moved out of its scratch's way
    (root / "job-1-x.moved" / "payload.stdout").write_text("left behind")
    print(root, scratchroot.remove_own(root))
""")


@pytest.mark.timeout(60)
def test_a_root_a_job_left_something_in_is_removed_by_the_next_rank(tmp_path: Path) -> None:
    """The rank ends normally, but a job's scratch removal left a directory its payload moved aside: the root
    keeps its lock file, so the next rank on the node removes it. (Its lock file went first, before: the root
    stayed on the node for good.)"""
    ended = subprocess.run([sys.executable, "-c", ENDING_WITH_A_JOB_S_LEFTOVER, str(tmp_path)], capture_output=True,
                           text=True, timeout=30, check=True)
    root, removed = ended.stdout.split()
    assert removed == "False" and (Path(root) / scratchroot.ALIVE).exists()
    own = scratchroot.make_root(tmp_path, keep=False)
    assert scratchroot.reclaim_dead_roots(tmp_path, own=own) == [Path(root)]
    assert list(tmp_path.iterdir()) == [own]


def test_a_scratch_directory_without_flock_is_used_unlocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lustre mounted without flock answers ENOSYS, an NFS without its lock manager ENOLCK; neither runs here,
    so flock is made to answer so. The scratch asked for is used as it was before roots had locks."""
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(scratchroot.fcntl, "flock", no_flock)
    root = scratchroot.make_root(tmp_path, keep=False)
    assert root.is_dir() and list(root.iterdir()) == []  # like a kept root: never taken for a dead one's


def dead_root_nested_too_deep(users_scratch: Path) -> Path:
    """A dead rank's root, nobody's, holding a tree its payload nested deeper than the recursion limit:
    removing it takes rm -rf, a process of its own."""
    dead, root = rank_making_a_root(users_scratch)
    killed(dead)
    deepest = root / "job-1-x"
    for _ in range(sys.getrecursionlimit() + 100):  # os.makedirs recurses too
        deepest = deepest / "d"
        deepest.mkdir()
    (deepest / "data.root").write_text("x")
    subprocess.run(["chown", "-R", "nobody:", str(users_scratch)], check=True, timeout=30)
    return root


def stand_in_rm(users_scratch: Path, script: str) -> Path:
    """A directory to put first on PATH, whose rm runs ``script`` (sh) instead."""
    tools = users_scratch.parent / "bin"
    tools.mkdir()
    (tools / "rm").write_text(f"#!/bin/sh\n{script}\n")
    (tools / "rm").chmod(0o755)
    return tools


@pytest.mark.timeout(60)
def test_a_dead_root_that_cannot_be_removed_now_is_left_for_a_later_rank(users_scratch: Path) -> None:
    """Its payload nested a tree too deep for rmtree: removing it takes rm -rf, a process, which a rank whose
    user has none left (a fork bomb elsewhere) cannot start. The rank goes on with its own scratch, and what
    is left keeps a lock file for a later rank to try again."""
    if os.geteuid() != 0:
        pytest.skip("running as nobody needs root")
    root = dead_root_nested_too_deep(users_scratch)

    def reclaim_without_processes() -> list[Path]:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        return scratchroot.reclaim_dead_roots(users_scratch, own=users_scratch / "none")

    assert unprivileged_outcome(reclaim_without_processes) == "[]"
    assert (root / scratchroot.ALIVE).exists(), "what is left could never be reclaimed"
    assert unprivileged_outcome(lambda: scratchroot.reclaim_dead_roots(users_scratch, own=users_scratch / "none")) \
        == repr([root])
    assert not root.exists()


@pytest.mark.timeout(120)
def test_a_dead_root_is_removed_while_the_rank_goes_on_and_what_a_rank_that_ended_left_by_a_later_one(
        users_scratch: Path) -> None:
    """A dead pilot's root may hold a million files, minutes of removal (200,000 took 340 s here) that held the
    rank's start, up to startup_limit and the whole pilot's end with 64. Here its removal cannot end at all: it
    needs rm -rf for a tree the payload nested too deep, and a stand-in rm on PATH waits until the test lets
    it go. The rank goes on at once and ends meanwhile; what is left keeps its lock file (removed last, never
    before the rest), which a later rank takes to finish the removal."""
    if os.geteuid() != 0:
        pytest.skip("running as nobody needs root")
    root = dead_root_nested_too_deep(users_scratch)
    release = users_scratch.parent / "release"
    tools = stand_in_rm(users_scratch, f"while [ ! -e {release} ]; do sleep 0.05; done")

    def start_reclaiming_and_end() -> bool:
        os.environ["PATH"] = f"{tools}:{os.environ['PATH']}"
        return scratchroot.reclaim_dead_roots_in_background(users_scratch, own=users_scratch / "none") is not None

    try:
        assert unprivileged_outcome(start_reclaiming_and_end) == "True"  # the rank ends here: os._exit
        assert (root / scratchroot.ALIVE).exists(), "what is left could never be reclaimed"
    finally:
        release.touch()
    assert unprivileged_outcome(lambda: scratchroot.reclaim_dead_roots(users_scratch, own=users_scratch / "none")) \
        == repr([root])
    assert not root.exists()


@pytest.mark.timeout(120)
def test_a_dead_root_is_removed_at_the_lowest_priority_leaving_the_rank_s_own(users_scratch: Path) -> None:
    """The removal runs beside the rank's first payloads, for minutes: its thread and the helpers it starts
    (here a stand-in rm -rf, which a tree the payload nested too deep needs) run at nice 19, the rank's other
    threads at their own."""
    if os.geteuid() != 0:
        pytest.skip("running as nobody needs root")
    if os.getpriority(os.PRIO_PROCESS, 0) >= scratchroot.NICEST:
        pytest.skip("the tests already run at the lowest priority")
    dead_root_nested_too_deep(users_scratch)
    seen = users_scratch.parent / "nice"
    tools = stand_in_rm(users_scratch, f"nice > {seen}")

    def reclaim_and_wait() -> bool:
        """True when the rank's own thread kept its priority."""
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.environ["PATH"] = f"{tools}:{os.environ['PATH']}"
        scratchroot.reclaim_dead_roots_in_background(users_scratch, own=users_scratch / "none").join()
        return os.getpriority(os.PRIO_PROCESS, 0) == before

    assert unprivileged_outcome(reclaim_and_wait) == "True"
    assert seen.read_text().strip() == str(scratchroot.NICEST)


@pytest.mark.timeout(60)
def test_a_dead_root_its_payload_made_read_only_is_removed(users_scratch: Path) -> None:
    """A payload that took the write permission from the directory above its own (chmod -R a-w ..) keeps its
    owner from removing anything in the root; its owner may give it back, as for a directory inside."""
    if os.geteuid() != 0:
        pytest.skip("running as nobody needs root")
    dead, root = rank_making_a_root(users_scratch)
    killed(dead)
    subprocess.run(["chown", "-R", "nobody:", str(users_scratch)], check=True, timeout=30)
    root.chmod(0o500)
    assert unprivileged_outcome(lambda: scratchroot.reclaim_dead_roots(users_scratch, own=users_scratch / "none")) \
        == repr([root])
    assert not root.exists()


@pytest.mark.timeout(60)
def test_a_dead_root_swapped_for_a_link_after_the_scan_is_not_followed(tmp_path: Path) -> None:
    """The scan takes only directories, but the removal comes later (minutes later, behind other roots): a
    link put in a root's place meanwhile, to a directory that looks like one, leads out of the scratch
    directory. Nothing there is removed, nothing mounted there detached."""
    precious = _precious(tmp_path)  # a bind mount needs root
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mounted").mkdir(parents=True)
    (elsewhere / scratchroot.ALIVE).write_bytes(node_identity() + b"\n")
    (elsewhere / "data.root").write_text("not a pilot's")
    parent = tmp_path / "scratch"
    parent.mkdir()
    swapped = parent / "hpcpilot-1-abcdefgh"
    swapped.symlink_to(elsewhere)
    with _bind_mount(precious, elsewhere / "mounted"):
        assert not scratchroot._removed_if_dead(swapped)
        assert [m.point for m in mounts_below(elsewhere)] == [str(elsewhere / "mounted")]
    assert (elsewhere / "data.root").read_text() == "not a pilot's"
    assert (elsewhere / scratchroot.ALIVE).exists()


RECLAIM_AS_SOMETHING_ARRIVES = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hpcpilot import scratchroot
    parent, root = Path(sys.argv[1]), Path(sys.argv[2])
    rmdir = Path.rmdir

    def arriving_first(path):
        if path == root:  # what the dead rank's payload, still running, writes as its root is emptied
            (root / "written.late").write_text("x")
        rmdir(path)

    Path.rmdir = arriving_first
    print([str(removed) for removed in scratchroot.reclaim_dead_roots(parent, own=parent / "none")])
""")


@pytest.mark.timeout(60)
def test_a_dead_root_something_came_into_as_it_was_removed_is_removed_by_a_later_rank(tmp_path: Path) -> None:
    """Its lock file went, then the root could not: a file had come in. (Before, the root stayed with no lock
    file, for good: no later rank took it for a dead one's.)"""
    dead, root = rank_making_a_root(tmp_path)
    killed(dead)
    first = subprocess.run([sys.executable, "-c", RECLAIM_AS_SOMETHING_ARRIVES, str(tmp_path), str(root)],
                           capture_output=True, text=True, timeout=30, check=True)
    assert first.stdout.strip() == "[]" and (root / "written.late").exists()
    own = scratchroot.make_root(tmp_path, keep=False)
    assert scratchroot.reclaim_dead_roots(tmp_path, own=own) == [root]
    assert list(tmp_path.iterdir()) == [own]


STOPPING_AS_IT_MAKES_ITS_ROOT = textwrap.dedent("""
    import fcntl, sys, time
    from pathlib import Path
    from hpcpilot import scratchroot
    flock = fcntl.flock

    def stopping_here(fd, operation):
        if sys.argv[2] == "holding its lock":
            flock(fd, operation)
        print("making", flush=True)
        time.sleep(300)

    scratchroot.fcntl.flock = stopping_here
    scratchroot.make_root(Path(sys.argv[1]), keep=False)
""")


def rank_making_its_root(parent: Path, where: str) -> subprocess.Popen:
    """A process stopped as it makes its root, ``where``: "before its lock" (its lock file made, not locked
    yet) or "holding its lock"."""
    process = subprocess.Popen([sys.executable, "-c", STOPPING_AS_IT_MAKES_ITS_ROOT, str(parent), where],
                               stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "making":
        killed(process)
        pytest.fail("the rank did not make its root")
    return process


def made_hours_ago(parent: Path) -> None:
    for entry in parent.iterdir():
        os.utime(entry, (0, 0), follow_symlinks=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["before its lock", "holding its lock"])
def test_a_root_whose_rank_was_killed_as_it_made_it_is_removed_by_a_later_one(tmp_path: Path, where: str) -> None:
    """Killed between the root's mkdir and its lock file's final name, the rank left a root no later rank took
    for a dead one's: it stayed on the node for good."""
    parent = tmp_path / "scratch"
    parent.mkdir()
    killed(rank_making_its_root(parent, where))
    made_hours_ago(parent)
    own = scratchroot.make_root(tmp_path, keep=False)
    assert len(scratchroot.reclaim_dead_roots(parent, own=own)) == 1
    assert list(parent.iterdir()) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where, made", [("before its lock", "now"), ("holding its lock", "hours ago")])
def test_a_root_its_rank_is_still_making_is_left_alone(tmp_path: Path, where: str, made: str) -> None:
    living = rank_making_its_root(tmp_path, where)
    try:
        if made == "hours ago":
            made_hours_ago(tmp_path)
        [making] = list(tmp_path.iterdir())
        made_so_far = sorted(making.iterdir())
        assert scratchroot.reclaim_dead_roots(tmp_path, own=tmp_path / "none") == []
        assert list(tmp_path.iterdir()) == [making] and sorted(making.iterdir()) == made_so_far
    finally:
        killed(living)
